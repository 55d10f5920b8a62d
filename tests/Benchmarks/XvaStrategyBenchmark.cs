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
/// changed (scattered 1 MiB writes), as a fraction of the full. Wall-clock seconds, warm page cache on both sides.
/// </summary>
public sealed class XvaStrategyBenchmark : IBenchmark
{
    private const long MiB = 1024 * 1024;
    public string Name => "xva-strategy";

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
              "disks": [ { "name": "bench disk", "size": {{size}}, "fill": [ {{string.Join(", ", fills)}} ] } ] } ] }
            """);
        string repoPath = Path.Combine(context.WorkDirectory, "xva-strategy-repo");
        string curlOut = Path.Combine(context.WorkDirectory, "curl-export.xva");
        await using var sim = await XenSimulator.StartAsync(new SimulatorOptions { Scenario = scenario, HttpsPort = null }, cancellationToken);
        await using var session = await XapiSession.LoginAsync(sim.Url, sim.User, sim.Password, null, cancellationToken);
        try
        {
            var repo = BackupRepository.Open(repoPath, create: true);
            string vmRef = (await session.GetByNameLabelAsync("VM", "bench", cancellationToken)).Single();
            var engine = new BackupEngine(new XvaStrategy());
            var options = new BackupOptions { Strategy = BackupStrategy.Xva, Type = BackupType.Full };

            // curl: the same kind of export (a snapshot of the VM), straight to a file; once before and once after our
            // full, and the faster of the two is the baseline (the first run may pay for the scenario fill's writeback).
            string snapRef = await session.SnapshotVmAsync(vmRef, "curl baseline", null, null, cancellationToken);
            var snap = await session.GetRecordAsync<VProtect.Core.Xapi.Records.VmRecord>(snapRef, cancellationToken);
            string url = new Uri(sim.Url, $"export?uuid={snap.Uuid}&session_id={Uri.EscapeDataString(session.OpaqueRef)}").ToString();
            double curlBefore = await TimeProcessAsync("curl", ["-sSf", "-o", curlOut, url], cancellationToken);
            long curlBytes = new FileInfo(curlOut).Length;
            File.Delete(curlOut);

            Sync();
            var sw = Stopwatch.StartNew();
            var full = await engine.RunAsync(session, repo, vmRef, options, NullBackupObserver.Instance, cancellationToken);
            double fullSeconds = sw.Elapsed.TotalSeconds;
            long fullBytes = full.Backup.StoredBytes;

            double curlAfter = await TimeProcessAsync("curl", ["-sSf", "-o", curlOut, url], cancellationToken);
            File.Delete(curlOut);
            await session.CallAsync("VM.destroy", [snapRef], cancellationToken);
            double curlSeconds = Math.Min(curlBefore, curlAfter);

            // 1 % of the disk changes: 1 MiB writes spread evenly.
            string vdiUuid = (await session.GetVmDisksAsync(vmRef, cancellationToken)).Single().Vdi.Uuid;
            long changed = size / 100, writes = changed / MiB, stride = size / writes;
            var disk = sim.OpenVdi(vdiUuid);
            for (long i = 0; i < writes; i++)
                await ControlApi.WriteAsync(disk, i * stride, MiB, 9000 + i, cancellationToken);

            Sync();
            sw.Restart();
            var inc = await engine.RunAsync(session, repo, vmRef, new BackupOptions { Strategy = BackupStrategy.Xva, Type = BackupType.Incremental },
                NullBackupObserver.Instance, cancellationToken);
            double incSeconds = sw.Elapsed.TotalSeconds;
            if (inc.Backup.Type != BackupType.Incremental) throw new InvalidOperationException("The incremental fell back to a full: " + inc.Backup.FullReason);

            var ci = CultureInfo.InvariantCulture;
            report.WriteLine("## XVA strategy (full XVA + cumulative VHD incremental) against the simulator");
            report.WriteLine();
            report.WriteLine($"Disk {size / MiB} MiB, 50 % data; {Environment.ProcessorCount} cores; quick={context.Quick}.");
            report.WriteLine();
            report.WriteLine("| Step | Seconds | Bytes | MiB/s of disk |");
            report.WriteLine("|---|---:|---:|---:|");
            report.WriteLine(string.Format(ci, "| curl GET /export to a file (faster of 2; before {3:F2} s, after {4:F2} s) | {0:F2} | {1} | {2:F0} |", curlSeconds, curlBytes, size / MiB / curlSeconds, curlBefore, curlAfter));
            report.WriteLine(string.Format(ci, "| Full XVA backup (snapshot, export, chunk verify, SHA-256, commit) | {0:F2} | {1} | {2:F0} |", fullSeconds, fullBytes, size / MiB / fullSeconds));
            report.WriteLine(string.Format(ci, "| Incremental, 1 % changed ({0} MiB), VHD delta | {1:F2} | {2} | {3:F0} |", changed / MiB, incSeconds, inc.Backup.StoredBytes, size / MiB / incSeconds));
            report.WriteLine();
            report.WriteLine(string.Format(ci, "- Full backup speed vs curl: **{0:F2}x** (target >= 0.9x)", curlSeconds / fullSeconds));
            report.WriteLine(string.Format(ci, "- Incremental cost vs full: **{0:F1} %** (target <= 10 %)", 100 * incSeconds / fullSeconds));
            report.WriteLine();
        }
        finally
        {
            try { Directory.Delete(repoPath, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            File.Delete(curlOut);
            File.Delete(scenario);
        }
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
