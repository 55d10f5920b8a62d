using System.Diagnostics;
using System.Globalization;
using VProtect.Core.Backup;
using VProtect.Core.Backup.Cbt;
using VProtect.Core.Repository;
using VProtect.Core.Xapi;

namespace VProtect.Benchmarks;

/// <summary>
/// cbt-full: only the full CBT backup against nbdcopy, several rounds, with the CPU seconds each process spent (ours,
/// the simulator's, nbdcopy's). It answers "where does the full's time go" faster than cbt-strategy (which also runs the
/// incrementals and restores). Same disk as cbt-strategy: 8 GiB (2 GiB with --quick), 50 % data, the first half of
/// every 256 MiB. Rounds alternate nbdcopy, the NBD full, the HTTP VHD full; the best of each counts.
/// VP_BENCH_ROUNDS sets the rounds (default 3).
/// </summary>
public sealed class CbtFullBenchmark : IBenchmark
{
    private const long MiB = 1024 * 1024;
    private const int WarmUpRounds = 3;
    public string Name => "cbt-full";

    public async Task RunAsync(BenchmarkContext context, TextWriter report, CancellationToken ct)
    {
        long size = context.Quick ? 2048 * MiB : 8192 * MiB;
        int rounds = int.TryParse(Environment.GetEnvironmentVariable("VP_BENCH_ROUNDS"), out var r) && r > 0 ? r : 3;
        Directory.CreateDirectory(context.WorkDirectory);
        string scenario = Path.Combine(context.WorkDirectory, "cbt-full-scenario.json");
        string repoPath = Path.Combine(context.WorkDirectory, "cbt-full-repo");
        string nbdcopyOut = Path.Combine(context.WorkDirectory, "nbdcopy.raw");
        if (Directory.Exists(repoPath)) Directory.Delete(repoPath, recursive: true);
        CbtBenchmarkScenario.Write(scenario, size);
        string load = CbtBenchmarkScenario.LoadAverage();
        await using var sim = await CbtSimulatorProcess.StartAsync(scenario, ct);
        await using var session = await XapiSession.LoginAsync(sim.Url, sim.User, sim.Password, null, ct);
        try
        {
            var repo = BackupRepository.Open(repoPath, create: true);
            string network = (await session.GetByNameLabelAsync("network", VProtect.Simulator.Scenario.DefaultScenario.ManagementNetwork, ct)).Single();
            await session.CallAsync("network.add_purpose", [network, "insecure_nbd"], ct);
            var engines = new (string Label, BackupEngine Engine, string Transport)[]
            {
                ("Full, NBD (`FullsOverNbd = true`)", new BackupEngine(new CbtStrategy { FullsOverNbd = true }), "nbd"),
                ("Full, HTTP VHD export (`FullsOverNbd = false`)", new BackupEngine(new CbtStrategy { FullsOverNbd = false }), "http-vhd"),
            };
            var full = new BackupOptions { Strategy = BackupStrategy.Cbt, Type = BackupType.Full };

            // Warm JIT in both processes on the small VM: .NET promotes a method to optimised code after about 30 calls
            // (tiered compilation), so each path runs several times; until then the JIT itself competes for the 2 cores.
            string warm = (await session.GetByNameLabelAsync("VM", "warm", ct)).Single();
            string warmVdi = (await session.GetVmDisksAsync(warm, ct)).Single().Vdi.Uuid;
            await NbdcopyOnceAsync(session, warm, nbdcopyOut, run => MeasureAsync(sim, run), ct);
            for (int w = 0; w < WarmUpRounds; w++)
            {
                foreach (var e in engines) await e.Engine.RunAsync(session, repo, warm, full, NullBackupObserver.Instance, ct);
                for (int k = 0; k < 3; k++)
                {
                    await sim.WriteAsync(warmVdi, k * 64 * MiB, MiB, 77 + w * 10 + k, ct);
                    await engines[0].Engine.RunAsync(session, repo, warm, new BackupOptions { Strategy = BackupStrategy.Cbt, Type = BackupType.Incremental }, NullBackupObserver.Instance, ct);
                }
            }

            string vm = (await session.GetByNameLabelAsync("VM", "bench", ct)).Single();
            var nbdcopyRuns = new List<Sample>();
            var runs = engines.Select(_ => new List<Sample>()).ToArray();
            for (int i = 0; i < rounds; i++)
            {
                Console.Error.WriteLine($"  round {i + 1}: nbdcopy");
                nbdcopyRuns.Add(await NbdcopyOnceAsync(session, vm, nbdcopyOut, run => MeasureAsync(sim, run), ct));
                Console.Error.WriteLine($"    {nbdcopyRuns[^1]}");
                for (int k = 0; k < engines.Length; k++)
                {
                    Console.Error.WriteLine($"  round {i + 1}: {engines[k].Label}");
                    var e = engines[k];
                    using var perf = i == 0 ? PerfRecorder.Start(k) : null;
                    runs[k].Add(await MeasureAsync(sim, async () =>
                    {
                        var result = await e.Engine.RunAsync(session, repo, vm, full, NullBackupObserver.Instance, ct);
                        string t = result.Backup.Disks[0].Properties[CbtStrategy.TransportProperty];
                        if (t != e.Transport) throw new InvalidOperationException($"Expected transport {e.Transport}, got {t}.");
                        return 0.0;
                    }));
                    Console.Error.WriteLine($"    {runs[k][^1]}");
                }
            }
            // Incrementals after 1 % of the disk changed (1 MiB guest writes spread evenly), over the default engine.
            var incRuns = new List<Sample>();
            string vdiUuid = (await session.GetVmDisksAsync(vm, ct)).Single().Vdi.Uuid;
            long writes = Math.Max(1, size / 100 / MiB), stride = size / writes / MiB * MiB;
            var defaultEngine = new BackupEngine(new CbtStrategy());
            await defaultEngine.RunAsync(session, repo, vm, full, NullBackupObserver.Instance, ct);
            for (int i = 0; i < rounds; i++)
            {
                for (long w = 0; w < writes; w++) await sim.WriteAsync(vdiUuid, w * stride + i * MiB, MiB, 500 + i * 1000 + w, ct);
                Console.Error.WriteLine($"  round {i + 1}: incremental, {writes} MiB changed");
                using var perf = i == rounds - 1 ? PerfRecorder.Start(9, sim.ProcessId) : null;
                incRuns.Add(await MeasureAsync(sim, async () =>
                {
                    // Started with the measured clock; VP_BENCH_VERBOSE=1 prints the run's timeline.
                    var observer = new StageTimer(Environment.GetEnvironmentVariable("VP_BENCH_VERBOSE") == "1" ? m => Console.Error.WriteLine("      " + m) : null);
                    var result = await defaultEngine.RunAsync(session, repo, vm, new BackupOptions { Strategy = BackupStrategy.Cbt, Type = BackupType.Incremental }, observer, ct);
                    if (result.Backup.Type != BackupType.Incremental) throw new InvalidOperationException("Expected an incremental: " + result.Backup.FullReason);
                    observer.Stop();
                    return 0.0;
                }));
                Console.Error.WriteLine($"    {incRuns[^1]}");
            }

            var ci = CultureInfo.InvariantCulture;
            string F(double v) => v.ToString("F2", ci);
            var bestCopy = nbdcopyRuns.MinBy(s => s.Wall)!;
            report.WriteLine($"## CBT full backup vs nbdcopy ({size / MiB} MiB disk, 50 % data, best of {rounds})");
            report.WriteLine();
            report.WriteLine($"{Environment.ProcessorCount} cores; load average before {load}, after {CbtBenchmarkScenario.LoadAverage()}. Simulator in its own process; insecure_nbd and plain HTTP; `sync` before each timing; JIT warmed on a 256 MiB VM ({WarmUpRounds} fulls per path and {3 * WarmUpRounds} incrementals). CPU = user + system seconds of each process during the run.");
            report.WriteLine();
            report.WriteLine("| Run | Wall s (all rounds) | Best wall s | vs nbdcopy | CPU s: client | CPU s: simulator |");
            report.WriteLine("|---|---|---:|---:|---:|---:|");
            report.WriteLine($"| nbdcopy of a snapshot VDI from xapi-nbd to a file, --flush | {string.Join(", ", nbdcopyRuns.Select(s => F(s.Wall)))} | {F(bestCopy.Wall)} | 1.00x | {F(bestCopy.ClientCpu)} (nbdcopy) | {F(bestCopy.SimulatorCpu)} |");
            for (int k = 0; k < engines.Length; k++)
            {
                var best = runs[k].MinBy(s => s.Wall)!;
                report.WriteLine($"| {engines[k].Label} | {string.Join(", ", runs[k].Select(s => F(s.Wall)))} | {F(best.Wall)} | {F(bestCopy.Wall / best.Wall)}x | {F(best.ClientCpu)} | {F(best.SimulatorCpu)} |");
            }
            var bestInc = incRuns.MinBy(s => s.Wall)!;
            var bestDefaultFull = runs[new CbtStrategy().FullsOverNbd ? 0 : 1].MinBy(s => s.Wall)!;
            report.WriteLine($"| Incremental, 1 % changed ({writes} x 1 MiB guest writes) | {string.Join(", ", incRuns.Select(s => F(s.Wall)))} | {F(bestInc.Wall)} | {(100 * bestInc.Wall / bestDefaultFull.Wall).ToString("F1", ci)} % of the default full | {F(bestInc.ClientCpu)} | {F(bestInc.SimulatorCpu)} |");
            report.WriteLine();
        }
        finally
        {
            try { if (Directory.Exists(repoPath)) Directory.Delete(repoPath, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            File.Delete(nbdcopyOut);
            File.Delete(scenario);
        }
    }

    private sealed record Sample(double Wall, double ClientCpu, double SimulatorCpu)
    {
        public override string ToString() => string.Create(CultureInfo.InvariantCulture, $"{Wall:F2} s wall, client CPU {ClientCpu:F2} s, simulator CPU {SimulatorCpu:F2} s");
    }

    /// <summary>Wall time and CPU seconds of this process (plus reaped children, i.e. nbdcopy) and of the simulator.</summary>
    private static async Task<Sample> MeasureAsync(CbtSimulatorProcess sim, Func<Task<double>> run)
    {
        CbtBenchmarkScenario.Sync();
        double self0 = SelfAndChildrenCpu(), sim0 = ProcessCpu(sim.ProcessId);
        var clock = Stopwatch.StartNew();
        await run();
        double wall = clock.Elapsed.TotalSeconds;
        return new Sample(wall, SelfAndChildrenCpu() - self0, ProcessCpu(sim.ProcessId) - sim0);
    }

    /// <summary>nbdcopy of a fresh snapshot's VDI; only the nbdcopy process is measured (snapshot taken and destroyed outside).</summary>
    private static async Task<Sample> NbdcopyOnceAsync(XapiSession session, string vm, string destination, Func<Func<Task<double>>, Task<Sample>> measure, CancellationToken ct)
    {
        string snap = await session.SnapshotVmAsync(vm, "nbdcopy baseline", null, null, ct);
        try
        {
            var vdi = (await session.GetVmDisksAsync(snap, ct)).Single().Vdi;
            var endpoint = (await NbdEndpoint.GetAsync(session, vdi.OpaqueRef, ct)).First(e => e.Address == "127.0.0.1");
            string uri = $"nbd://{endpoint.Address}:{endpoint.Port}/" + string.Join("/", endpoint.ExportName.Split('/').Select(Uri.EscapeDataString));
            File.Delete(destination);
            return await measure(async () =>
            {
                var psi = new ProcessStartInfo("nbdcopy") { UseShellExecute = false, RedirectStandardError = true };
                foreach (var a in new[] { uri, destination, "--flush" }) psi.ArgumentList.Add(a);
                using var p = Process.Start(psi) ?? throw new InvalidOperationException("nbdcopy is not installed: apt-get install libnbd-bin");
                string err = await p.StandardError.ReadToEndAsync(ct);
                await p.WaitForExitAsync(ct);
                if (p.ExitCode != 0) throw new InvalidOperationException($"nbdcopy failed ({p.ExitCode}): {err}");
                return 0.0;
            });
        }
        finally
        {
            File.Delete(destination);
            await SnapshotService.DestroyAsync(session, snap, ct);
        }
    }

    /// <summary>
    /// With VP_BENCH_PERF=DIR: `perf record -g` of this process (and the simulator) around the first round of each
    /// path, to DIR/full-K.perf.data. Run with DOTNET_PerfMapEnabled=1 so JIT frames resolve.
    /// </summary>
    private sealed class PerfRecorder : IDisposable
    {
        private readonly Process _perf;
        private PerfRecorder(Process perf) => _perf = perf;

        public static PerfRecorder? Start(int path, int? simulator = null)
        {
            string? dir = Environment.GetEnvironmentVariable("VP_BENCH_PERF");
            if (string.IsNullOrEmpty(dir)) return null;
            var psi = new ProcessStartInfo("perf") { UseShellExecute = false };
            string pids = Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + (simulator is int sp ? "," + sp.ToString(CultureInfo.InvariantCulture) : "");
            foreach (var a in new[] { "record", "-F", "999", "-g", "-p", pids, "-o", Path.Combine(dir, $"full-{path}.perf.data") })
                psi.ArgumentList.Add(a);
            var p = Process.Start(psi)!;
            Thread.Sleep(500);
            return new PerfRecorder(p);
        }

        public void Dispose()
        {
            Process.Start("kill", ["-INT", _perf.Id.ToString(CultureInfo.InvariantCulture)])!.WaitForExit();
            _perf.WaitForExit();
            _perf.Dispose();
        }
    }

    private static double TicksToSeconds(long ticks) => ticks / 100.0; // USER_HZ

    /// <summary>utime + stime + cutime + cstime of this process (/proc/self/stat): children count once reaped.</summary>
    private static double SelfAndChildrenCpu()
    {
        var f = StatFields("/proc/self/stat");
        return TicksToSeconds(long.Parse(f[13], CultureInfo.InvariantCulture) + long.Parse(f[14], CultureInfo.InvariantCulture)
                              + long.Parse(f[15], CultureInfo.InvariantCulture) + long.Parse(f[16], CultureInfo.InvariantCulture));
    }

    private static double ProcessCpu(int pid)
    {
        var f = StatFields($"/proc/{pid}/stat");
        return TicksToSeconds(long.Parse(f[13], CultureInfo.InvariantCulture) + long.Parse(f[14], CultureInfo.InvariantCulture));
    }

    /// <summary>Fields of a /proc stat line, numbered as in proc(5) minus one; the command name may hold spaces.</summary>
    private static string[] StatFields(string path)
    {
        string s = File.ReadAllText(path);
        int close = s.LastIndexOf(')');
        return [.. new[] { s[..s.IndexOf(' ')], s[(s.IndexOf('(') )..(close + 1)] }, .. s[(close + 2)..].Split(' ')];
    }

}
