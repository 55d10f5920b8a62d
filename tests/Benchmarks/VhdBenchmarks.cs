using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.IO;

namespace VProtect.Benchmarks;

/// <summary>
/// raw -> dynamic VHD and VHD -> raw for a 4 GiB image with 50 % data (random extents of 64 KiB..8 MiB),
/// ours against `qemu-img convert` in the same run, alternating, best of N. Both sides end with an fsync
/// (qemu-img's default writeback cache flushes on close). Reports peak working set of this process.
/// </summary>
public sealed class VhdBenchmarks : IBenchmark
{
    public string Name => "vhd";

    public async Task RunAsync(BenchmarkContext context, TextWriter report, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(context.WorkDirectory);
        long size = context.Quick ? 256L << 20 : 4L << 30;
        int rounds = context.Quick ? 2 : 5;
        string raw = Path.Combine(context.WorkDirectory, "source.raw");
        long dataBytes = await CreateSourceAsync(raw, size, cancellationToken);
        string oursVhd = Path.Combine(context.WorkDirectory, "ours.vhd"), qemuVhd = Path.Combine(context.WorkDirectory, "qemu.vhd");
        string oursRaw = Path.Combine(context.WorkDirectory, "ours.raw"), qemuRaw = Path.Combine(context.WorkDirectory, "qemu.raw");

        var toVhdOurs = new List<double>(); var toVhdQemu = new List<double>(); var toVhdFileOurs = new List<double>();
        string oursFileVhd = Path.Combine(context.WorkDirectory, "ours-file.vhd");
        var toRawOurs = new List<double>(); var toRawQemu = new List<double>();
        for (int r = 0; r < rounds; r++)
        {
            toVhdQemu.Add(Time(() => Qemu("convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on", raw, qemuVhd)));
            toVhdOurs.Add(await TimeAsync(() => RawToVhdAsync(raw, oursVhd, cancellationToken)));
            toVhdFileOurs.Add(await TimeAsync(() => RawToVhdFileAsync(raw, oursFileVhd, cancellationToken)));
            toRawQemu.Add(Time(() => Qemu("convert", "-f", "vpc", "-O", "raw", qemuVhd, qemuRaw)));
            toRawOurs.Add(await TimeAsync(() => VhdToRawAsync(oursVhd, oursRaw, cancellationToken)));
            Console.Error.WriteLine($"  round {r + 1}: raw->vhd ours {toVhdOurs[^1]:F2}s (file path {toVhdFileOurs[^1]:F2}s) qemu {toVhdQemu[^1]:F2}s; vhd->raw ours {toRawOurs[^1]:F2}s qemu {toRawQemu[^1]:F2}s");
        }
        // Correctness of what was timed: both directions must reproduce the source.
        string verdict = Qemu("compare", "-f", "vpc", "-F", "raw", oursVhd, raw) == 0 && Qemu("compare", "-f", "vpc", "-F", "raw", oursFileVhd, raw) == 0 && Qemu("compare", "-f", "raw", "-F", "raw", oursRaw, raw) == 0
            ? "identical (qemu-img compare)" : "**DIFFERENT — results invalid**";
        long peak = Process.GetCurrentProcess().PeakWorkingSet64;

        double gib = dataBytes / (double)(1L << 30);
        report.WriteLine("## VHD: raw <-> dynamic VHD (ours vs qemu-img convert)");
        report.WriteLine();
        report.WriteLine($"Image: {size >> 20} MiB virtual, {dataBytes >> 20} MiB data ({100.0 * dataBytes / size:F0} %), random extents; {rounds} rounds, best time; output fsynced. Content: {verdict}.");
        report.WriteLine();
        report.WriteLine("| direction | ours best (s) | qemu-img best (s) | ours MiB/s of data | ratio of bests qemu/ours | ratio of medians |");
        report.WriteLine("|---|---|---|---|---|---|");
        Row(report, "raw -> dynamic VHD (stream writer)", toVhdOurs, toVhdQemu, gib);
        Row(report, "raw -> dynamic VHD (file writer, 4 in flight)", toVhdFileOurs, toVhdQemu, gib);
        Row(report, "dynamic VHD -> raw", toRawOurs, toRawQemu, gib);
        report.WriteLine();
        report.WriteLine($"Peak working set of the benchmark process (ours in-process; qemu-img is a child): {peak >> 20} MiB. All timings: raw->vhd ours [{string.Join(", ", toVhdOurs.Select(t => t.ToString("F2")))}] file path [{string.Join(", ", toVhdFileOurs.Select(t => t.ToString("F2")))}] qemu [{string.Join(", ", toVhdQemu.Select(t => t.ToString("F2")))}]; vhd->raw ours [{string.Join(", ", toRawOurs.Select(t => t.ToString("F2")))}] qemu [{string.Join(", ", toRawQemu.Select(t => t.ToString("F2")))}].");
        report.WriteLine();
        foreach (var f in new[] { raw, oursVhd, oursFileVhd, qemuVhd, oursRaw, qemuRaw }) File.Delete(f);
    }

