using System.Diagnostics;

using VProtect.Simulator.Storage;

namespace VProtect.Benchmarks;

/// <summary>
/// The simulator's layered sparse VDI store (what every NBD/HTTP transfer benchmark reads from) against a plain
/// flat file with the same content: sequential 2 MiB writes, then sequential 2 MiB reads through a 3-layer chain.
/// Ratio = ours / flat file (time). The disk is half allocated, as the transfer benchmarks use it; ours serves holes
/// from memory while the flat file reads them through the file system, which is most of the read difference.
/// </summary>
public sealed class SimulatorStorageBenchmark : IBenchmark
{
    public string Name => "sim-vdi";

    public async Task RunAsync(BenchmarkContext context, TextWriter report, CancellationToken ct)
    {
        long size = context.Quick ? 256L << 20 : 2L << 30;
        const int piece = 2 << 20;
        if (Directory.Exists(context.WorkDirectory)) Directory.Delete(context.WorkDirectory, true);
        Directory.CreateDirectory(context.WorkDirectory);
        var buffer = new byte[piece];
        var flatPath = Path.Combine(context.WorkDirectory, "flat.img");
        using var storage = new VdiStorage(Path.Combine(context.WorkDirectory, "store"));
        storage.CreateVdi("v", size);
        var disk = storage.Open("v");

        // Writes: every other 2 MiB piece (half allocated), ours vs a flat file.
        var oursWrite = await MeasureAsync(async () =>
        {
            for (long off = 0; off < size; off += 2L * piece)
            {
                DeterministicData.Fill(buffer, 1, off);
                await disk.WriteAsync(off, buffer, ct);
            }
        });
        var flatWrite = await MeasureAsync(async () =>
        {
            // Same I/O primitive as the layers (positional RandomAccess), so the ratio is the layering's cost.
            using var f = File.OpenHandle(flatPath, FileMode.Create, FileAccess.ReadWrite);
            RandomAccess.SetLength(f, size);
            for (long off = 0; off < size; off += 2L * piece)
            {
                DeterministicData.Fill(buffer, 1, off);
                RandomAccess.Write(f, buffer, off);
            }
            await Task.CompletedTask;
        });
        // Two snapshots with a few writes between them: reads now walk three layers.
        storage.Branch("v", "s1", keepCbt: true);
        for (long off = piece; off < size; off += 8L * piece) { DeterministicData.Fill(buffer, 2, off); await disk.WriteAsync(off, buffer, ct); }
        storage.Branch("v", "s2", keepCbt: true);

        var oursRead = await MeasureAsync(async () =>
        {
            for (long off = 0; off < size; off += piece) await disk.ReadAsync(off, buffer, ct);
        });
        var flatRead = await MeasureAsync(async () =>
        {
            using var f = File.OpenHandle(flatPath, FileMode.Open, FileAccess.Read);
            for (long off = 0; off < size; off += piece) RandomAccess.Read(f, buffer, off);
            await Task.CompletedTask;
        });

        double Mibs(long bytes, TimeSpan t) => bytes / t.TotalSeconds / (1 << 20);
        report.WriteLine($"## sim-vdi: simulator VDI store vs flat file, {size >> 20} MiB disk, 2 MiB pieces");
        report.WriteLine();
        report.WriteLine("| step | ours (layered, sparse) | flat file | ratio (time) |");
        report.WriteLine("|---|---|---|---|");
        report.WriteLine($"| write half the disk | {oursWrite.Wall.TotalMilliseconds:0} ms, {Mibs(size / 2, oursWrite.Wall):0} MiB/s (CPU {oursWrite.Cpu.TotalMilliseconds:0} ms) | {flatWrite.Wall.TotalMilliseconds:0} ms, {Mibs(size / 2, flatWrite.Wall):0} MiB/s (CPU {flatWrite.Cpu.TotalMilliseconds:0} ms) | {oursWrite.Wall / flatWrite.Wall:0.00} |");
        report.WriteLine($"| read whole disk, 3-layer chain | {oursRead.Wall.TotalMilliseconds:0} ms, {Mibs(size, oursRead.Wall):0} MiB/s (CPU {oursRead.Cpu.TotalMilliseconds:0} ms) | {flatRead.Wall.TotalMilliseconds:0} ms, {Mibs(size, flatRead.Wall):0} MiB/s (CPU {flatRead.Cpu.TotalMilliseconds:0} ms) | {oursRead.Wall / flatRead.Wall:0.00} |");
        report.WriteLine();
        report.WriteLine($"Space: layers {DirSize(Path.Combine(context.WorkDirectory, "store")) >> 20} MiB for {size >> 21} MiB written; flat file {size >> 20} MiB logical.");
        report.WriteLine();
        Directory.Delete(context.WorkDirectory, true);
    }

    private static long DirSize(string dir) => Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories).Sum(f => new FileInfo(f).Length);

    private static async Task<(TimeSpan Wall, TimeSpan Cpu)> MeasureAsync(Func<Task> action)
    {
        var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        await action();
        return (sw.Elapsed, Process.GetCurrentProcess().TotalProcessorTime - cpu0);
    }
}
