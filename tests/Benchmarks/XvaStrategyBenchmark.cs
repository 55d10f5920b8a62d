using System.Diagnostics;
using System.Globalization;
using VProtect.Core.Backup;
using VProtect.Core.Backup.Xva;
using VProtect.Core.Repository;
using VProtect.Core.Xapi;
using VProtect.Simulator;
using VProtect.Simulator.Control;

namespace VProtect.Benchmarks;

/// <summary>
/// The XVA strategy against the simulator: a full backup of a VM with one 8 GiB disk holding 50 % data (the export
/// streamed into the repository with every chunk checksum verified, SHA-256 and fsync included) against curl
/// downloading the same snapshot's /export to a file in the same run; then an incremental after 1 % of the disk
/// changed, as a fraction of the full. Two write patterns, each against its own full (incrementals are cumulative):
/// (A, worst case) 81 writes of 1 MiB spread evenly at offsets not aligned to anything, so about half of them straddle
/// two 2 MiB VHD blocks; (B) 81 writes of 1 MiB spread evenly at 1 MiB-aligned offsets, each inside one VHD block.
/// Each run's time is broken down per step (<see cref="StageTimer"/>), and curl downloads the same VHD delta as a
/// peer for the transfer part. Wall-clock seconds, warm page cache on both sides.
/// </summary>
public sealed class XvaStrategyBenchmark : IBenchmark
{
    private const long MiB = 1024 * 1024;
    private const int Repeats = 3;
    public string Name => "xva-strategy";

    private sealed record Pattern(string Label, string Description, Func<long, long, long> Offset);

