using System.Diagnostics;
using System.Globalization;
using VProtect.Core.Backup;
using VProtect.Core.Backup.Cbt;
using VProtect.Core.Repository;
using VProtect.Core.Restore;
using VProtect.Core.Restore.Cbt;
using VProtect.Core.Xapi;

namespace VProtect.Benchmarks;

/// <summary>
/// cbt-strategy: the CBT strategy end to end against the simulator, run as its own process (the benchmark process holds
/// only the engine). One VM, one disk of 8 GiB (1 GiB with --quick) holding 50 % data (the first half of every 256 MiB).
/// (1) Full backups through BackupEngine as Start-VMBackup runs them (snapshot, VM metadata, data, XXH128, zstd, fsync,
///     atomic commit), over both paths the engine offers (the HTTP VHD export and NBD), against nbdcopy reading the
///     same kind of snapshot VDI from the simulator's xapi-nbd to a file (--flush), timed before and after ours.
/// (2) An incremental after 1 % of the disk changed (1 MiB guest writes spread evenly, through the control API).
/// (3) Nine more such incrementals, then a full of the same data; the restore of the full + 10 incrementals (merged
///     chain) against the restore of that one full, alternating, every restored disk's SHA-256 checked.
/// (4) Peak working set and managed heap of this process during each phase (<see cref="CbtMemoryProbe"/>).
/// Plain HTTP and insecure_nbd (no TLS) on both sides. Wall-clock seconds, warm page cache, `sync` before each timing;
/// every path runs once untimed on a small second VM first (warm JIT in both .NET processes).
/// </summary>
public sealed class CbtStrategyBenchmark : IBenchmark
{
    private const long MiB = 1024 * 1024;
    private const int Incrementals = 10;
    public string Name => "cbt-strategy";

