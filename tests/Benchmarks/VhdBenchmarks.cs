using System.Diagnostics;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.IO;

namespace VProtect.Benchmarks;

/// <summary>
/// raw -> dynamic VHD and VHD -> raw for a 4 GiB image with 50 % data (random extents of 64 KiB..8 MiB),
/// ours against `qemu-img convert` in the same run, the order alternating from round to round. Every step starts
/// with its output deleted and ends with it fsynced, so no step inherits another's dirty pages. Two times per step:
/// "returned" (the tool is done: qemu-img's default target cache is unsafe, it never syncs the data) and
/// "durable" (returned plus an fsync of the output: for qemu-img we fdatasync its file right after it exits).
/// Reports the peak working set of this process and the load average.
/// </summary>
public sealed class VhdBenchmarks : IBenchmark
{
    public string Name => "vhd";

    private sealed record Timing(double Returned, double Durable);

    public async Task RunAsync(BenchmarkContext context, TextWriter report, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(context.WorkDirectory);
        long size = context.Quick ? 256L << 20 : 4L << 30;
        int rounds = context.Quick ? 2 : 5;
        string loadBefore = LoadAverage();
        string raw = Path.Combine(context.WorkDirectory, "source.raw");
        long dataBytes = await CreateSourceAsync(raw, size, cancellationToken);
        string P(string name) => Path.Combine(context.WorkDirectory, name);
        string oursVhd = P("ours.vhd"), oursFileVhd = P("ours-file.vhd"), qemuVhd = P("qemu.vhd"), oursRaw = P("ours.raw"), qemuRaw = P("qemu.raw");

        var toVhdQemu = new List<Timing>(); var toVhdFile = new List<Timing>(); var toVhdStream = new List<Timing>();
        var toRawQemu = new List<Timing>(); var toRawOurs = new List<Timing>();
        for (int r = 0; r < rounds; r++)
        {
            var qemuToVhd = () => TimeQemuAsync(qemuVhd, "convert", "-f", "raw", "-O", "vpc", "-o", "subformat=dynamic,force_size=on", raw, qemuVhd);
            var fileToVhd = () => TimeOursAsync(oursFileVhd, () => RawToVhdFileAsync(raw, oursFileVhd, cancellationToken));
            var streamToVhd = () => TimeOursAsync(oursVhd, () => RawToVhdStreamAsync(raw, oursVhd, cancellationToken));
            if (r % 2 == 0) { toVhdQemu.Add(await qemuToVhd()); toVhdFile.Add(await fileToVhd()); toVhdStream.Add(await streamToVhd()); }
            else { toVhdStream.Add(await streamToVhd()); toVhdFile.Add(await fileToVhd()); toVhdQemu.Add(await qemuToVhd()); }
            var qemuToRaw = () => TimeQemuAsync(qemuRaw, "convert", "-f", "vpc", "-O", "raw", qemuVhd, qemuRaw);
            var oursToRaw = () => TimeOursAsync(oursRaw, () => VhdToRawAsync(oursVhd, oursRaw, cancellationToken));
            if (r % 2 == 0) { toRawQemu.Add(await qemuToRaw()); toRawOurs.Add(await oursToRaw()); }
            else { toRawOurs.Add(await oursToRaw()); toRawQemu.Add(await qemuToRaw()); }
            Console.Error.WriteLine($"  round {r + 1} (load {LoadAverage()}): raw->vhd durable/returned: file writer {toVhdFile[^1].Durable:F2}/{toVhdFile[^1].Returned:F2}s, stream writer {toVhdStream[^1].Durable:F2}/{toVhdStream[^1].Returned:F2}s, qemu {toVhdQemu[^1].Durable:F2}/{toVhdQemu[^1].Returned:F2}s; vhd->raw ours {toRawOurs[^1].Durable:F2}/{toRawOurs[^1].Returned:F2}s, qemu {toRawQemu[^1].Durable:F2}/{toRawQemu[^1].Returned:F2}s");
        }
        // Correctness of what was timed: both directions must reproduce the source.
        string verdict = Qemu("compare", "-f", "vpc", "-F", "raw", oursVhd, raw) == 0 && Qemu("compare", "-f", "vpc", "-F", "raw", oursFileVhd, raw) == 0 && Qemu("compare", "-f", "raw", "-F", "raw", oursRaw, raw) == 0
            ? "identical (qemu-img compare)" : "**DIFFERENT — results invalid**";
        long peak = Process.GetCurrentProcess().PeakWorkingSet64;

        double gib = dataBytes / (double)(1L << 30);
        report.WriteLine("## VHD: raw <-> dynamic VHD (ours vs qemu-img convert)");
        report.WriteLine();
        report.WriteLine($"Image: {size >> 20} MiB virtual, {dataBytes >> 20} MiB data ({100.0 * dataBytes / size:F0} %), random extents; {rounds} rounds, order alternating. Content: {verdict}. Load average (1/5/15 min) before: {loadBefore}, after: {LoadAverage()}.");
        report.WriteLine();
        report.WriteLine("Durable = until the output is on disk (fsync); returned = until the tool is done (qemu-img does not sync by default). Ratios are qemu-img time / our time: >= 1.0x means we are at least as fast.");
        report.WriteLine();
        report.WriteLine("| direction | ours durable best / median (s) | qemu-img durable best / median (s) | ours MiB/s of data | ratio durable best / median | ratio returned best / median |");
        report.WriteLine("|---|---|---|---|---|---|");
        Row(report, "raw -> dynamic VHD (file writer)", toVhdFile, toVhdQemu, gib);
        Row(report, "raw -> dynamic VHD (stream writer into a FileStream)", toVhdStream, toVhdQemu, gib);
        Row(report, "dynamic VHD -> raw (copier; fsync inside returned)", toRawOurs, toRawQemu, gib);
        report.WriteLine();
        static string All(List<Timing> t) => string.Join(", ", t.Select(x => $"{x.Durable:F2}/{x.Returned:F2}"));
        report.WriteLine($"Peak working set of the benchmark process (ours in-process; qemu-img is a child): {peak >> 20} MiB. All timings, durable/returned (s): raw->vhd file writer [{All(toVhdFile)}], stream writer [{All(toVhdStream)}], qemu [{All(toVhdQemu)}]; vhd->raw ours [{All(toRawOurs)}], qemu [{All(toRawQemu)}].");
        report.WriteLine();
        foreach (var f in new[] { raw, oursVhd, oursFileVhd, qemuVhd, oursRaw, qemuRaw }) File.Delete(f);
    }