    public async Task RunAsync(BenchmarkContext context, TextWriter report, CancellationToken cancellationToken)
    {
        long size = context.Quick ? 1024 * MiB : 8192 * MiB;
        Directory.CreateDirectory(context.WorkDirectory);
        string scenario = Path.Combine(context.WorkDirectory, "xva-strategy-scenario.json");
        // 50 % data: the first half of every 256 MiB.
        var fills = new List<string>();
        for (long o = 0; o < size; o += 256 * MiB) fills.Add($"{{ \"offset\": {o}, \"length\": {128 * MiB}, \"seed\": {o / MiB + 1} }}");
        File.WriteAllText(scenario, $$"""
            { "base": "empty", "vms": [ { "name": "bench", "powerState": "Halted", "memoryBytes": 1073741824, "vcpus": 1,
              "disks": [ { "name": "bench disk", "size": {{size}}, "fill": [ {{string.Join(", ", fills)}} ] } ] },
              { "name": "warm-up", "powerState": "Halted", "memoryBytes": 1073741824, "vcpus": 1,
              "disks": [ { "name": "warm-up disk", "size": {{64 * MiB}}, "fill": [ { "offset": 0, "length": {{32 * MiB}}, "seed": 7 } ] } ] } ] }
            """);
        string repoPath = Path.Combine(context.WorkDirectory, "xva-strategy-repo");
        string curlOut = Path.Combine(context.WorkDirectory, "curl-export.out");
        long changed = size / 100, writes = changed / MiB, stride = size / writes;
        var patterns = new[]
        {
            new Pattern("A", "1 MiB writes spread evenly, unaligned (worst case: ~half straddle two 2 MiB VHD blocks)", (i, _) => i * stride),
            new Pattern("B", "1 MiB writes spread evenly, 1 MiB-aligned (each inside one 2 MiB VHD block)", (i, _) => i * stride / MiB * MiB),
        };
        await using var sim = await XenSimulator.StartAsync(new SimulatorOptions { Scenario = scenario, HttpsPort = null }, cancellationToken);
        await using var session = await XapiSession.LoginAsync(sim.Url, sim.User, sim.Password, null, cancellationToken);
        var ci = CultureInfo.InvariantCulture;
        try
        {
            var repo = BackupRepository.Open(repoPath, create: true);
            string vmRef = (await session.GetByNameLabelAsync("VM", "bench", cancellationToken)).Single();
            string vdiUuid = (await session.GetVmDisksAsync(vmRef, cancellationToken)).Single().Vdi.Uuid;
            var engine = new BackupEngine(new XvaStrategy());

            // Warm-up on a small VM: the first full and the first incremental of a process pay for JIT compilation of
            // their code paths (a fixed cost per process, not per byte); measured here once, then excluded below.
            var warm = new StringWriter();
            string warmVm = (await session.GetByNameLabelAsync("VM", "warm-up", cancellationToken)).Single();
            var warmDisk = sim.OpenVdi((await session.GetVmDisksAsync(warmVm, cancellationToken)).Single().Vdi.Uuid);
            var (_, coldFull) = await BackupAsync(engine, session, repo, warmVm, BackupType.Full, warm, "warm-up", cancellationToken);
            var warmIncs = new List<double>();
            for (int k = 0; k < 3; k++)
            {
                await ControlApi.WriteAsync(warmDisk, k * 5 * MiB, MiB, 100 + k, cancellationToken);
                warmIncs.Add((await BackupAsync(engine, session, repo, warmVm, BackupType.Incremental, warm, "warm-up", cancellationToken)).Seconds);
            }
            var (_, warmFull) = await BackupAsync(engine, session, repo, warmVm, BackupType.Full, warm, "warm-up", cancellationToken);

            // curl: the same kind of export (a snapshot of the VM), straight to a file; once before and once after the
            // first full, and the faster of the two is the baseline (the first run may pay for the scenario fill's writeback).
            string snapRef = await session.SnapshotVmAsync(vmRef, "curl baseline", null, null, cancellationToken);
            var snap = await session.GetRecordAsync<VProtect.Core.Xapi.Records.VmRecord>(snapRef, cancellationToken);
            string exportUrl = Url(sim, session, $"export?uuid={snap.Uuid}");
            double curlBefore = await TimeProcessAsync("curl", ["-sSf", "-o", curlOut, exportUrl], cancellationToken);
            long curlBytes = new FileInfo(curlOut).Length;
            File.Delete(curlOut);

            var rows = new List<Func<double, string>>();
            var fulls = new List<double>();
            var tables = new StringWriter();
            double curlAfter = 0;
            foreach (var p in patterns)
            {
                var (full, fullSeconds) = await BackupAsync(engine, session, repo, vmRef, BackupType.Full, tables, $"Full before pattern {p.Label}", cancellationToken);
                fulls.Add(fullSeconds);
                if (p == patterns[0])
                {
                    curlAfter = await TimeProcessAsync("curl", ["-sSf", "-o", curlOut, exportUrl], cancellationToken);
                    File.Delete(curlOut);
                    await session.CallAsync("VM.destroy", [snapRef], cancellationToken);
                }

                var disk = sim.OpenVdi(vdiUuid);
                for (long i = 0; i < writes; i++)
                    await ControlApi.WriteAsync(disk, p.Offset(i, stride), MiB, 9000 + i + (p == patterns[0] ? 0 : 1000), cancellationToken);

                // The incremental three times (each cumulative against the same full, so each carries the same delta; the
                // second and third also release the previous incremental's snapshot), each followed by curl fetching the
                // same differencing VHD to a file (the peer for the transfer alone). Medians are reported.
                var incs = new List<(double Seconds, string Table)>();
                var curls = new List<double>();
                long deltaBytes = 0;
                for (int r = 0; r < Repeats; r++)
                {
                    var runTable = new StringWriter();
                    var (inc, runSeconds) = await BackupAsync(engine, session, repo, vmRef, BackupType.Incremental, runTable, $"Incremental, pattern {p.Label} (run {r + 1})", cancellationToken);
                    if (inc.Type != BackupType.Incremental) throw new InvalidOperationException("The incremental fell back to a full: " + inc.FullReason);
                    incs.Add((runSeconds, runTable.ToString()));
                    string baseRef = await session.GetByUuidAsync("VDI", XvaKeys.ReadDisks(full).Single().Value.SnapshotVdiUuid, cancellationToken);
                    string incRef = await session.GetByUuidAsync("VDI", XvaKeys.ReadDisks(inc).Single().Value.SnapshotVdiUuid, cancellationToken);
                    curls.Add(await TimeProcessAsync("curl", ["-sSf", "-o", curlOut,
                        Url(sim, session, $"export_raw_vdi?vdi={Uri.EscapeDataString(incRef)}&format=vhd&base={Uri.EscapeDataString(baseRef)}")], cancellationToken));
                    long curlDeltaBytes = new FileInfo(curlOut).Length;
                    File.Delete(curlOut);
                    deltaBytes = inc.Files.Single(f => f.Kind == XvaStrategy.VhdFileKind).Length;
                    if (curlDeltaBytes != deltaBytes)
                        throw new InvalidOperationException($"curl got {curlDeltaBytes} bytes of VHD delta, the backup stored {deltaBytes}.");
                }
                var median = incs.OrderBy(x => x.Seconds).ElementAt(Repeats / 2);
                double incSeconds = median.Seconds;
                double curlDelta = curls.Order().ElementAt(Repeats / 2);
                tables.Write(median.Table);
                rows.Add(fastest => string.Format(ci, "| {0} | {1} | {2:F2} | {3:F2} ({4}) | {5:F1} % | **{10:F1} %** | {6:N0} ({7:F1} % of the full's) | {8:F2} ({9}) |",
                    p.Label, p.Description, fullSeconds, incSeconds, string.Join(", ", incs.Select(x => x.Seconds.ToString("F2", ci))),
                    100 * incSeconds / fullSeconds, deltaBytes, 100.0 * deltaBytes / full.Files.Single(f => f.Kind == XvaStrategy.XvaFileKind).Length,
                    curlDelta, string.Join(", ", curls.Select(x => x.ToString("F2", ci))), 100 * incSeconds / fastest));
            }
            double curlSeconds = Math.Min(curlBefore, curlAfter);

            report.WriteLine("## XVA strategy (full XVA + cumulative VHD incremental) against the simulator");
            report.WriteLine();
            report.WriteLine($"Disk {size / MiB} MiB, 50 % data; 1 % changed = {writes} writes of 1 MiB; {Environment.ProcessorCount} cores; quick={context.Quick}.");
            report.WriteLine();
            report.WriteLine(string.Format(ci, "curl GET /export to a file: {0:F2} s (faster of 2; before {1:F2} s, after {2:F2} s), {3} bytes, {4:F0} MiB/s of disk.",
                curlSeconds, curlBefore, curlAfter, curlBytes, size / MiB / curlSeconds));
            report.WriteLine();
            report.WriteLine("| Pattern | Writes | Full (s) | Incremental (s): median (runs) | vs its full | vs the faster full | VHD delta bytes | curl of the same delta (s): median (runs) |");
            report.WriteLine("|---|---|---:|---:|---:|---:|---:|---:|");
            foreach (var r in rows) report.WriteLine(r(fulls.Min()));
            report.WriteLine();
            report.WriteLine("Targets: full >= 0.9x curl's speed; incremental (1 % changed) <= 10 % of the full. The two fulls store the same amount of " +
                "data, so the ratio is also given against the faster of them (the conservative figure: a full slowed by the machine's load does not flatter it).");
            report.WriteLine();
            report.WriteLine(string.Format(ci, "Warm-up VM (64 MiB disk, excluded above): first full {0:F3} s, second full {1:F3} s; incrementals (1 MiB changed) {2} s. " +
                "The first of each kind in a process pays for JIT compilation.", coldFull, warmFull, string.Join(" / ", warmIncs.Select(x => x.ToString("F3", ci)))));
            report.WriteLine();
            report.Write(tables.ToString());
        }
        finally
        {
            try { Directory.Delete(repoPath, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            File.Delete(curlOut);
            File.Delete(scenario);
        }
    }

    private static string Url(XenSimulator sim, XapiSession session, string pathAndQuery)
        => new Uri(sim.Url, $"{pathAndQuery}&session_id={Uri.EscapeDataString(session.OpaqueRef)}").ToString();

    private static async Task<(BackupManifest Backup, double Seconds)> BackupAsync(BackupEngine engine, XapiSession session, BackupRepository repo,
        string vmRef, BackupType type, TextWriter tables, string title, CancellationToken ct)
    {
        Sync();
        var timer = new StageTimer();
        var sw = Stopwatch.StartNew();
        var result = await engine.RunAsync(session, repo, vmRef, new BackupOptions { Strategy = BackupStrategy.Xva, Type = type }, timer, ct);
        double seconds = sw.Elapsed.TotalSeconds;
        timer.Stop();
        timer.WriteTable(tables, $"{title}: {result.Backup.StoredBytes:N0} bytes stored");
        return (result.Backup, seconds);
    }

    private static void Sync()
    {
        using var p = Process.Start(new ProcessStartInfo("sync") { UseShellExecute = false });
        p?.WaitForExit();
    }

    private static async Task<double> TimeProcessAsync(string file, string[] args, CancellationToken ct)
    {
        Sync();
        var psi = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardError = true };
        foreach (var a in args) psi.ArgumentList.Add(a);
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"{file} is not installed.");
        string err = await p.StandardError.ReadToEndAsync(ct);
        await p.WaitForExitAsync(ct);
        sw.Stop();
        if (p.ExitCode != 0) throw new InvalidOperationException($"{file} failed ({p.ExitCode}): {err}");
        return sw.Elapsed.TotalSeconds;
    }
}
