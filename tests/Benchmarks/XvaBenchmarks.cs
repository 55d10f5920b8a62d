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
            var (writeSec, writeRss) = await MeasureAsync(async () =>
            {
                using var src = new FileBlockSource(raw);
                written = await XvaWriter.WriteFileAsync(xva, meta, [new XvaDiskSource("Ref:2", src)],
                    new XvaWriteOptions { KeepAliveInterval = null }, cancellationToken);
            });
            long xvaBytes = new FileInfo(xva).Length;

            // Ours: read into a sparse raw file, and verify-only
            var (readSec, readRss) = await MeasureAsync(async () =>
            {
                using var target = new FileBlockTarget(restored, size);
                await XvaReader.ReadFileAsync(xva, new XvaReadOptions
                {
                    OpenTarget = (_, _) => ValueTask.FromResult<IBlockTarget?>(target),
                    ZeroOmittedChunks = false, // fresh sparse file: omitted chunks already read as zeros
                }, cancellationToken);
            });
            var (verifySec, verifyRss) = await MeasureAsync(async () =>
            {
                await XvaReader.ReadFileAsync(xva, null, cancellationToken);
            });
            bool same = await FilesEqualAsync(raw, restored, cancellationToken);

            // Peers moving the same bytes
            double tarCreate = await TimeProcessAsync("tar", context.WorkDirectory, "-cf", Path.Combine(context.WorkDirectory, "plain.tar"), "disk.raw");
            File.Delete(Path.Combine(context.WorkDirectory, "plain.tar"));
            double catRaw = await TimeProcessAsync("sh", context.WorkDirectory, "-c", "cat disk.raw > copy.raw");
            File.Delete(Path.Combine(context.WorkDirectory, "copy.raw"));
            Directory.CreateDirectory(extractDir);
            double tarExtract = await TimeProcessAsync("tar", context.WorkDirectory, "-xf", xva, "-C", extractDir);
            Directory.Delete(extractDir, recursive: true);
            double catXva = await TimeProcessAsync("sh", context.WorkDirectory, "-c", "cat disk.xva > copy.xva");
            File.Delete(Path.Combine(context.WorkDirectory, "copy.xva"));

            double mb = size / 1e6;
            report.WriteLine($"## XVA ({size / MiB} MiB disk, {dataBytes * 100 / size} % data, XXH64 checksums, no compression)");
            report.WriteLine();
            report.WriteLine($"XVA written: {xvaBytes / 1e6:F0} MB, {written.Disks[0].ChunksWritten} chunks written, {written.Disks[0].ChunksOmitted} omitted. Restored disk identical to source: {same}.");
            report.WriteLine();
            report.WriteLine("| Step | Seconds | MB/s (disk bytes) | Peak RSS (MiB) | Peer, same bytes | Peer seconds | Ours / peer time |");
            report.WriteLine("|---|---:|---:|---:|---|---:|---:|");
            report.WriteLine($"| XvaWriter (raw file -> .xva) | {writeSec:F2} | {mb / writeSec:F0} | {writeRss} | `tar -cf` of disk.raw | {tarCreate:F2} | {writeSec / tarCreate:F2} |");
            report.WriteLine($"| (same) | | | | `cat disk.raw > copy` | {catRaw:F2} | {writeSec / catRaw:F2} |");
            report.WriteLine($"| XvaReader (.xva -> raw file) | {readSec:F2} | {mb / readSec:F0} | {readRss} | `tar -xf` of disk.xva | {tarExtract:F2} | {readSec / tarExtract:F2} |");
            report.WriteLine($"| (same) | | | | `cat disk.xva > copy` | {catXva:F2} | {readSec / catXva:F2} |");
            report.WriteLine($"| XvaReader verify only | {verifySec:F2} | {mb / verifySec:F0} | {verifyRss} | | | |");
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

    private static async Task<(double Seconds, long PeakRssMiB)> MeasureAsync(Func<Task> body)
    {
        await SyncAsync();
        GC.Collect();
        try { File.WriteAllText("/proc/self/clear_refs", "5"); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        var sw = Stopwatch.StartNew();
        await body();
        sw.Stop();
        return (sw.Elapsed.TotalSeconds, PeakRssMiB());
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

    private static async Task<double> TimeProcessAsync(string file, string dir, params string[] args)
    {
        await SyncAsync();
        var psi = new ProcessStartInfo(file) { WorkingDirectory = dir, UseShellExecute = false, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        string err = await p.StandardError.ReadToEndAsync();
        await p.WaitForExitAsync();
        sw.Stop();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed: {err}");
        return sw.Elapsed.TotalSeconds;
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

    /// <summary>A raw file as a block source; it cannot tell holes, so every chunk is read and zero-checked (xapi's raw path).</summary>
    private sealed class FileBlockSource(string path) : IBlockSource, IDisposable
    {
        private readonly SafeFileHandle _handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.Asynchronous);
        public long Length => RandomAccess.GetLength(_handle);
        public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
        {
            int done = 0;
            while (done < buffer.Length)
            {
                int n = await RandomAccess.ReadAsync(_handle, buffer[done..], offset + done, cancellationToken);
                if (n == 0) { buffer.Span[done..].Clear(); break; }
                done += n;
            }
        }
        public async IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, [EnumeratorCancellation] CancellationToken cancellationToken)
        {
            await Task.CompletedTask;
            yield return new Extent(offset, length);
        }
        public void Dispose() => _handle.Dispose();
    }

    private sealed class FileBlockTarget : IBlockTarget, IDisposable
    {
        private readonly SafeFileHandle _handle;
        public FileBlockTarget(string path, long length)
        {
            _handle = File.OpenHandle(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None);
            RandomAccess.SetLength(_handle, length);
            Length = length;
        }
        public long Length { get; }
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) =>
            RandomAccess.WriteAsync(_handle, data, offset, cancellationToken);
        public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken) =>
            throw new NotSupportedException("The benchmark reads into a fresh sparse file with ZeroOmittedChunks = false.");
        public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;
        public void Dispose() => _handle.Dispose();
    }
}
