using System.Diagnostics;
using VProtect.Core.Backup;
using VProtect.Core.Backup.Xva;
using VProtect.Core.Repository;
using VProtect.Core.Restore;
using VProtect.Core.Restore.Xva;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;
using VProtect.Simulator.Control;
using VProtect.Simulator.Http;
using VProtect.Simulator.Scenario;
using Xunit;

namespace VProtect.Simulator.Tests.XvaStrategy;

/// <summary>
/// An XVA-strategy incremental streams the VHD deltas of several disks at once (XvaStrategy.DiskConcurrency), each
/// still byte-exact; one at a time when asked; and the first damaged delta cancels the others and commits nothing.
/// The simulator's /export_raw_vdi is wrapped to observe how many requests are in flight.
/// </summary>
public sealed class XvaDiskConcurrencyTests : SimulatorRepositoryTestBase
{
    private string _vmRef = "";
    private HttpHandler _realExportRawVdi = null!;
    private readonly object _gate = new();
    private int _inFlight, _maxInFlight, _requests;

    protected override void ConfigureSimulator(XenSimulator sim)
    {
        _realExportRawVdi = sim.Routes.Find("GET", "/export_raw_vdi")!;
    }

    protected override async Task InitializeTestAsync()
    {
        _vmRef = (await Session.GetByNameLabelAsync("VM", DefaultScenario.WebVm)).Single();
    }

    private Task<BackupResult> BackupAsync(BackupType type, int diskConcurrency = 2) =>
        new BackupEngine(new VProtect.Core.Backup.Xva.XvaStrategy { DiskConcurrency = diskConcurrency })
            .RunAsync(Session, Repo, _vmRef, new BackupOptions { Strategy = BackupStrategy.Xva, Type = type }, NullBackupObserver.Instance, Timeout());

    /// <summary>Wraps /export_raw_vdi: counts requests in flight; <paramref name="before"/> runs first in each request.</summary>
    private void WrapExportRawVdi(Func<int, HttpExchange, CancellationToken, Task<bool>> before)
    {
        Sim.Routes.Add("GET", "/export_raw_vdi", async (x, ct) =>
        {
            int n = Interlocked.Increment(ref _requests);
            int now = Interlocked.Increment(ref _inFlight);
            lock (_gate) _maxInFlight = Math.Max(_maxInFlight, now);
            try
            {
                if (await before(n, x, ct)) await _realExportRawVdi(x, ct);
            }
            finally { Interlocked.Decrement(ref _inFlight); }
        });
    }

    private async Task<List<VdiRecord>> SourceDisksAsync()
    {
        var vm = await Session.GetRecordAsync<VmRecord>(_vmRef);
        var disks = new List<(string, VdiRecord)>();
        foreach (var vbdRef in vm.VBDs)
        {
            var vbd = await Session.GetRecordAsync<VbdRecord>(vbdRef);
            if (vbd.Type == "Disk") disks.Add((vbd.UserDevice, await Session.GetRecordAsync<VdiRecord>(vbd.VDI)));
        }
        return disks.OrderBy(d => d.Item1, StringComparer.Ordinal).Select(d => d.Item2).ToList();
    }

    private async Task<Dictionary<string, string>> DiskHashesAsync(string vmRef)
    {
        var result = new Dictionary<string, string>();
        var vm = await Session.GetRecordAsync<VmRecord>(vmRef);
        foreach (var vbdRef in vm.VBDs)
        {
            var vbd = await Session.GetRecordAsync<VbdRecord>(vbdRef);
            if (vbd.Type != "Disk") continue;
            var vdi = await Session.GetRecordAsync<VdiRecord>(vbd.VDI);
            result[vbd.UserDevice] = await ControlApi.HashAsync(Sim.OpenVdi(vdi.Uuid), Timeout());
        }
        return result;
    }

    private async Task ChangeBothDisksAsync(List<VdiRecord> disks)
    {
        await ControlApi.WriteAsync(Sim.OpenVdi(disks[0].Uuid), (3L << 20) + 4096, 3L << 20, 91, Timeout());
        await ControlApi.WriteAsync(Sim.OpenVdi(disks[1].Uuid), 600L << 20, 1L << 20, 92, Timeout());
    }