    private static void Row(TextWriter report, string what, List<double> ours, List<double> qemu, double gib) =>
        report.WriteLine($"| {what} | {ours.Min():F2} | {qemu.Min():F2} | {gib * 1024 / ours.Min():F0} | {qemu.Min() / ours.Min():F2}x | {Median(qemu) / Median(ours):F2}x |");

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
    }

    private static async Task RawToVhdAsync(string raw, string vhd, CancellationToken cancellationToken)
    {
        using var source = new RawFile(raw);
        var plan = await VhdBlockPlan.FromSourceAsync(source, cancellationToken: cancellationToken);
        await using var output = new FileStream(vhd, FileMode.Create, FileAccess.Write, FileShare.None, 0, FileOptions.Asynchronous);
        await VhdStreamWriter.WriteAsync(source, plan, output, new VhdWriteOptions { ReadAhead = 4 }, cancellationToken: cancellationToken);
        output.Flush(flushToDisk: true);
    }

    private static async Task RawToVhdFileAsync(string raw, string vhd, CancellationToken cancellationToken)
    {
        using var source = new RawFile(raw);
        var plan = await VhdBlockPlan.FromSourceAsync(source, cancellationToken: cancellationToken);
        using var handle = File.OpenHandle(vhd, FileMode.Create, FileAccess.ReadWrite, FileShare.None, FileOptions.Asynchronous);
        await VhdStreamWriter.WriteFileAsync(source, plan, handle, new VhdWriteOptions(), concurrency: 4, cancellationToken: cancellationToken);
        RandomAccess.FlushToDisk(handle);
    }

    private static async Task VhdToRawAsync(string vhd, string raw, CancellationToken cancellationToken)
    {
        using var source = await VhdFile.OpenAsync(vhd, cancellationToken);
        using var target = new RawFile(raw, source.Length);
        await BlockCopier.CopyAsync(source, target, new BlockCopyOptions { Concurrency = 4, DetectZeroes = true }, cancellationToken: cancellationToken);
        target.FlushToDisk();
    }

    /// <summary>Half the disk in random extents (64 KiB..8 MiB, sector aligned), holes elsewhere.</summary>
    private static async Task<long> CreateSourceAsync(string path, long size, CancellationToken cancellationToken)
    {
        var rng = new Random(2026);
        using var file = new RawFile(path, size);
        var buffer = new byte[8 << 20];
        long written = 0, pos = 0;
        while (pos < size)
        {
            long len = Math.Min(rng.NextInt64(1, 129) * 64 * 1024, size - pos);
            if (rng.Next(2) == 0)
            {
                rng.NextBytes(buffer.AsSpan(0, (int)len));
                await file.WriteAsync(pos, buffer.AsMemory(0, (int)len), cancellationToken);
                written += len;
            }
            pos += len;
        }
        file.FlushToDisk();
        return written;
    }

    private static int Qemu(params string[] args)
    {
        var psi = new ProcessStartInfo("qemu-img") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("qemu-img not found: install the Debian package qemu-utils.");
        p.StandardOutput.ReadToEnd();
        var err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode > 1) throw new InvalidOperationException($"qemu-img {string.Join(' ', args)} failed: {err}");
        return p.ExitCode;
    }

    private static double Time(Func<int> action)
    {
        var sw = Stopwatch.StartNew();
        int rc = action();
        if (rc != 0) throw new InvalidOperationException($"qemu-img exit code {rc}");
        return sw.Elapsed.TotalSeconds;
    }

    private static async Task<double> TimeAsync(Func<Task> action)
    {
        var sw = Stopwatch.StartNew();
        await action();
        return sw.Elapsed.TotalSeconds;
    }

    /// <summary>A raw image file; allocated extents via SEEK_DATA/SEEK_HOLE (as qemu-img uses).</summary>
    private sealed class RawFile : IBlockSource, IBlockTarget, IDisposable
    {
        private readonly SafeFileHandle _handle;

        public RawFile(string path, long? createLength = null)
        {
            _handle = File.OpenHandle(path, createLength is null ? FileMode.Open : FileMode.Create,
                createLength is null ? FileAccess.Read : FileAccess.ReadWrite, FileShare.Read, FileOptions.Asynchronous);
            if (createLength is long len) RandomAccess.SetLength(_handle, len);
            Length = RandomAccess.GetLength(_handle);
        }

        public long Length { get; }

        public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
        {
            int done = 0;
            while (done < buffer.Length)
            {
                int n = await RandomAccess.ReadAsync(_handle, buffer[done..], offset + done, cancellationToken);
                if (n == 0) { buffer.Span[done..].Clear(); return; }
                done += n;
            }
        }

        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) =>
            RandomAccess.WriteAsync(_handle, data, offset, cancellationToken);

        public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken) =>
            throw new NotSupportedException("The benchmark target is a fresh sparse file.");

        public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

        public void FlushToDisk() => RandomAccess.FlushToDisk(_handle);

        public async IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, [EnumeratorCancellation] CancellationToken cancellationToken)
        {
            await Task.CompletedTask;
            long end = offset + length;
            if (!OperatingSystem.IsLinux()) { yield return new Extent(offset, length); yield break; }
            int fd = (int)_handle.DangerousGetHandle();
            for (long pos = offset; pos < end;)
            {
                long data = lseek(fd, pos, 3 /* SEEK_DATA */);
                if (data < 0 || data >= end) yield break;
                long hole = lseek(fd, data, 4 /* SEEK_HOLE */);
                if (hole < 0 || hole > end) hole = end;
                yield return new Extent(data, hole - data);
                pos = hole;
            }
        }

        [DllImport("libc", SetLastError = true)]
        private static extern long lseek(int fd, long offset, int whence);

        public void Dispose() => _handle.Dispose();
    }
}
