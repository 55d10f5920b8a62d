using System.Diagnostics;
using System.Runtime.CompilerServices;
using Microsoft.Win32.SafeHandles;
using VProtect.Core.Formats.Xva;
using VProtect.Core.IO;

namespace VProtect.Benchmarks;

/// <summary>
/// XVA write and read (with XXH64 checksums) of a 4 GiB raw disk holding 50 % data (every other MiB), against
/// GNU tar and cat moving the same bytes in the same run. Files live in the work directory; page cache is warm
/// for both sides, and dirty pages are synced before every timed step. Memory is the process's peak RSS during each step (reset through /proc/self/clear_refs).
/// </summary>
public sealed class XvaBenchmarks : IBenchmark
{
    private const int MiB = 1024 * 1024;
    public string Name => "xva";

    public async Task RunAsync(BenchmarkContext context, TextWriter report, CancellationToken cancellationToken)
    {
        long size = context.Quick ? 512L * MiB : 4096L * MiB;
        Directory.CreateDirectory(context.WorkDirectory);
        string raw = Path.Combine(context.WorkDirectory, "disk.raw");
        string xva = Path.Combine(context.WorkDirectory, "disk.xva");
        string restored = Path.Combine(context.WorkDirectory, "restored.raw");
        string extractDir = Path.Combine(context.WorkDirectory, "extract");
        try
        {
            long dataBytes = CreateHalfFullDisk(raw, size);
            var meta = new XvaMetadata(new XvaVersion(), [
                new XvaObject("VM", "Ref:1", new Dictionary<string, object?> { ["name_label"] = "bench" }),
                new XvaObject("VDI", "Ref:2", new Dictionary<string, object?> { ["virtual_size"] = size.ToString() }),
            ]);

            // Ours: write
            XvaWriteResult written = null!;
            var write = await MeasureAsync(async () =>
            {
                using var file = FileBlockDevice.OpenRead(raw);
                var src = new WholeRangeSource(file);
                written = await XvaWriter.WriteFileAsync(xva, meta, [new XvaDiskSource("Ref:2", src)],
                    new XvaWriteOptions { KeepAliveInterval = null }, cancellationToken);
            });
            long xvaBytes = new FileInfo(xva).Length;

            // Ours: read into a sparse raw file, and verify-only
            var read = await MeasureAsync(async () =>
            {
                using var file = FileBlockDevice.Create(restored, size, overwrite: true, writeBehindBytes: 0);
                var target = new NoFsyncTarget(file);
                await XvaReader.ReadFileAsync(xva, new XvaReadOptions
                {
                    OpenTarget = (_, _) => ValueTask.FromResult<IBlockTarget?>(target),
                    ZeroOmittedChunks = false, // fresh sparse file: omitted chunks already read as zeros
                }, cancellationToken);
            });
            var verify = await MeasureAsync(async () => await XvaReader.ReadFileAsync(xva, null, cancellationToken));
            bool same = await FilesEqualAsync(raw, restored, cancellationToken);

            // Peers moving the same bytes
            var tarCreate = await TimeShellAsync(context.WorkDirectory, "tar -cf plain.tar disk.raw");
            File.Delete(Path.Combine(context.WorkDirectory, "plain.tar"));
            var catRaw = await TimeShellAsync(context.WorkDirectory, "cat disk.raw > copy.raw");
            File.Delete(Path.Combine(context.WorkDirectory, "copy.raw"));
            Directory.CreateDirectory(extractDir);
            var tarExtract = await TimeShellAsync(context.WorkDirectory, "tar -xf disk.xva -C extract");
            Directory.Delete(extractDir, recursive: true);
            var catXva = await TimeShellAsync(context.WorkDirectory, "cat disk.xva > copy.xva");
            File.Delete(Path.Combine(context.WorkDirectory, "copy.xva"));

            double mb = size / 1e6;
            string load = File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "?";
            report.WriteLine($"## XVA ({size / MiB} MiB disk, {dataBytes * 100 / size} % data, XXH64 checksums, no compression)");
            report.WriteLine();
            report.WriteLine($"XVA written: {xvaBytes / 1e6:F0} MB, {written.Disks[0].ChunksWritten} chunks written, {written.Disks[0].ChunksOmitted} omitted. Restored disk identical to source: {same}. Load average at the end: {load}.");
            report.WriteLine();
            report.WriteLine("Wall = elapsed seconds; CPU = user+system seconds of the process (ours) or of the peer's processes. MB/s counts the disk's bytes.");
            report.WriteLine();
            report.WriteLine("| Step | Wall s | MB/s | CPU s | Peak RSS MiB | Peer | Peer wall s | Peer CPU s | Wall ratio | CPU ratio |");
            report.WriteLine("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|");
            void Row(string step, Measured ours, string peer, Measured theirs, bool first) =>
                report.WriteLine(first
                    ? $"| {step} | {ours.Wall:F2} | {mb / ours.Wall:F0} | {ours.Cpu:F2} | {ours.PeakRssMiB} | {peer} | {theirs.Wall:F2} | {theirs.Cpu:F2} | {ours.Wall / theirs.Wall:F2} | {ours.Cpu / theirs.Cpu:F2} |"
                    : $"| | | | | | {peer} | {theirs.Wall:F2} | {theirs.Cpu:F2} | {ours.Wall / theirs.Wall:F2} | {ours.Cpu / theirs.Cpu:F2} |");
            Row("XvaWriter raw → .xva", write, "`tar -cf` of disk.raw", tarCreate, true);
            Row("", write, "`cat disk.raw > copy`", catRaw, false);
            Row("", write, "`cat disk.xva > copy` (same output bytes)", catXva, false);
            Row("XvaReader .xva → raw", read, "`tar -xf` of disk.xva", tarExtract, true);
            Row("", read, "`cat disk.xva > copy`", catXva, false);
            report.WriteLine($"| XvaReader verify only | {verify.Wall:F2} | {mb / verify.Wall:F0} | {verify.Cpu:F2} | {verify.PeakRssMiB} | | | | | |");
            report.WriteLine();
        }
        finally
        {
            foreach (var f in new[] { raw, xva, restored }) if (File.Exists(f)) File.Delete(f);
            if (Directory.Exists(extractDir)) Directory.Delete(extractDir, recursive: true);
        }
    }

