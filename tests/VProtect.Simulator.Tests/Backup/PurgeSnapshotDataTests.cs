using VProtect.Core.Backup;
using VProtect.Core.Backup.Cbt;
using VProtect.Core.Repository;
using VProtect.Core.Restore;
using VProtect.Core.Restore.Cbt;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;
using VProtect.Simulator.Control;
using VProtect.Simulator.Scenario;
using VProtect.Simulator.Tests.Cbt;
using Xunit;

namespace VProtect.Simulator.Tests.Backup;

/// <summary>
/// PurgeSnapshotData with the CBT strategy: the kept snapshot keeps only CBT metadata (cbt_metadata VDIs, the VM gone),
/// the next incremental compares against that metadata and reads the new snapshot, and the metadata of the snapshot it
/// replaces is released rather than left to pile up.
/// </summary>
public sealed class PurgeSnapshotDataTests : SimulatorRepositoryTestBase
{
    private string _vmRef = "";
    private readonly BackupEngine _engine = new(new CbtStrategy());

    protected override async Task InitializeTestAsync()
    {
        _vmRef = (await Session.GetByNameLabelAsync("VM", "db-01")).Single();
        await AddNbdPurposeAsync();
    }

    private Task<BackupResult> BackupAsync(BackupType type) =>
        _engine.RunAsync(Session, Repo, _vmRef, new BackupOptions { Type = type, PurgeSnapshotData = true, NoFallback = true }, new RecordingObserver(), Timeout());

    private async Task<VdiRecord?> VdiAsync(string uuid)
    {
        try { return await Session.GetRecordByUuidAsync<VdiRecord>(uuid); }
        catch (XapiException ex) when (ex.ErrorCode == "UUID_INVALID") { return null; }
    }

    private async Task AssertPurgedAsync(BackupManifest backup)
    {
        await Assert.ThrowsAsync<XapiException>(() => Session.GetByUuidAsync("VM", backup.SnapshotUuid!));
        foreach (var d in backup.Disks)
        {
            var vdi = await VdiAsync(d.Properties[CbtStrategy.SnapshotVdiProperty]);
            Assert.NotNull(vdi);
            Assert.Equal("cbt_metadata", vdi!.Type);
            Assert.True(vdi.CbtEnabled);
            Assert.Equal(SnapshotService.CreatedByValue, vdi.OtherConfig[SnapshotService.CreatedByKey]);
            Assert.Equal(backup.Id, vdi.OtherConfig[SnapshotService.BackupIdKey]);
            await Assert.ThrowsAsync<IOException>(async () => await Sim.OpenVdi(vdi.Uuid).ReadAsync(0, new byte[512], default));
        }
    }

    [Fact]
    public async Task The_kept_snapshot_keeps_only_CBT_metadata_the_next_incremental_works_and_the_old_metadata_is_released()
    {
        var full = await BackupAsync(BackupType.Full);
        Assert.True(full.SnapshotKept);
        await AssertPurgedAsync(full.Backup);

        var disks = await CbtTestKit.DisksAsync(Session, _vmRef);
        await ControlApi.WriteAsync(Sim.OpenVdi(disks["1"]), 200L << 20, 3L << 20, 5101, Timeout());
        await ControlApi.WriteAsync(Sim.OpenVdi(disks["2"]), 0, 64L << 10, 5102, Timeout());
        var inc = await BackupAsync(BackupType.Incremental);
        Assert.Equal(BackupType.Incremental, inc.Backup.Type);
        Assert.Equal(full.Backup.Id, inc.Backup.BaseId);
        Assert.Equal((3L << 20) + (64L << 10), inc.Backup.Disks.Sum(d => d.DataBytes));
        await AssertPurgedAsync(inc.Backup);
        // The full's metadata-only disks were the base of this incremental; they are not needed any more.
        foreach (var d in full.Backup.Disks)
            Assert.Null(await VdiAsync(d.Properties[CbtStrategy.SnapshotVdiProperty]));
        Assert.Empty(await SnapshotService.FindTaggedAsync(Session, null, default));

        var expected = new Dictionary<string, string>();
        foreach (var (_, uuid) in disks) expected[uuid] = await ControlApi.HashAsync(Sim.OpenVdi(uuid), Timeout());
        var restored = await new RestoreEngine(new CbtRestore()).RestoreAsync(Session, Repo, inc.Backup,
            new RestoreOptions { Name = "db-01 purged chain" }, new RecordingObserver(), Timeout());
        Assert.Equal(3, restored.Disks.Count);
        foreach (var d in restored.Disks)
            Assert.Equal(expected[d.SourceKey], await ControlApi.HashAsync(Sim.OpenVdi(d.VdiUuid), Timeout()));
    }
}
