using VProtect.Core.Backup;
using VProtect.Core.Backup.Cbt;
using VProtect.Core.Repository;
using VProtect.Core.Restore;
using VProtect.Core.Restore.Cbt;
using VProtect.Core.Restore.Xva;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;
using VProtect.Simulator.Control;
using VProtect.Simulator.Scenario;
using VProtect.Simulator.Tests.Cbt;
using Xunit;

namespace VProtect.Simulator.Tests.Backup;

/// <summary>
/// "Disk resized since the last backup" for both strategies, with the disk resized through XAPI (VDI.resize on the
/// halted db-01): the incremental becomes a full that names the resize (NoFallback fails with it), the restore has the
/// new size and the source's content, and a resize the plan could not see (done by the pre-snapshot script, between the
/// plan and the snapshot) is caught from the snapshot itself.
/// </summary>
public sealed class ResizeFallbackTests : SimulatorRepositoryTestBase
{
    private string _vmRef = "";
    private Dictionary<string, string> _disks = null!; // userdevice -> VDI uuid
    private readonly BackupEngine _engine = new(new CbtStrategy(), new VProtect.Core.Backup.Xva.XvaStrategy());

    protected override void ConfigureSimulator(XenSimulator sim)
    {
        Tests.XvaStrategy.TestDataPlane.InstallIfMissing(sim);
    }

    protected override async Task InitializeTestAsync()
    {
        _vmRef = (await Session.GetByNameLabelAsync("VM", "db-01")).Single();
        _disks = await CbtTestKit.DisksAsync(Session, _vmRef);
        await AddNbdPurposeAsync();
    }

    private Task<BackupResult> BackupAsync(BackupStrategy strategy, BackupType type, RecordingObserver? observer = null, bool noFallback = false,
        Func<SnapshotScriptContext, CancellationToken, Task>? preSnapshot = null) =>
        _engine.RunAsync(Session, Repo, _vmRef, new BackupOptions { Strategy = strategy, Type = type, NoFallback = noFallback, PreSnapshot = preSnapshot },
            observer ?? new RecordingObserver(), Timeout());

    /// <summary>VDI.resize through XAPI, as an administrator would; returns the size the host settled on.</summary>
    private async Task<long> ResizeAsync(string userdevice, long grow)
    {
        var vdiRef = await Session.GetByUuidAsync("VDI", _disks[userdevice]);
        long size = (await Session.GetRecordAsync<VdiRecord>(vdiRef)).VirtualSize;
        await Session.CallAsyncTaskAsync("VDI.resize", new object?[] { vdiRef, size + grow }, null, Timeout());
        return (await Session.GetRecordAsync<VdiRecord>(vdiRef)).VirtualSize;
    }

    private Task GuestWriteAsync(string userdevice, long offset, long length, long seed)
        => ControlApi.WriteAsync(Sim.OpenVdi(_disks[userdevice]), offset, length, seed, Timeout());

    private async Task<Dictionary<string, (long Size, string Hash)>> SourceDisksNowAsync()
    {
        var result = new Dictionary<string, (long, string)>();
        foreach (var (device, uuid) in _disks)
        {
            var disk = Sim.OpenVdi(uuid);
            result[device] = (disk.Length, await ControlApi.HashAsync(disk, Timeout()));
        }
        return result;
    }

    private async Task<Dictionary<string, (long Size, string Hash)>> VmDisksAsync(string vmRef)
    {
        var result = new Dictionary<string, (long, string)>();
        foreach (var (device, uuid) in await CbtTestKit.DisksAsync(Session, vmRef))
        {
            var disk = Sim.OpenVdi(uuid);
            result[device] = (disk.Length, await ControlApi.HashAsync(disk, Timeout()));
        }
        return result;
    }