    /// <summary>A sparse raw file where every other MiB holds pseudo-random data; returns the data bytes.</summary>
    private static long CreateHalfFullDisk(string path, long size)
    {
        using var handle = File.OpenHandle(path, FileMode.Create, FileAccess.ReadWrite);
        RandomAccess.SetLength(handle, size);
        var chunk = new byte[MiB];
        new Random(1).NextBytes(chunk);
        long data = 0;
        for (long off = 0; off < size; off += 2 * MiB)
        {
            BitConverter.TryWriteBytes(chunk, off); // every chunk distinct
            RandomAccess.Write(handle, chunk, off);
            data += MiB;
        }
        return data;
    }

    private readonly record struct Measured(double Wall, double Cpu, long PeakRssMiB);

    private static async Task<Measured> MeasureAsync(Func<Task> body)
    {
        await SyncAsync();
        GC.Collect();
        try { File.WriteAllText("/proc/self/clear_refs", "5"); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        var self = Process.GetCurrentProcess();
        var cpu0 = self.TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        await body();
        sw.Stop();
        self.Refresh();
        return new Measured(sw.Elapsed.TotalSeconds, (self.TotalProcessorTime - cpu0).TotalSeconds, PeakRssMiB());
    }

    private static long PeakRssMiB()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith("VmHWM:")) return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) / 1024;
        }
        catch (IOException) { }
        return Process.GetCurrentProcess().PeakWorkingSet64 / MiB;
    }

    /// <summary>Flushes dirty pages first so no step pays for the previous step's writeback.</summary>
    private static async Task SyncAsync()
    {
        using var p = Process.Start(new ProcessStartInfo("sync") { UseShellExecute = false })!;
        await p.WaitForExitAsync();
    }

    /// <summary>Runs a shell command; CPU time comes from the shell's <c>times</c> (children's user and system time).</summary>
    private static async Task<Measured> TimeShellAsync(string dir, string command)
    {
        await SyncAsync();
        var psi = new ProcessStartInfo("sh") { WorkingDirectory = dir, UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        psi.ArgumentList.Add("-c");
        psi.ArgumentList.Add(command + " && times");
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        string err = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        sw.Stop();
        if (p.ExitCode != 0) throw new InvalidOperationException($"sh -c '{command}' failed: {err}");
        // times prints two lines: the shell's "user sys", then its children's "user sys", as e.g. 0m1.250s.
        var children = (await stdout).Split('\n', StringSplitOptions.RemoveEmptyEntries)[^1].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return new Measured(sw.Elapsed.TotalSeconds, children.Sum(ParseTimes), 0);
    }

    private static double ParseTimes(string t)
    {
        int m = t.IndexOf('m');
        return double.Parse(t[..m], System.Globalization.CultureInfo.InvariantCulture) * 60
             + double.Parse(t[(m + 1)..].TrimEnd('s'), System.Globalization.CultureInfo.InvariantCulture);
    }

    private static async Task<bool> FilesEqualAsync(string a, string b, CancellationToken ct)
    {
        await using var fa = File.OpenRead(a);
        await using var fb = File.OpenRead(b);
        if (fa.Length != fb.Length) return false;
        var ba = new byte[MiB]; var bb = new byte[MiB];
        while (true)
        {
            int na = await fa.ReadAtLeastAsync(ba, ba.Length, throwOnEndOfStream: false, ct);
            int nb = await fb.ReadAtLeastAsync(bb, bb.Length, throwOnEndOfStream: false, ct);
            if (na != nb || !ba.AsSpan(0, na).SequenceEqual(bb.AsSpan(0, nb))) return false;
            if (na == 0) return true;
        }
    }

    /// <summary>A raw file as xapi's raw path sees it: it cannot tell holes, so every chunk is read and zero-checked.</summary>
    private sealed class WholeRangeSource(FileBlockDevice file) : IBlockSource
    {
        public long Length => file.Length;
        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken) => file.ReadAsync(offset, buffer, cancellationToken);
        public async IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, [EnumeratorCancellation] CancellationToken cancellationToken)
        {
            await Task.CompletedTask;
            yield return new Extent(offset, length);
        }
    }

    /// <summary>The restored file without the closing fsync (the peers, tar and cat, do not sync either).</summary>
    private sealed class NoFsyncTarget(FileBlockDevice file) : IBlockTarget
    {
        public long Length => file.Length;
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) => file.WriteAsync(offset, data, cancellationToken);
        public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken) =>
            throw new NotSupportedException("The benchmark reads into a fresh sparse file with ZeroOmittedChunks = false.");
        public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;
    }
}