    private static string LoadAverage() =>
        File.Exists("/proc/loadavg") ? string.Join(" / ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)) : "n/a";

    private static void Row(TextWriter report, string what, List<Timing> ours, List<Timing> qemu, double gib)
    {
        var od = ours.Select(t => t.Durable).ToList(); var qd = qemu.Select(t => t.Durable).ToList();
        var or = ours.Select(t => t.Returned).ToList(); var qr = qemu.Select(t => t.Returned).ToList();
        report.WriteLine($"| {what} | {od.Min():F2} / {Median(od):F2} | {qd.Min():F2} / {Median(qd):F2} | {gib * 1024 / od.Min():F0} | {qd.Min() / od.Min():F2}x / {Median(qd) / Median(od):F2}x | {qr.Min() / or.Min():F2}x / {Median(qr) / Median(or):F2}x |");
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[sorted.Count / 2 - 1] + sorted[sorted.Count / 2]) / 2;
    }

    /// <summary>Times one of our conversions: it returns when written; then the output is fsynced.</summary>
    private static async Task<Timing> TimeOursAsync(string output, Func<Task> convert)
    {
        File.Delete(output);
        var sw = Stopwatch.StartNew();
        await convert();
        double returned = sw.Elapsed.TotalSeconds;
        FsyncFile(output);
        return new Timing(returned, sw.Elapsed.TotalSeconds);
    }

    /// <summary>Times qemu-img: it returns (its data may still be dirty in the page cache); then its output is fsynced.</summary>
    private static Task<Timing> TimeQemuAsync(string output, params string[] args)
    {
        File.Delete(output);
        var sw = Stopwatch.StartNew();
        int rc = Qemu(args);
        if (rc != 0) throw new InvalidOperationException($"qemu-img exit code {rc}");
        double returned = sw.Elapsed.TotalSeconds;
        FsyncFile(output);
        return Task.FromResult(new Timing(returned, sw.Elapsed.TotalSeconds));
    }

    private static void FsyncFile(string path)
    {
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
        RandomAccess.FlushToDisk(handle);
    }

    /// <summary>The file path (Export-VMBackup -Format Vhd uses it): 4 blocks read ahead, in-order writes, holes, write-behind.</summary>
    private static async Task RawToVhdFileAsync(string raw, string vhd, CancellationToken cancellationToken)
    {
        using var source = FileBlockDevice.OpenRead(raw);
        var plan = await VhdBlockPlan.FromSourceAsync(source, cancellationToken: cancellationToken);
        using var handle = File.OpenHandle(vhd, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.Asynchronous);
        await VhdStreamWriter.WriteFileAsync(source, plan, handle, new VhdWriteOptions(), concurrency: 4, cancellationToken: cancellationToken);
    }

    /// <summary>The stream path (an HTTP body in the product) into a FileStream.</summary>
    private static async Task RawToVhdStreamAsync(string raw, string vhd, CancellationToken cancellationToken)
    {
        using var source = FileBlockDevice.OpenRead(raw);
        var plan = await VhdBlockPlan.FromSourceAsync(source, cancellationToken: cancellationToken);
        await using var output = new FileStream(vhd, FileMode.CreateNew, FileAccess.Write, FileShare.None, 0, FileOptions.Asynchronous);
        await VhdStreamWriter.WriteAsync(source, plan, output, new VhdWriteOptions { ReadAhead = 4 }, cancellationToken: cancellationToken);
    }

    private static async Task VhdToRawAsync(string vhd, string raw, CancellationToken cancellationToken)
    {
        using var source = await VhdFile.OpenAsync(vhd, cancellationToken);
        using var target = FileBlockDevice.Create(raw, source.Length);
        // CopyAsync ends with the target's FlushAsync, an fsync: ours is durable when it returns.
        await BlockCopier.CopyAsync(source, target, new BlockCopyOptions { Concurrency = 4, DetectZeroes = true }, cancellationToken: cancellationToken);
    }

    /// <summary>Half the disk in random extents (64 KiB..8 MiB, sector aligned), holes elsewhere.</summary>
    private static async Task<long> CreateSourceAsync(string path, long size, CancellationToken cancellationToken)
    {
        var rng = new Random(2026);
        using var file = FileBlockDevice.Create(path, size, overwrite: true);
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
        await file.FlushAsync(cancellationToken);
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
}