    [Fact]
    public async Task Cbt_an_incremental_after_a_resize_is_a_full_naming_it_which_restores_the_new_size_and_the_chain_goes_on()
    {
        var full = await BackupAsync(BackupStrategy.Cbt, BackupType.Full);
        long before = full.Backup.Disks.Single(d => d.Key == _disks["1"]).VirtualSize;
        long after = await ResizeAsync("1", 64L << 20);
        Assert.Equal(before + (64L << 20), after);
        await GuestWriteAsync("1", before + (1L << 20), 2L << 20, 4101); // into the new area

        var ex = await Assert.ThrowsAsync<IncrementalNotPossibleException>(() => BackupAsync(BackupStrategy.Cbt, BackupType.Incremental, noFallback: true));
        Assert.Contains("was resized", ex.Reason);
        Assert.Contains(_disks["1"], ex.Reason);
        Assert.Single(Repo.ListBackups(full.Backup.VmUuid)); // nothing committed by the refused run

        var observer = new RecordingObserver();
        var fallback = await BackupAsync(BackupStrategy.Cbt, BackupType.Incremental, observer);
        Assert.Equal(BackupType.Full, fallback.Backup.Type);
        Assert.Null(fallback.Backup.BaseId);
        Assert.Contains($"({before} -> {after} bytes)", fallback.Backup.FullReason);
        Assert.Contains(observer.Warnings, w => w.Contains("was resized"));
        Assert.Equal(after, fallback.Backup.Disks.Single(d => d.Key == _disks["1"]).VirtualSize);
        var atFallback = await SourceDisksNowAsync();

        var restored = await new RestoreEngine(new CbtRestore()).RestoreAsync(Session, Repo, fallback.Backup,
            new RestoreOptions { Name = "db-01 resized" }, new RecordingObserver(), Timeout());
        var restoredVm = await Session.GetByUuidAsync("VM", restored.VmUuid!);
        Assert.Equal(atFallback, await VmDisksAsync(restoredVm));

        // CBT survived the resize: the next incremental reads only what changed, the new area included.
        await GuestWriteAsync("1", after - (64L << 10), 64L << 10, 4102);
        var inc = await BackupAsync(BackupStrategy.Cbt, BackupType.Incremental, noFallback: true);
        Assert.Equal(BackupType.Incremental, inc.Backup.Type);
        Assert.Equal(fallback.Backup.Id, inc.Backup.BaseId);
        Assert.Equal(64L << 10, inc.Backup.Disks.Sum(d => d.DataBytes));
    }

    [Fact]
    public async Task Cbt_a_resize_between_the_plan_and_the_snapshot_is_found_on_the_snapshot()
    {
        await BackupAsync(BackupStrategy.Cbt, BackupType.Full);
        long after = 0;
        var r = await BackupAsync(BackupStrategy.Cbt, BackupType.Incremental,
            preSnapshot: async (_, _) => after = await ResizeAsync("2", 2L << 20));
        Assert.Equal(BackupType.Full, r.Backup.Type);
        Assert.Contains("was resized", r.Backup.FullReason);
        Assert.Equal(after, r.Backup.Disks.Single(d => d.Key == _disks["2"]).VirtualSize);
        Assert.Equal(2, Repo.ListBackups(r.Backup.VmUuid).Count(b => b.Type == BackupType.Full));
    }

    [Fact]
    public async Task Xva_an_incremental_after_a_resize_is_a_full_naming_it_which_restores_the_new_size()
    {
        var full = await BackupAsync(BackupStrategy.Xva, BackupType.Full);
        long after = await ResizeAsync("0", 32L << 20);
        await GuestWriteAsync("0", after - (4L << 20), 1L << 20, 4201);

        var ex = await Assert.ThrowsAsync<IncrementalNotPossibleException>(() => BackupAsync(BackupStrategy.Xva, BackupType.Incremental, noFallback: true));
        Assert.Contains("was resized", ex.Reason);

        var fallback = await BackupAsync(BackupStrategy.Xva, BackupType.Incremental);
        Assert.Equal(BackupType.Full, fallback.Backup.Type);
        Assert.Contains($"was resized from {after - (32L << 20)} to {after} bytes since the full backup {full.Backup.Id}", fallback.Backup.FullReason);
        var atFallback = await SourceDisksNowAsync();
        // The new full replaces the old one as the base: the old full's snapshot is released.
        await Assert.ThrowsAsync<XapiException>(() => Session.GetByUuidAsync("VM", full.Backup.SnapshotUuid!));

        var restored = await new RestoreEngine(new XvaRestore()).RestoreAsync(Session, Repo, fallback.Backup,
            new RestoreOptions { Name = "db-01 xva resized" }, new RecordingObserver(), Timeout());
        var restoredVm = await Session.GetByUuidAsync("VM", restored.VmUuid!);
        Assert.Equal(atFallback, await VmDisksAsync(restoredVm));
    }

    [Fact]
    public async Task Xva_a_resize_between_the_plan_and_the_snapshot_is_a_full_and_releases_the_old_base()
    {
        var full = await BackupAsync(BackupStrategy.Xva, BackupType.Full);
        var observer = new RecordingObserver();
        var r = await BackupAsync(BackupStrategy.Xva, BackupType.Incremental, observer,
            preSnapshot: async (_, _) => await ResizeAsync("1", 2L << 20));
        Assert.Equal(BackupType.Full, r.Backup.Type);
        Assert.Null(r.Backup.BaseId);
        Assert.Contains("was resized", r.Backup.FullReason);
        Assert.Single(r.Backup.Files, f => f.Kind == "xva");
        Assert.DoesNotContain(r.Backup.Files, f => f.Kind == "vhd");
        Assert.Contains(observer.Warnings, w => w.Contains("was resized"));
        await Assert.ThrowsAsync<XapiException>(() => Session.GetByUuidAsync("VM", full.Backup.SnapshotUuid!));
        // The next incremental is taken against the new full and needs no fallback.
        var inc = await BackupAsync(BackupStrategy.Xva, BackupType.Incremental, noFallback: true);
        Assert.Equal(r.Backup.Id, inc.Backup.BaseId);
    }
}
