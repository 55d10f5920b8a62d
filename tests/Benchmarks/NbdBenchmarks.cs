using System.Diagnostics;
using System.Net.Sockets;
using VProtect.Core.IO;
using VProtect.Core.Nbd;

namespace VProtect.Benchmarks;

/// <summary>
/// nbd-read: our client reading an nbdkit sparse-random export (50 % data) against nbdcopy (libnbd, defaults) and
/// against our client restricted to one request in flight on one connection (the naive client), at 0, 10 and 50 ms
/// added per read (nbdkit delay filter). Figures are ratios measured in the same run.
/// </summary>
public sealed class NbdBenchmarks : IBenchmark
{
    public string Name => "nbd-read";

    public async Task RunAsync(BenchmarkContext context, TextWriter report, CancellationToken ct)
    {
        Directory.CreateDirectory(context.WorkDirectory);
        long fullSize = context.Quick ? 512L << 20 : 4L << 30;
        long delayedSize = context.Quick ? 128L << 20 : 1L << 30;
        var defaults = Tuned(new NbdClientOptions(new UnixDomainSocketEndPoint("/unused")));
        report.WriteLine($"## nbd-read (nbdkit sparse-random, percent=50{(context.Quick ? ", --quick" : "")})");
        report.WriteLine();
        report.WriteLine($"Ours: {defaults.Connections} connections x {defaults.MaxRequestsInFlight} requests x {defaults.RequestSize >> 10} KiB, window {defaults.MaxBytesInFlight >> 20} MiB, base:allocation holes skipped. nbdcopy: its defaults (4 connections x 64 requests x 256 KiB). One-in-flight: ours with 1 connection x 1 request (one run). Ours and nbdcopy: best of {Rounds} alternating runs (shared 2-core machine).");
        report.WriteLine();
        report.WriteLine("| scenario | size | ours MB/s | nbdcopy MB/s | one-in-flight MB/s | ours / nbdcopy | ours / one-in-flight |");
        report.WriteLine("|---|---|---|---|---|---|---|");
        long allocatedBefore = GC.GetTotalAllocatedBytes(true);

        var scenarios = new[] { (0, fullSize), (10, delayedSize), (50, delayedSize) };
        if (Environment.GetEnvironmentVariable("VP_NBD_BENCH_ONLY_0MS") == "1") scenarios = scenarios[..1]; // tuning runs
        foreach (var (delay, size) in scenarios)
        {
            string[] plugin = delay == 0
                ? ["sparse-random", size.ToString(), "seed=1", "percent=50"]
                : ["--filter=delay", "sparse-random", size.ToString(), "seed=1", "percent=50", $"rdelay={delay}ms"];
            await using var nbdkit = await Nbdkit.StartAsync(context.WorkDirectory, plugin, ct);
            Console.Error.WriteLine($"  {delay} ms: nbdcopy and ours, alternating, best of {Rounds}");
            var (peer, ours) = await BestOfAsync(() => RunNbdcopyAsync(nbdkit.Uri, "null:", ct), () => ReadOursAsync(nbdkit, null, o => o, ct));
            double naive = double.NaN;
            if (delay > 0)
            {
                Console.Error.WriteLine($"  {delay} ms: one in flight");
                naive = await TimeAsync(() => ReadOursAsync(nbdkit, null, o => o with { Connections = 1, MaxRequestsInFlight = 1 }, ct));
            }
            Row(report, $"{delay} ms, null sink", size, ours, peer, naive);

            if (delay == 0)
            {
                string ourFile = Path.Combine(context.WorkDirectory, "ours.raw"), theirFile = Path.Combine(context.WorkDirectory, "nbdcopy.raw");
                try
                {
                    Console.Error.WriteLine($"  0 ms: to file, alternating, best of {Rounds}");
                    var (peerFile, oursFile) = await BestOfAsync(
                        async () => { File.Delete(theirFile); await RunNbdcopyAsync(nbdkit.Uri, theirFile, ct); },
                        async () => { File.Delete(ourFile); await ReadOursAsync(nbdkit, ourFile, o => o, ct); });
                    Row(report, "0 ms, file sink", size, oursFile, peerFile, double.NaN);
                }
                finally { File.Delete(ourFile); File.Delete(theirFile); }
            }
        }
        long allocated = GC.GetTotalAllocatedBytes(true) - allocatedBefore;
        using var self = Process.GetCurrentProcess();
        self.Refresh();
        report.WriteLine();
        report.WriteLine($"Peak working set of the benchmark process (our client, runtime included): {self.PeakWorkingSet64 >> 20} MiB (target < 256 MiB). Managed bytes allocated over all our runs: {allocated >> 20} MiB (buffers are pooled).");
        report.WriteLine();
    }

    private static void Row(TextWriter report, string scenario, long size, double ours, double peer, double naive)
    {
        static string Mb(long size, double seconds) => double.IsNaN(seconds) ? "-" : $"{size / seconds / 1e6:0}";
        static string Ratio(double a, double b) => double.IsNaN(a) || double.IsNaN(b) ? "-" : $"{b / a:0.00}x";
        report.WriteLine($"| {scenario} | {size >> 20} MiB | {Mb(size, ours)} | {Mb(size, peer)} | {Mb(size, naive)} | {Ratio(ours, peer)} | {Ratio(ours, naive)} |");
        Console.Error.WriteLine($"  {scenario}: ours {ours:0.00} s, nbdcopy {peer:0.00} s, one-in-flight {naive:0.00} s");
    }

