using System.Diagnostics;
using System.IO.Hashing;
using System.Runtime.CompilerServices;
using System.Text;
using VProtect.Core.Formats.Xva;
using VProtect.Core.IO;
using Xunit;

namespace VProtect.Interop.Tests;

/// <summary>
/// XVA against writers and readers nobody here wrote: Xen Orchestra's @xen-orchestra/xva (via node) and GNU tar.
/// A missing node, npm package or tar makes these fail, never skip.
/// </summary>
public sealed class XvaInteropTests : IDisposable
{
    private const int MiB = 1024 * 1024;
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "vprotect-xva-interop-" + Guid.NewGuid().ToString("N"));

    public XvaInteropTests() => Directory.CreateDirectory(_dir);

    public void Dispose()
    {
        try { Directory.Delete(_dir, recursive: true); } catch (IOException) { }
    }

    private static string NodeDir([CallerFilePath] string here = "") => Path.Combine(Path.GetDirectoryName(here)!, "node");

    [Fact]
    public async Task An_xva_written_by_xen_orchestra_is_read_with_its_disks_and_vm_record()
    {
        Assert.True(Directory.Exists(Path.Combine(NodeDir(), "node_modules", "@xen-orchestra", "xva")),
            $"@xen-orchestra/xva is not installed: run 'npm ci' in {NodeDir()} (or tools/Test-Peers.ps1 -Install).");
        // Disk 0: 3 MiB + 1000 bytes, data with a zero MiB in the middle (XO omits it); disk 1: 1 MiB + 1 byte, sparse.
        var rng = new Random(2026);
        var disk0 = new byte[3 * MiB + 1000];
        rng.NextBytes(disk0);
        Array.Clear(disk0, MiB, MiB);
        var disk1 = new byte[MiB + 1];
        disk1[12345] = 0xAB;
        disk1[^1] = 0xCD;
        string raw0 = Path.Combine(_dir, "d0.raw"), raw1 = Path.Combine(_dir, "d1.raw"), xva = Path.Combine(_dir, "xo.xva");
        await File.WriteAllBytesAsync(raw0, disk0);
        await File.WriteAllBytesAsync(raw1, disk1);

        var (exit, stdout, stderr) = await RunAsync("node", NodeDir(), Path.Combine(NodeDir(), "xva-write.mjs"), xva, "interop vm <&>", raw0, raw1);
        Assert.True(exit == 0, $"node xva-write.mjs failed ({exit}): {stderr}");
        Assert.Contains("\"vdiIds\":[\"Ref:002\",\"Ref:004\"]", stdout);

        var targets = new Dictionary<string, SparseMemoryDisk>();
        XvaMetadata? seen = null;
        var result = await XvaReader.ReadFileAsync(xva, new XvaReadOptions
        {
            OnMetadata = (m, _) => { seen = m; return ValueTask.CompletedTask; },
            OpenTarget = (d, _) => { var t = new SparseMemoryDisk(d.VirtualSize); targets[d.VdiId] = t; return ValueTask.FromResult<IBlockTarget?>(t); },
        }, CancellationToken.None);

        Assert.Same(seen, result.Metadata);
        var vm = result.Metadata.Vm!;
        Assert.Equal("interop vm <&>", vm.GetString("name_label"));
        Assert.Equal(512L * MiB, vm.GetInt64("memory_static_max"));
        Assert.Equal(2, vm.GetInt64("VCPUs_max"));
        Assert.Equal((1L, 20L, 2L), (result.Metadata.Version.XapiMajor, result.Metadata.Version.XapiMinor, result.Metadata.Version.ExportVersion));
        Assert.Equal(2, result.Metadata.OfClass("VBD").Count());
        Assert.Single(result.Metadata.OfClass("VIF"));
        Assert.Equal("02:00:00:00:00:01", result.Metadata.OfClass("VIF").Single().GetString("MAC"));
        // XO rounds virtual_size up to whole MiB and pads the last chunk with zeros.
        Assert.Equal(4L * MiB, result.Metadata.Find("Ref:002")!.GetInt64("virtual_size"));
        Assert.Equal(new[] { "Ref:002", "Ref:004" }, result.Disks.Select(d => d.VdiId));
        Assert.Equal(1, result.Disks[0].ChunksOmitted);
        Assert.All(result.Disks, d => Assert.Equal(XvaChecksumKind.XxHash64, d.ChecksumKind));

        await AssertDiskAsync(targets["Ref:002"], disk0);
        await AssertDiskAsync(targets["Ref:004"], disk1);
    }

    [Fact]
    public async Task Gnu_tar_lists_and_extracts_an_xva_we_write()
    {
        var (xva, disk, chunks) = await WriteOursAsync(XvaCompression.None, "ours.xva");

        var (exit, listing, err) = await RunAsync("tar", _dir, "-tvf", xva);
        Assert.True(exit == 0, $"tar -tvf failed ({exit}): {err}");
        var names = listing.Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[^1]).ToList();
        var expected = new List<string> { "ova.xml" };
        foreach (long c in chunks) { expected.Add($"Ref:4/{c:D8}"); expected.Add($"Ref:4/{c:D8}.xxhash"); }
        Assert.Equal(expected, names);
        Assert.All(listing.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => Assert.StartsWith("-r--------", l));

        string outDir = Path.Combine(_dir, "x");
        Directory.CreateDirectory(outDir);
        (exit, _, err) = await RunAsync("tar", _dir, "-xf", xva, "-C", outDir);
        Assert.True(exit == 0, $"tar -xf failed ({exit}): {err}");
        string ova = await File.ReadAllTextAsync(Path.Combine(outDir, "ova.xml"));
        Assert.Contains("<name>export_vsn</name>", ova);
        Assert.Contains("tar interop", ova);
        foreach (long c in chunks)
        {
            byte[] data = await File.ReadAllBytesAsync(Path.Combine(outDir, "Ref:4", $"{c:D8}"));
            var expect = disk.AsSpan((int)(c * MiB), (int)Math.Min(MiB, disk.Length - c * MiB));
            Assert.True(expect.SequenceEqual(data), $"chunk {c} differs after GNU tar extraction");
            string sum = await File.ReadAllTextAsync(Path.Combine(outDir, "Ref:4", $"{c:D8}.xxhash"));
            Assert.Equal(XxHash64.HashToUInt64(data).ToString("X16"), sum);
        }
    }

    [Fact]
    public async Task Gnu_tar_reads_our_gzip_xva()
    {
        var (xva, _, chunks) = await WriteOursAsync(XvaCompression.Gzip, "ours.xva.gz");
        var (exit, listing, err) = await RunAsync("tar", _dir, "-tzf", xva);
        Assert.True(exit == 0, $"tar -tzf failed ({exit}): {err}");
        Assert.Equal(1 + 2 * chunks.Count, listing.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        Assert.StartsWith("ova.xml\n", listing);
    }

    [Theory]
    [InlineData("gnu")]
    [InlineData("pax")]
    [InlineData("ustar")]
    [InlineData("v7")]
    public async Task An_xva_repacked_by_gnu_tar_in_each_format_is_read(string format)
    {
        var (xva, disk, _) = await WriteOursAsync(XvaCompression.None, "ours.xva");
        string unpacked = Path.Combine(_dir, "unpacked");
        Directory.CreateDirectory(unpacked);
        var (exit, _, err) = await RunAsync("tar", _dir, "-xf", xva, "-C", unpacked);
        Assert.True(exit == 0, $"tar -xf failed ({exit}): {err}");

        // GNU tar writes the directory entry too ("Ref:4/") and, for pax, extended headers; members sorted by name
        // keep xapi's order (00000000, 00000000.xxhash, 00000003, ...).
        string repacked = Path.Combine(_dir, $"repacked-{format}.xva");
        (exit, _, err) = await RunAsync("tar", unpacked, $"--format={format}", "--sort=name", "-cf", repacked, "ova.xml", "Ref:4");
        Assert.True(exit == 0, $"tar --format={format} -cf failed ({exit}): {err}");

        var target = new SparseMemoryDisk(disk.Length);
        var result = await XvaReader.ReadFileAsync(repacked, new XvaReadOptions
        {
            OpenTarget = (_, _) => ValueTask.FromResult<IBlockTarget?>(target),
        }, CancellationToken.None);
        Assert.Equal("tar interop", result.Metadata.Vm!.GetString("name_label"));
        Assert.Equal(3, result.Disks.Single().ChunksPresent);
        await AssertDiskAsync(target, disk);
    }

    private async Task<(string Path, byte[] Disk, List<long> Chunks)> WriteOursAsync(XvaCompression compression, string name)
    {
        var disk = new byte[5 * MiB + 4321];
        var rng = new Random(5);
        rng.NextBytes(disk.AsSpan(0, MiB));
        rng.NextBytes(disk.AsSpan(3 * MiB, 100));
        disk[^1] = 1;
        var source = new SparseMemoryDisk(disk.Length);
        await source.WriteAsync(0, disk, default);
        var meta = new XvaMetadata(new XvaVersion(), [
            new XvaObject("VM", "Ref:1", new Dictionary<string, object?> { ["name_label"] = "tar interop", ["VBDs"] = new object?[] { "Ref:2" } }),
            new XvaObject("VBD", "Ref:2", new Dictionary<string, object?> { ["VM"] = "Ref:1", ["VDI"] = "Ref:4" }),
            new XvaObject("VDI", "Ref:4", new Dictionary<string, object?> { ["virtual_size"] = disk.LongLength.ToString() }),
        ]);
        string path = Path.Combine(_dir, name);
        await XvaWriter.WriteFileAsync(path, meta, [new XvaDiskSource("Ref:4", source)],
            new XvaWriteOptions { Compression = compression, KeepAliveInterval = null }, default);
        return (path, disk, new List<long> { 0, 3, 5 }); // chunks 1, 2 and 4 are all zero and omitted
    }

    private static async Task AssertDiskAsync(SparseMemoryDisk got, byte[] expected)
    {
        var all = new byte[got.Length];
        await got.ReadAsync(0, all, default);
        Assert.True(all.AsSpan(0, expected.Length).SequenceEqual(expected), "disk data differs");
        Assert.False(all.AsSpan(expected.Length).ContainsAnyExcept((byte)0), "padding after the disk is not zero");
    }

    private static async Task<(int Exit, string Stdout, string Stderr)> RunAsync(string file, string workDir, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { WorkingDirectory = workDir, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        Process p;
        try { p = Process.Start(psi)!; }
        catch (System.ComponentModel.Win32Exception ex)
        {
            throw new InvalidOperationException($"'{file}' is not installed or not on PATH ({ex.Message}); install it (tools/Test-Peers.ps1 -Install).", ex);
        }
        using (p)
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
            var stdout = p.StandardOutput.ReadToEndAsync(timeout.Token);
            var stderr = p.StandardError.ReadToEndAsync(timeout.Token);
            try { await p.WaitForExitAsync(timeout.Token); }
            catch (OperationCanceledException) { p.Kill(entireProcessTree: true); throw new TimeoutException($"{file} did not finish within 2 minutes."); }
            return (p.ExitCode, await stdout, await stderr);
        }
    }
}