    [Fact]
    public async Task The_deltas_of_two_disks_stream_at_once_and_the_incremental_restores_both_disks_exactly()
    {
        var disks = await SourceDisksAsync();
        Assert.Equal(2, disks.Count);
        await BackupAsync(BackupType.Full);
        await ChangeBothDisksAsync(disks);
        var expected = await DiskHashesAsync(_vmRef);
        // Each request waits (up to 20 s) until the other disk's request has arrived too: a strategy that fetched the
        // deltas one after the other would see only one request in flight.
        var both = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        WrapExportRawVdi(async (_, _, ct) =>
        {
            if (Volatile.Read(ref _inFlight) >= 2) both.TrySetResult();
            try { await both.Task.WaitAsync(TimeSpan.FromSeconds(20), ct); } catch (TimeoutException) { }
            return true;
        });

        var inc = await BackupAsync(BackupType.Incremental);

        Assert.Equal(BackupType.Incremental, inc.Backup.Type);
        Assert.Equal(2, _maxInFlight);
        Assert.Equal(2, _requests);
        // The manifest lists the deltas in disk order, whichever finished first.
        Assert.Equal(disks.Select(d => d.Uuid), inc.Backup.Files.Where(f => f.Kind == "vhd").Select(f => f.DiskKey!));
        var restored = await new RestoreEngine(new XvaRestore()).RestoreAsync(Session, Repo, inc.Backup, new RestoreOptions { Name = "r-concurrent" },
            NullBackupObserver.Instance, Timeout());
        Assert.Equal(expected, await DiskHashesAsync(await Session.GetByUuidAsync("VM", restored.VmUuid!)));
    }

    [Fact]
    public async Task With_a_disk_concurrency_of_one_the_deltas_stream_one_after_the_other()
    {
        var disks = await SourceDisksAsync();
        await BackupAsync(BackupType.Full, diskConcurrency: 1);
        await ChangeBothDisksAsync(disks);
        // A pause in each request makes any overlap visible.
        WrapExportRawVdi(async (_, _, ct) => { await Task.Delay(300, ct); return true; });

        var inc = await BackupAsync(BackupType.Incremental, diskConcurrency: 1);

        Assert.Equal(BackupType.Incremental, inc.Backup.Type);
        Assert.Equal(2, _requests);
        Assert.Equal(1, _maxInFlight);
        Assert.Equal(2, inc.Backup.Files.Count(f => f.Kind == "vhd"));
    }

    [Fact]
    public void A_disk_concurrency_outside_1_to_16_is_refused()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new VProtect.Core.Backup.Xva.XvaStrategy { DiskConcurrency = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => new VProtect.Core.Backup.Xva.XvaStrategy { DiskConcurrency = 17 });
        Assert.Equal(2, new VProtect.Core.Backup.Xva.XvaStrategy().DiskConcurrency);
    }

    [Fact]
    public async Task A_damaged_delta_cancels_the_other_disk_commits_nothing_and_removes_the_snapshot()
    {
        var disks = await SourceDisksAsync();
        var full = await BackupAsync(BackupType.Full);
        await ChangeBothDisksAsync(disks);
        int vmsBefore = Sim.Core.Db.All("VM").Count;
        // The first request is held for a minute; the second answers 200 with a body that is not a VHD. The backup must
        // fail on the damaged one without waiting for the held one.
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        WrapExportRawVdi(async (n, x, ct) =>
        {
            if (n == 1)
            {
                try { await release.Task.WaitAsync(TimeSpan.FromMinutes(1), ct); } catch (TimeoutException) { }
                return false;
            }
            await x.WriteHeadAsync(200, "OK", [new("Content-Type", "application/vhd")], ct);
            await x.ResponseBody.WriteAsync(new byte[4096], ct);
            x.KeepAlive = false;
            return false;
        });
        var clock = Stopwatch.StartNew();
        try
        {
            var ex = await Assert.ThrowsAsync<XvaBackupException>(() => BackupAsync(BackupType.Incremental));
            Assert.Contains("VHD delta", ex.Message);
            Assert.True(clock.Elapsed < TimeSpan.FromSeconds(40), $"The failure took {clock.Elapsed}: the held transfer was not cancelled.");
        }
        finally { release.TrySetResult(); }

        var vmUuid = (await Session.GetRecordAsync<VmRecord>(_vmRef)).Uuid;
        Assert.Equal([full.Backup.Id], Repo.ListBackups(vmUuid).Select(b => b.Id));
        Assert.Equal(vmsBefore, Sim.Core.Db.All("VM").Count); // the incremental's snapshot was destroyed
        Assert.DoesNotContain(Directory.GetDirectories(RepoPath, "*", SearchOption.AllDirectories), d => Path.GetFileName(d).StartsWith('.'));
    }
}
