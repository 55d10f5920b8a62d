using System.Diagnostics;
using System.Text.Json;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.IO;
using Xunit;

namespace VProtect.Interop.Tests;

/// <summary>
/// Our VHD reader/writer against qemu-img (Debian qemu-utils), a peer we did not write. A missing qemu-img
/// fails these tests; it never skips them.
/// </summary>
public sealed class VhdQemuTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("vhd-interop-").FullName;

    public void Dispose() { try { Directory.Delete(_dir, recursive: true); } catch (IOException) { } }

    private string P(string name) => Path.Combine(_dir, name);

    internal static (int ExitCode, string Output) QemuImg(params string[] args)
    {
        var exe = FindOnPath("qemu-img")
            ?? throw new Xunit.Sdk.XunitException("qemu-img is not installed or not on PATH: install the Debian package qemu-utils (apt-get install qemu-utils).");
        var psi = new ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(120_000)) { p.Kill(true); throw new TimeoutException($"qemu-img {string.Join(' ', args)} did not finish in 120 s"); }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    internal static string? FindOnPath(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator)
            .Select(d => Path.Combine(d, name)).FirstOrDefault(File.Exists);

    private static JsonElement Info(string path, string format)
    {
        var (rc, output) = QemuImg("info", "--output=json", "-f", format, path);
        Assert.True(rc == 0, $"qemu-img info failed: {output}");
        return JsonDocument.Parse(output).RootElement;
    }

    /// <summary>A raw file of <paramref name="size"/> bytes with random data in random extents, and the same in memory.</summary>
    private static async Task<(SparseMemoryDisk Disk, byte[] Model)> RandomDiskAsync(int seed, long size, int extents)
    {
        var rng = new Random(seed);
        var disk = new SparseMemoryDisk(size);
        var model = new byte[size];
        for (int i = 0; i < extents; i++)
        {
            long start = rng.NextInt64(size / 512) * 512;
            var data = new byte[Math.Min(rng.Next(1, 1_500_000) / 512 * 512 + 512, size - start)];
            rng.NextBytes(data);
            await disk.WriteAsync(start, data, default);
            data.CopyTo(model, start);
        }
        return (disk, model);
    }

    private static async Task WriteDynamicAsync(IBlockSource source, string path, VhdWriteOptions options)
    {
        var plan = await VhdBlockPlan.FromSourceAsync(source);
        await using (var fs = File.Create(path))
            await VhdStreamWriter.WriteAsync(source, plan, fs, options);
        Assert.Equal(VhdStreamWriter.ComputeLength(plan, options), new FileInfo(path).Length);
    }

    private static void AssertSameBytes(byte[] expected, byte[] actual, string what)
    {
        Assert.True(expected.Length <= actual.Length, $"{what}: {actual.Length} bytes, expected at least {expected.Length}");
        int common = expected.AsSpan().CommonPrefixLength(actual);
        Assert.True(common == expected.Length, $"{what}: first difference at byte {common}");
        Assert.True(actual.AsSpan(expected.Length).IndexOfAnyExcept((byte)0) < 0, $"{what}: non-zero bytes past the expected end");
    }

    [Theory]
    [InlineData(1, (100L << 20) + 512 * 3)] // not a CHS size: qemu must still see the exact size
    [InlineData(2, 64L << 20)]
    public async Task Qemu_reads_our_dynamic_vhd_at_its_exact_size_and_content(int seed, long size)
    {
        var (disk, model) = await RandomDiskAsync(seed, size, 30);
        await File.WriteAllBytesAsync(P("ref.raw"), model);
        await WriteDynamicAsync(disk, P("ours.vhd"), new VhdWriteOptions());

        var info = Info(P("ours.vhd"), "vpc");
        Assert.Equal(size, info.GetProperty("virtual-size").GetInt64());
        var (rc, output) = QemuImg("compare", "-f", "vpc", "-F", "raw", P("ours.vhd"), P("ref.raw"));
        Assert.True(rc == 0, $"qemu-img compare: {output}");
        (rc, output) = QemuImg("convert", "-f", "vpc", "-O", "raw", P("ours.vhd"), P("back.raw"));
        Assert.True(rc == 0, output);
        AssertSameBytes(model, await File.ReadAllBytesAsync(P("back.raw")), "qemu-img convert of our VHD");
        Assert.Equal(size, new FileInfo(P("back.raw")).Length);
    }

    [Fact]
    public async Task A_sparse_raw_file_becomes_the_same_vhd_content_as_qemu_img_makes_by_both_of_our_writers()
    {
        // A raw file with holes, random data and allocated zeros, read through SEEK_DATA/SEEK_HOLE.
        long size = (40L << 20) + 7 * 512;
        var rng = new Random(4);
        using (var raw = FileBlockDevice.Create(P("src.raw"), size))
        {
            for (int i = 0; i < 25; i++)
            {
                long start = rng.NextInt64(size / 512) * 512;
                var data = new byte[Math.Min(rng.Next(1, 3_000_000) / 512 * 512 + 512, size - start)];
                if (i % 4 != 0) rng.NextBytes(data); // every fourth extent is allocated zeros
                await raw.WriteAsync(start, data, default);
            }
            await raw.FlushAsync(default);
        }
        using var source = FileBlockDevice.OpenRead(P("src.raw"));
        var plan = await VhdBlockPlan.FromSourceAsync(source);
        Assert.Contains(plan.Blocks, b => !b.IsFull);
        var options = new VhdWriteOptions();
        using (var handle = File.OpenHandle(P("file.vhd"), FileMode.CreateNew, FileAccess.ReadWrite))
            await VhdStreamWriter.WriteFileAsync(source, plan, handle, options, concurrency: 4);
        await using (var fs = File.Create(P("stream.vhd")))
            await VhdStreamWriter.WriteAsync(source, plan, fs, options);
        Assert.Equal(await File.ReadAllBytesAsync(P("stream.vhd")), await File.ReadAllBytesAsync(P("file.vhd")));
        Assert.Equal(VhdStreamWriter.ComputeLength(plan, options), new FileInfo(P("file.vhd")).Length);

        var (rc, output) = QemuImg("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on", P("src.raw"), P("qemu.vhd"));
        Assert.True(rc == 0, output);
        foreach (var ours in new[] { "file.vhd", "stream.vhd" })
        {
            (rc, output) = QemuImg("compare", "-f", "vpc", "-F", "raw", P(ours), P("src.raw"));
            Assert.True(rc == 0, $"qemu-img compare {ours} vs the raw source: {output}");
            (rc, output) = QemuImg("compare", "-f", "vpc", "-F", "vpc", P(ours), P("qemu.vhd"));
            Assert.True(rc == 0, $"qemu-img compare {ours} vs qemu-img's own VHD: {output}");
        }
        Assert.Equal(size, Info(P("file.vhd"), "vpc").GetProperty("virtual-size").GetInt64());
    }

    [Fact]
    public async Task Creator_caml_makes_qemu_truncate_to_chs_which_is_why_we_write_qem2()
    {
        long size = 1L << 30;
        var disk = new SparseMemoryDisk(size);
        await disk.WriteAsync(size - 4096, new byte[] { 1, 2, 3 }, default);
        await WriteDynamicAsync(disk, P("caml.vhd"), new VhdWriteOptions { CreatorApplication = "caml" });
        await WriteDynamicAsync(disk, P("qem2.vhd"), new VhdWriteOptions());
        Assert.Equal(1_073_479_680, Info(P("caml.vhd"), "vpc").GetProperty("virtual-size").GetInt64()); // 2080*16*63*512
        Assert.Equal(size, Info(P("qem2.vhd"), "vpc").GetProperty("virtual-size").GetInt64());
        using var ours = await VhdFile.OpenAsync(P("caml.vhd"));
        Assert.Equal(size, ours.Length); // we always honour current_size
    }

    [Fact]
    public async Task Qemu_reads_our_fixed_vhd()
    {
        long size = (20L << 20) + 512;
        var (disk, model) = await RandomDiskAsync(3, size, 10);
        await File.WriteAllBytesAsync(P("ref.raw"), model);
        await using (var fs = File.Create(P("fixed.vhd")))
            await VhdStreamWriter.WriteFixedAsync(disk, fs);
        var info = Info(P("fixed.vhd"), "vpc");
        Assert.Equal(size, info.GetProperty("virtual-size").GetInt64());
        var (rc, output) = QemuImg("compare", "-f", "vpc", "-F", "raw", P("fixed.vhd"), P("ref.raw"));
        Assert.True(rc == 0, $"qemu-img compare: {output}");
    }

    [Theory]
    [InlineData("dynamic", false)]
    [InlineData("dynamic", true)]
    [InlineData("fixed", false)]
    [InlineData("fixed", true)]
    public async Task We_read_vhds_qemu_creates_identically(string subformat, bool forceSize)
    {
        long size = (48L << 20) + 512 * 9;
        var (_, model) = await RandomDiskAsync(4, size, 25);
        await File.WriteAllBytesAsync(P("src.raw"), model);
        var (rc, output) = QemuImg("convert", "-f", "raw", "-O", "vpc", "-o", $"subformat={subformat}" + (forceSize ? ",force_size=on" : ""), P("src.raw"), P("q.vhd"));
        Assert.True(rc == 0, output);
        long qemuSize = Info(P("q.vhd"), "vpc").GetProperty("virtual-size").GetInt64();

        using var file = await VhdFile.OpenAsync(P("q.vhd"));
        Assert.Equal(subformat == "fixed" ? VhdDiskType.Fixed : VhdDiskType.Dynamic, file.DiskType);
        Assert.Equal(qemuSize, file.Length);
        if (forceSize) Assert.Equal(size, file.Length);
        var all = new byte[file.Length];
        await file.ReadAsync(0, all, default);
        AssertSameBytes(model, all, "VhdFile read of qemu's VHD");

        if (subformat == "dynamic")
        {
            var streamed = new SparseMemoryDisk(file.Length);
            await using (var fs = File.OpenRead(P("q.vhd")))
                await VhdStreamReader.ApplyAsync(fs, streamed, "q.vhd");
            var back = new byte[file.Length];
            await streamed.ReadAsync(0, back, default);
            AssertSameBytes(model, back, "streamed apply of qemu's VHD");
            // qemu's own allocation map must agree with ours on which ranges hold data.
            var (mrc, map) = QemuImg("map", "--output=json", "-f", "vpc", P("q.vhd"));
            Assert.True(mrc == 0, map);
            var qemuData = JsonDocument.Parse(map).RootElement.EnumerateArray()
                .Where(r => r.GetProperty("data").GetBoolean())
                .Select(r => new Extent(r.GetProperty("start").GetInt64(), r.GetProperty("length").GetInt64()))
                .Aggregate(new List<Extent>(), (acc, e) =>
                {
                    // qemu lists each block separately (their file offsets differ); coalesce like our extents.
                    if (acc.Count > 0 && acc[^1].End == e.Offset) acc[^1] = new Extent(acc[^1].Offset, e.End - acc[^1].Offset);
                    else acc.Add(e);
                    return acc;
                });
            var ours = new List<Extent>();
            await foreach (var e in file.GetAllocatedExtentsAsync(0, file.Length, default)) ours.Add(e);
            Assert.NotEmpty(ours);
            Assert.Equal(qemuData, ours);
        }
    }

    [Fact]
    public async Task Merged_differencing_chain_equals_an_independently_built_raw_reference()
    {
        var rng = new Random(77);
        long size = (40L << 20) + 512 * 5;
        // Reference: a plain raw file, patched write by write.
        var reference = new byte[size];
        var disk = new SparseMemoryDisk(size);
        void Patch(long offset, byte[] data) => data.CopyTo(reference, offset);
        for (int i = 0; i < 20; i++)
        {
            long off = rng.NextInt64(size / 512) * 512;
            var data = new byte[Math.Min(rng.Next(1, 900_000) / 512 * 512 + 512, size - off)];
            rng.NextBytes(data); Patch(off, data); await disk.WriteAsync(off, data, default);
        }
        var paths = new List<string> { P("base.vhd") };
        var baseId = Guid.NewGuid();
        await WriteDynamicAsync(disk, paths[0], new VhdWriteOptions { UniqueId = baseId });
        var parentId = baseId;
        for (int layer = 1; layer <= 3; layer++)
        {
            var changed = new List<Extent>();
            for (int i = 0; i < 12; i++)
            {
                long off = rng.NextInt64(size / 512) * 512;
                var data = new byte[Math.Min(rng.Next(1, 200_000) / 512 * 512 + 512, size - off)];
                if (rng.Next(3) > 0) rng.NextBytes(data); // some writes are zeros: they must override the parent
                Patch(off, data); await disk.WriteAsync(off, data, default);
                changed.Add(new Extent(off, data.Length));
            }
            var id = Guid.NewGuid();
            var path = P($"delta{layer}.vhd");
            var plan = VhdBlockPlan.FromExtents(size, changed);
            Assert.Contains(plan.Blocks, b => !b.IsFull);
            await using (var fs = File.Create(path))
                await VhdStreamWriter.WriteAsync(disk, plan, fs, new VhdWriteOptions { UniqueId = id, Parent = new VhdParentIdentity(parentId, DateTimeOffset.UtcNow, $"delta{layer - 1}.vhd") });
            paths.Add(path);
            parentId = id;
        }
        await File.WriteAllBytesAsync(P("reference.raw"), reference);

        using var chain = await VhdChain.OpenAsync(paths);
        await using (var fs = File.Create(P("merged.vhd")))
            await chain.WriteMergedAsync(fs);
        var (rc, output) = QemuImg("compare", "-f", "vpc", "-F", "raw", P("merged.vhd"), P("reference.raw"));
        Assert.True(rc == 0, $"qemu-img compare merged vs reference: {output}");

        using (var raw = FileBlockDevice.Create(P("restored.raw"), size))
            await BlockCopier.CopyAsync(chain, raw);
        (rc, output) = QemuImg("compare", "-f", "raw", "-F", "raw", P("restored.raw"), P("reference.raw"));
        Assert.True(rc == 0, $"qemu-img compare chain->raw vs reference: {output}");

        // And the last delta alone differs from the reference (the test would notice a chain that was ignored).
        (rc, _) = QemuImg("compare", "-f", "vpc", "-F", "raw", paths[^1], P("reference.raw"));
        Assert.Equal(1, rc);
    }
}