    public async Task RunAsync(BenchmarkContext context, TextWriter report, CancellationToken ct)
    {
        long size = context.Quick ? 1024 * MiB : 8192 * MiB;
        Directory.CreateDirectory(context.WorkDirectory);
        string scenario = Path.Combine(context.WorkDirectory, "cbt-scenario.json");
        string repoPath = Path.Combine(context.WorkDirectory, "cbt-repo");
        string nbdcopyOut = Path.Combine(context.WorkDirectory, "nbdcopy.raw");
        if (Directory.Exists(repoPath)) Directory.Delete(repoPath, recursive: true);
        CbtBenchmarkScenario.Write(scenario, size);
        string load = CbtBenchmarkScenario.LoadAverage();
        Console.Error.WriteLine($"  starting the simulator ({size / MiB} MiB disk, 50 % filled); load average {load}");
        await using var sim = await CbtSimulatorProcess.StartAsync(scenario, ct);
        await using var session = await XapiSession.LoginAsync(sim.Url, sim.User, sim.Password, null, ct);
        try
        {
            var repo = BackupRepository.Open(repoPath, create: true);
            string vmRef = (await session.GetByNameLabelAsync("VM", "bench", ct)).Single();
            string vdiUuid = (await session.GetVmDisksAsync(vmRef, ct)).Single().Vdi.Uuid;
            string network = (await session.GetByNameLabelAsync("network", VProtect.Simulator.Scenario.DefaultScenario.ManagementNetwork, ct)).Single();
            await session.CallAsync("network.add_purpose", [network, "insecure_nbd"], ct);

            var httpEngine = new BackupEngine(new CbtStrategy { FullsOverNbd = false });
            var nbdEngine = new BackupEngine(new CbtStrategy { FullsOverNbd = true });
            var defaultEngine = new BackupEngine(new CbtStrategy()); // what Start-VMBackup constructs
            var fullOptions = new BackupOptions { Strategy = BackupStrategy.Cbt, Type = BackupType.Full };
            var incOptions = new BackupOptions { Strategy = BackupStrategy.Cbt, Type = BackupType.Incremental };

            var warmClock = Stopwatch.StartNew();
            await WarmUpAsync(sim, session, repo, nbdEngine, httpEngine, uriOf: UriOf, ct);
            Console.Error.WriteLine($"  warm-up: {warmClock.Elapsed.TotalSeconds:F1} s");

            // nbdcopy: a snapshot of the VM like ours, its VDI read from xapi-nbd (get_nbd_info) into a file.
            string snapRef = await session.SnapshotVmAsync(vmRef, "nbdcopy baseline", null, null, ct);
            var snapVdi = (await session.GetVmDisksAsync(snapRef, ct)).Single().Vdi;
            string uri = await UriOf(session, snapVdi.OpaqueRef, ct);

            Console.Error.WriteLine("  nbdcopy (before)");
            double nbdcopyBefore = await NbdcopyAsync(uri, nbdcopyOut, ct);
            long nbdcopyAllocated = AllocatedBytes(nbdcopyOut);
            File.Delete(nbdcopyOut);

            // The default path goes last so that its full is the base of the incrementals below.
            bool nbdDefault = new CbtStrategy().FullsOverNbd;
            Timed<BackupResult> fullHttp, fullNbd;
            if (nbdDefault)
            {
                Console.Error.WriteLine("  full over HTTP (VHD export)");
                fullHttp = await BackupAsync(httpEngine, session, repo, vmRef, fullOptions, ct);
                Console.Error.WriteLine("  full over NBD (default)");
                fullNbd = await BackupAsync(nbdEngine, session, repo, vmRef, fullOptions, ct);
            }
            else
            {
                Console.Error.WriteLine("  full over NBD");
                fullNbd = await BackupAsync(nbdEngine, session, repo, vmRef, fullOptions, ct);
                Console.Error.WriteLine("  full over HTTP (VHD export, default)");
                fullHttp = await BackupAsync(httpEngine, session, repo, vmRef, fullOptions, ct);
            }

            Console.Error.WriteLine("  nbdcopy (after)");
            double nbdcopyAfter = await NbdcopyAsync(uri, nbdcopyOut, ct);
            File.Delete(nbdcopyOut);
            await SnapshotService.DestroyAsync(session, snapRef, ct);
            double nbdcopy = Math.Min(nbdcopyBefore, nbdcopyAfter);
            Check(fullHttp, "http-vhd", BackupType.Full);
            Check(fullNbd, "nbd", BackupType.Full);
            var defaultTransport = nbdDefault ? "NBD" : "HTTP VHD export";
            var fullDefault = nbdDefault ? fullNbd : fullHttp;

            // 1 % of the disk changes between backups: 1 MiB writes spread evenly, shifted each round.
            long writes = Math.Max(1, size / 100 / MiB), stride = size / writes / MiB * MiB;
            async Task GuestWritesAsync(int round)
            {
                long shift = round * (stride / (Incrementals + 2)) / MiB * MiB;
                for (long i = 0; i < writes; i++)
                    await sim.WriteAsync(vdiUuid, i * stride + shift, MiB, 1000 * round + i, ct);
            }

            Console.Error.WriteLine("  incremental 1 (1 % changed)");
            await GuestWritesAsync(1);
            var inc1 = await BackupAsync(defaultEngine, session, repo, vmRef, incOptions, ct);
            Check(inc1, "nbd", BackupType.Incremental);
            var incSeconds = new List<double> { inc1.Seconds };
            BackupManifest last = inc1.Result.Backup;
            for (int r = 2; r <= Incrementals; r++)
            {
                Console.Error.WriteLine($"  incremental {r}");
                await GuestWritesAsync(r);
                var inc = await BackupAsync(defaultEngine, session, repo, vmRef, incOptions, ct);
                Check(inc, "nbd", BackupType.Incremental);
                incSeconds.Add(inc.Seconds);
                last = inc.Result.Backup;
            }
            Console.Error.WriteLine("  full of the same data");
            var fullSame = await BackupAsync(defaultEngine, session, repo, vmRef, fullOptions, ct);
            var chainPoint = last;
            if (repo.GetChain(chainPoint).Count != Incrementals + 1) throw new InvalidOperationException($"The chain of {chainPoint.Id} has {repo.GetChain(chainPoint).Count} backups, not {Incrementals + 1}.");
            string expected = await sim.Sha256Async(fullSame.Result.Backup.Disks[0].Properties[CbtStrategy.SnapshotVdiProperty], ct);

            // Restores: one full vs full + 10 incrementals, alternating; the first of each is hash-checked.
            var restoreEngine = new RestoreEngine(new CbtRestore());
            int rounds = 2;
            var restoreFull = new List<Timed<RestoreResult>>();
            var restoreChain = new List<Timed<RestoreResult>>();
            for (int i = 0; i < rounds; i++)
            {
                Console.Error.WriteLine($"  restore of the full (round {i + 1})");
                restoreFull.Add(await RestoreAsync(restoreEngine, session, repo, fullSame.Result.Backup, i == 0 ? sim : null, expected, ct));
                Console.Error.WriteLine($"  restore of full + {Incrementals} incrementals (round {i + 1})");
                restoreChain.Add(await RestoreAsync(restoreEngine, session, repo, chainPoint, i == 0 ? sim : null, expected, ct));
            }
            double restoreFullBest = restoreFull.Min(r => r.Seconds), restoreChainBest = restoreChain.Min(r => r.Seconds);
            long simPeak = sim.PeakWorkingSet();
            string loadAfter = CbtBenchmarkScenario.LoadAverage();

            var ci = CultureInfo.InvariantCulture;
            string F(double v, string fmt = "F2") => v.ToString(fmt, ci);
            string Rate(long bytes, double s) => F(bytes / MiB / s, "F0");
            report.WriteLine($"## CBT strategy against the simulator ({size / MiB} MiB disk, 50 % data{(context.Quick ? ", --quick" : "")})");
            report.WriteLine();
            report.WriteLine($"{Environment.ProcessorCount} cores; load average before {load}, after {loadAfter} (shared machine: figures are noisy). " +
                             $"Simulator in its own process (peak working set {simPeak / MiB} MiB); plain HTTP and insecure_nbd; sync before each timing; every path warmed up on a 256 MiB VM (3 fulls per path, 9 incrementals, a restore). " +
                             $"Default full transport: {defaultTransport}.");
            report.WriteLine();
            report.WriteLine("| Step | Seconds | MiB/s of disk | Data read | Stored | Peak WS / managed | Steps (s) |");
            report.WriteLine("|---|---:|---:|---:|---:|---:|---|");
            report.WriteLine($"| nbdcopy of the snapshot VDI from xapi-nbd to a file, --flush (faster of before {F(nbdcopyBefore)} s / after {F(nbdcopyAfter)} s) | {F(nbdcopy)} | {Rate(size, nbdcopy)} | {size / MiB} MiB | {nbdcopyAllocated / MiB} MiB allocated | – | – |");
            var fullRows = new[] { Row("Full, NBD (`FullsOverNbd = true`)", fullNbd, size), Row("Full, HTTP VHD export (`FullsOverNbd = false`)", fullHttp, size) };
            foreach (var row in nbdDefault ? fullRows.Reverse() : fullRows) report.WriteLine(row);
            report.WriteLine(Row($"Incremental 1, 1 % changed ({writes} x 1 MiB writes)", inc1, size));
            report.WriteLine($"| Incrementals 2–{Incrementals} (each 1 % more) | {string.Join(", ", incSeconds.Skip(1).Select(s => F(s)))} | | | | | |");
            report.WriteLine(Row("Full of the same data as incremental 10", fullSame, size));
            foreach (var (label, list) in new[] { ("Restore of that full", restoreFull), ($"Restore of full + {Incrementals} incrementals", restoreChain) })
                for (int i = 0; i < list.Count; i++)
                    report.WriteLine($"| {label}, round {i + 1}{(i == 0 ? ", SHA-256 checked" : "")} | {F(list[i].Seconds)} | {Rate(size, list[i].Seconds)} | {list[i].Result.Disks.Sum(d => d.BytesWritten) / MiB} MiB sent | – | {list[i].PeakWorkingSet / MiB} / {list[i].PeakManaged / MiB} MiB | {list[i].Steps} |");
            report.WriteLine();
            double fullsRatio(Timed<BackupResult> f) => nbdcopy / f.Seconds;
            string faster = fullHttp.Seconds <= fullNbd.Seconds ? "HTTP VHD export" : "NBD";
            report.WriteLine("| Target | Figure | Met? |");
            report.WriteLine("|---|---|---|");
            report.WriteLine($"| Full (default, {defaultTransport}) vs nbdcopy >= 0.8x | **{F(fullsRatio(fullDefault))}x** (HTTP {F(fullsRatio(fullHttp))}x, NBD {F(fullsRatio(fullNbd))}x; faster path: {faster}) | {(fullsRatio(fullDefault) >= 0.8 ? "yes" : "no")} |");
            double incPct = 100 * inc1.Seconds / fullDefault.Seconds;
            report.WriteLine($"| Incremental (1 %) <= 5 % of the full | **{F(incPct, "F1")} %** ({F(inc1.Seconds)} s / {F(fullDefault.Seconds)} s) | {(incPct <= 5 ? "yes" : "no")} |");
            double restoreRatio = restoreChainBest / restoreFullBest;
            report.WriteLine($"| Restore full + {Incrementals} incrementals <= 1.3x one full (best of {rounds}) | **{F(restoreRatio)}x** ({F(restoreChainBest)} s / {F(restoreFullBest)} s) | {(restoreRatio <= 1.3 ? "yes" : "no")} |");
            long peak = new[] { fullHttp.PeakWorkingSet, fullNbd.PeakWorkingSet, inc1.PeakWorkingSet, fullSame.PeakWorkingSet }
                .Concat(restoreFull.Select(r => r.PeakWorkingSet)).Concat(restoreChain.Select(r => r.PeakWorkingSet)).Max();
            report.WriteLine($"| Peak working set per VM < 512 MiB | **{peak / MiB} MiB** (whole process, runtime included; idle {fullHttp.BaselineWorkingSet / MiB} MiB) | {(peak < 512 * MiB ? "yes" : "no")} |");
            report.WriteLine();
        }
        finally
        {
            try { if (Directory.Exists(repoPath)) Directory.Delete(repoPath, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            File.Delete(nbdcopyOut);
            File.Delete(scenario);
        }
    }

    /// <summary>nbd:// URI of a VDI on the master's xapi-nbd, the export name percent-encoded into the path.</summary>
    private static async Task<string> UriOf(XapiSession session, string vdiRef, CancellationToken ct)
    {
        var endpoint = (await NbdEndpoint.GetAsync(session, vdiRef, ct)).First(e => e.Address == "127.0.0.1");
        return $"nbd://{endpoint.Address}:{endpoint.Port}/" + string.Join("/", endpoint.ExportName.Split('/').Select(Uri.EscapeDataString));
    }

    /// <summary>Every timed path on the small "warm" VM, untimed: nbdcopy once, 3 rounds of NBD full, HTTP full and 3 incrementals, one restore.</summary>
    private static async Task WarmUpAsync(CbtSimulatorProcess sim, XapiSession session, BackupRepository repo, BackupEngine nbdEngine, BackupEngine httpEngine,
        Func<XapiSession, string, CancellationToken, Task<string>> uriOf, CancellationToken ct)
    {
        Console.Error.WriteLine("  warm-up on a 256 MiB VM (untimed)");
        string vmRef = (await session.GetByNameLabelAsync("VM", "warm", ct)).Single();
        string vdiUuid = (await session.GetVmDisksAsync(vmRef, ct)).Single().Vdi.Uuid;
        string snapRef = await session.SnapshotVmAsync(vmRef, "warm-up", null, null, ct);
        string file = Path.Combine(Path.GetTempPath(), "vprotect-bench-warm-" + Guid.NewGuid().ToString("n") + ".raw");
        try { await NbdcopyAsync(await uriOf(session, (await session.GetVmDisksAsync(snapRef, ct)).Single().Vdi.OpaqueRef, ct), file, ct); }
        finally { File.Delete(file); }
        await SnapshotService.DestroyAsync(session, snapRef, ct);
        var full = new BackupOptions { Strategy = BackupStrategy.Cbt, Type = BackupType.Full };
        // Several rounds: .NET optimises a method after about 30 calls (tiered compilation); one round leaves the
        // per-run code unoptimised and the JIT competing for the 2 cores during the first timed runs.
        BackupResult? inc = null;
        for (int round = 0; round < 3; round++)
        {
            await nbdEngine.RunAsync(session, repo, vmRef, full, NullBackupObserver.Instance, ct);
            await httpEngine.RunAsync(session, repo, vmRef, full, NullBackupObserver.Instance, ct);
            for (int k = 0; k < 3; k++)
            {
                for (int i = 0; i < 4; i++) await sim.WriteAsync(vdiUuid, i * 64 * MiB, MiB, 77 + i + 10 * (3 * round + k), ct);
                inc = await httpEngine.RunAsync(session, repo, vmRef, new BackupOptions { Strategy = BackupStrategy.Cbt, Type = BackupType.Incremental }, NullBackupObserver.Instance, ct);
            }
        }
        var restored = await new RestoreEngine(new CbtRestore()).RestoreAsync(session, repo, inc!.Backup, new RestoreOptions { Name = "warm restore" }, NullBackupObserver.Instance, ct);
        await session.CallAsync("VM.destroy", [await session.GetByUuidAsync("VM", restored.VmUuid!, ct)], ct);
        foreach (var d in restored.Disks) await session.CallAsync("VDI.destroy", [await session.GetByUuidAsync("VDI", d.VdiUuid, ct)], ct);
    }

    private static void Check(Timed<BackupResult> run, string transport, BackupType type)
    {
        var b = run.Result.Backup;
        if (b.Type != type) throw new InvalidOperationException($"Expected a {type} backup, got {b.Type}: {b.FullReason}");
        var t = b.Disks[0].Properties[CbtStrategy.TransportProperty];
        if (t != transport) throw new InvalidOperationException($"Expected transport {transport}, got {t}.");
    }

    private static string Row(string label, Timed<BackupResult> r, long size)
    {
        var ci = CultureInfo.InvariantCulture;
        var d = r.Result.Backup.Disks[0];
        return string.Format(ci, "| {0} | {1:F2} | {2:F0} | {3} MiB | {4} MiB | {5} / {6} MiB | {7} |", label, r.Seconds, size / MiB / r.Seconds,
            d.DataBytes / MiB, r.Result.Backup.StoredBytes / MiB, r.PeakWorkingSet / MiB, r.PeakManaged / MiB, r.Steps);
    }

    private sealed record Timed<T>(T Result, double Seconds, string Steps, long PeakWorkingSet, long PeakManaged, long BaselineWorkingSet);

    private static async Task<Timed<BackupResult>> BackupAsync(BackupEngine engine, XapiSession session, BackupRepository repo, string vmRef,
        BackupOptions options, CancellationToken ct)
    {
        CbtBenchmarkScenario.Sync();
        var clock = new StepClock();
        await using var probe = CbtMemoryProbe.Start();
        var result = await engine.RunAsync(session, repo, vmRef, options, clock, ct);
        double seconds = clock.Stop();
        await probe.StopAsync();
        Console.Error.WriteLine($"    {seconds:F2} s; {clock.Describe()}; peak {probe.PeakWorkingSet / MiB} MiB");
        return new Timed<BackupResult>(result, seconds, clock.Describe(), probe.PeakWorkingSet, probe.PeakManagedHeap, probe.BaselineWorkingSet);
    }

    private static async Task<Timed<RestoreResult>> RestoreAsync(RestoreEngine engine, XapiSession session, BackupRepository repo, BackupManifest point,
        CbtSimulatorProcess? hashWith, string expected, CancellationToken ct)
    {
        CbtBenchmarkScenario.Sync();
        var clock = new StepClock();
        RestoreResult result;
        double seconds;
        long peak, managed, baseline;
        await using (var probe = CbtMemoryProbe.Start())
        {
            result = await engine.RestoreAsync(session, repo, point, new RestoreOptions { Name = "bench restore " + point.Id }, clock, ct);
            seconds = clock.Stop();
            await probe.StopAsync();
            (peak, managed, baseline) = (probe.PeakWorkingSet, probe.PeakManagedHeap, probe.BaselineWorkingSet);
        }
        Console.Error.WriteLine($"    {seconds:F2} s; {clock.Describe()}; peak {peak / MiB} MiB");
        if (hashWith is not null)
        {
            string got = await hashWith.Sha256Async(result.Disks.Single().VdiUuid, ct);
            if (got != expected) throw new InvalidOperationException($"The restore of {point.Id} does not match the source: {got} != {expected}.");
        }
        // Remove the restored VM and its disk so the simulator's storage does not grow with every round.
        string vm = await session.GetByUuidAsync("VM", result.VmUuid!, ct);
        await session.CallAsync("VM.destroy", [vm], ct);
        foreach (var d in result.Disks)
            await session.CallAsync("VDI.destroy", [await session.GetByUuidAsync("VDI", d.VdiUuid, ct)], ct);
        return new Timed<RestoreResult>(result, seconds, clock.Describe(), peak, managed, baseline);
    }

    private static async Task<double> NbdcopyAsync(string uri, string destination, CancellationToken ct)
    {
        CbtBenchmarkScenario.Sync();
        File.Delete(destination);
        var psi = new ProcessStartInfo("nbdcopy") { UseShellExecute = false, RedirectStandardError = true };
        foreach (var a in new[] { uri, destination, "--flush" }) psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("nbdcopy is not installed: apt-get install libnbd-bin");
        string err = await p.StandardError.ReadToEndAsync(ct);
        await p.WaitForExitAsync(ct);
        sw.Stop();
        if (p.ExitCode != 0) throw new InvalidOperationException($"nbdcopy failed ({p.ExitCode}): {err}");
        Console.Error.WriteLine($"    {sw.Elapsed.TotalSeconds:F2} s");
        return sw.Elapsed.TotalSeconds;
    }

    /// <summary>Bytes the file really occupies (nbdcopy leaves zero runs as holes).</summary>
    private static long AllocatedBytes(string path)
    {
        using var p = Process.Start(new ProcessStartInfo("du", ["-B1", path]) { UseShellExecute = false, RedirectStandardOutput = true })!;
        string output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return long.TryParse(output.Split('\t')[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) ? n : -1;
    }

    /// <summary>Timestamps of each stage the engine reports (Planning, Snapshot, Reading, Committing, …), for the per-step profile.</summary>
    private sealed class StepClock : IBackupObserver
    {
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private readonly List<(string Stage, double At)> _stages = new() { ("Start", 0) };
        private double _end = double.NaN;

        /// <summary>Stops the clock: the seconds since construction.</summary>
        public double Stop() => _end = _clock.Elapsed.TotalSeconds;

        public void OnProgress(BackupProgress progress)
        {
            lock (_stages)
                if (_stages[^1].Stage != progress.Stage) _stages.Add((progress.Stage, _clock.Elapsed.TotalSeconds));
        }

        public void OnWarning(string message) => Console.Error.WriteLine("    warning: " + message);
        public void OnVerbose(string message) { if (Environment.GetEnvironmentVariable("VP_BENCH_VERBOSE") == "1") Console.Error.WriteLine("    verbose: " + message); }

        /// <summary>"Start 0.01, Planning 0.01, Snapshot 0.20, Reading 9.80, Committing 0.30": each stage's duration up to the next one (the last up to Stop).</summary>
        public string Describe()
        {
            lock (_stages)
            {
                double end = double.IsNaN(_end) ? _clock.Elapsed.TotalSeconds : _end;
                var parts = new List<string>();
                for (int i = 0; i < _stages.Count; i++)
                {
                    double until = i + 1 < _stages.Count ? _stages[i + 1].At : end;
                    parts.Add($"{_stages[i].Stage} {(until - _stages[i].At).ToString("F2", CultureInfo.InvariantCulture)}");
                }
                return string.Join(", ", parts);
            }
        }
    }
}