    /// <summary>The machine is shared: each side runs <see cref="Rounds"/> times, alternating, and its best time counts.</summary>
    private const int Rounds = 3;

    private static async Task<(double Peer, double Ours)> BestOfAsync(Func<Task> peer, Func<Task> ours)
    {
        double bestPeer = double.MaxValue, bestOurs = double.MaxValue;
        for (int i = 0; i < Rounds; i++)
        {
            bestPeer = Math.Min(bestPeer, await TimeAsync(peer));
            bestOurs = Math.Min(bestOurs, await TimeAsync(ours));
        }
        return (bestPeer, bestOurs);
    }

    private static async Task<double> TimeAsync(Func<Task> run)
    {
        var sw = Stopwatch.StartNew();
        await run();
        return sw.Elapsed.TotalSeconds;
    }

    /// <summary>Reads the whole export in order; holes reported by base:allocation are not read (nbdcopy skips them too).</summary>
    private static async Task ReadOursAsync(Nbdkit nbdkit, string? file, Func<NbdClientOptions, NbdClientOptions> configure, CancellationToken ct)
    {
        var options = configure(Tuned(new NbdClientOptions(new UnixDomainSocketEndPoint(nbdkit.Socket)) { RequestTimeout = TimeSpan.FromMinutes(2) }));
        await using var client = await NbdClient.ConnectAsync(options, ct);
        if (file is null)
        {
            await client.ReadExtentsAsync([new Extent(0, client.Size)], static (_, _, _) => ValueTask.CompletedTask, skipZeroes: true, cancellationToken: ct);
            return;
        }
        using var handle = File.OpenHandle(file, FileMode.Create, FileAccess.Write, FileShare.None, FileOptions.Asynchronous, client.Size);
        await client.ReadExtentsAsync([new Extent(0, client.Size)], (o, d, c) => RandomAccess.WriteAsync(handle, d, o, c), skipZeroes: true, cancellationToken: ct);
        RandomAccess.FlushToDisk(handle);
    }

    /// <summary>Environment overrides for tuning runs (VP_NBD_REQUEST_KIB, VP_NBD_CONNECTIONS, VP_NBD_IN_FLIGHT); the report states what ran.</summary>
    private static NbdClientOptions Tuned(NbdClientOptions o)
    {
        static int? Env(string name) => int.TryParse(Environment.GetEnvironmentVariable(name), out var v) ? v : null;
        if (Env("VP_NBD_REQUEST_KIB") is { } kib) o = o with { RequestSize = kib * 1024 };
        if (Env("VP_NBD_CONNECTIONS") is { } c) o = o with { Connections = c };
        if (Env("VP_NBD_IN_FLIGHT") is { } f) o = o with { MaxRequestsInFlight = f };
        return o;
    }

    private static async Task RunNbdcopyAsync(string uri, string destination, CancellationToken ct)
    {
        var psi = new ProcessStartInfo("nbdcopy") { RedirectStandardError = true, UseShellExecute = false };
        psi.ArgumentList.Add(uri);
        psi.ArgumentList.Add(destination);
        if (destination != "null:") psi.ArgumentList.Add("--flush"); // ours flushes to disk too
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("nbdcopy is not installed: apt-get install libnbd-bin");
        string err = await p.StandardError.ReadToEndAsync(ct);
        await p.WaitForExitAsync(ct);
        if (p.ExitCode != 0) throw new InvalidOperationException($"nbdcopy failed: {err}");
    }

    /// <summary>nbdkit in its own session (setsid), ready once its pid file exists, killed on dispose.</summary>
    private sealed class Nbdkit : IAsyncDisposable
    {
        private readonly Process _process;
        private Nbdkit(Process p, string socket) { _process = p; Socket = socket; }
        public string Socket { get; }
        public string Uri => $"nbd+unix:///?socket={Socket}";

        public static async Task<Nbdkit> StartAsync(string dir, string[] args, CancellationToken ct)
        {
            string id = Guid.NewGuid().ToString("N")[..8];
            string socket = Path.Combine(dir, $"nbdkit-{id}.sock"), pid = Path.Combine(dir, $"nbdkit-{id}.pid");
            var psi = new ProcessStartInfo("setsid") { UseShellExecute = false, RedirectStandardInput = true };
            foreach (var a in new[] { "nbdkit", "-f", "-U", socket, "-P", pid }.Concat(args)) psi.ArgumentList.Add(a);
            var p = Process.Start(psi) ?? throw new InvalidOperationException("nbdkit is not installed: apt-get install nbdkit");
            var deadline = DateTime.UtcNow.AddSeconds(30);
            while (!(File.Exists(pid) && new FileInfo(pid).Length > 0))
            {
                if (p.HasExited || DateTime.UtcNow > deadline) throw new InvalidOperationException($"nbdkit {string.Join(' ', args)} did not start.");
                await Task.Delay(20, ct);
            }
            return new Nbdkit(p, socket);
        }

        public async ValueTask DisposeAsync()
        {
            try { _process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            await _process.WaitForExitAsync();
            _process.Dispose();
        }
    }
}
