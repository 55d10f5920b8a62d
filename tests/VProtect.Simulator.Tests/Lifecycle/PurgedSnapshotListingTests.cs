using VProtect.Core.Backup;
using VProtect.Core.Backup.Cbt;
using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;
using VProtect.Simulator.Scenario;
using VProtect.Simulator.Tests.Cbt;
using Xunit;

namespace VProtect.Simulator.Tests.Lifecycle;

/// <summary>
/// The metadata-only VDIs -PurgeSnapshotData keeps are listed by BackupSnapshots (Kind CbtMetadata) like snapshot VMs:
/// not orphaned while they are the base of the next incremental, orphaned once their backup leaves the repository,
/// a newer snapshot replaces them or their VM is destroyed, and removing them destroys them and nothing else.
/// </summary>
public sealed class PurgedSnapshotListingTests : SimulatorRepositoryTestBase
{
    private string _vmRef = "";
    private VmRecord _vm = null!;

    protected override async Task InitializeTestAsync()
    {
        _vmRef = (await Session.GetByNameLabelAsync("VM", "db-01")).Single();
        _vm = await Session.GetRecordAsync<VmRecord>(_vmRef, default);
        await AddNbdPurposeAsync();
    }

    private async Task<BackupManifest> PurgedFullAsync()
    {
        var result = await new BackupEngine(new CbtStrategy()).RunAsync(Session, Repo, _vmRef,
            new BackupOptions { Type = BackupType.Full, PurgeSnapshotData = true, NoFallback = true }, new RecordingObserver(), Timeout());
        Assert.True(result.SnapshotKept);
        return result.Backup;
    }

    private static IEnumerable<string> MetadataVdis(BackupManifest backup)
        => backup.Disks.Select(d => d.Properties[CbtStrategy.SnapshotVdiProperty]).OrderBy(u => u, StringComparer.Ordinal);

    private async Task<BackupSnapshot> SingleMetadataAsync(BackupRepository? repository)
    {
        var found = await BackupSnapshots.FindAsync(Session, _vm.Uuid, repository, default);
        return Assert.Single(found, s => s.Kind == BackupSnapshots.KindCbtMetadata);
    }

    [Fact]
    public async Task A_purged_chain_is_listed_and_orphaned_once_its_backup_leaves_the_repository_and_removal_destroys_only_its_VDIs()
    {
        var full = await PurgedFullAsync();
        var found = await BackupSnapshots.FindAsync(Session, null, Repo, default);
        var meta = Assert.Single(found);   // the snapshot VM is gone: only its kept disks are left
        Assert.Equal(BackupSnapshots.KindCbtMetadata, meta.Kind);
        Assert.Equal(MetadataVdis(full), meta.VdiUuids);
        Assert.Equal(3, meta.VdiUuids.Count);
        Assert.Equal(full.Id, meta.BackupId);
        Assert.Equal(_vm.Uuid, meta.VmUuid);
        Assert.Equal("db-01", meta.VmName);
        Assert.Equal(SnapshotService.StateKept, meta.State);
        Assert.False(meta.IsOrphaned, meta.OrphanReason);

        // The chain's backup removed from the repository: orphaned when checked against it, not without one.
        Directory.Delete(Repo.GetBackupFolder(full), recursive: true);
        var orphan = await SingleMetadataAsync(Repo);
        Assert.True(orphan.IsOrphaned);
        Assert.Contains("not in the repository", orphan.OrphanReason);
        Assert.False((await SingleMetadataAsync(null)).IsOrphaned);

        var vdisBefore = (await Session.GetAllRecordsAsync<VdiRecord>()).Select(v => v.Uuid).ToHashSet();
        var vmsBefore = (await Session.GetAllRecordsAsync<VmRecord>()).Select(v => v.Uuid).ToHashSet();
        Assert.Equal(3, await BackupSnapshots.RemoveAsync(Session, orphan, default));
        var vdisAfter = (await Session.GetAllRecordsAsync<VdiRecord>()).Select(v => v.Uuid).ToHashSet();
        Assert.Equal(vdisBefore.Except(orphan.VdiUuids).OrderBy(u => u), vdisAfter.OrderBy(u => u));
        Assert.Equal(vmsBefore.OrderBy(u => u), (await Session.GetAllRecordsAsync<VmRecord>()).Select(v => v.Uuid).OrderBy(u => u));
        Assert.Empty(await BackupSnapshots.FindAsync(Session, null, null, default));
        // Removing it again is fine: it is already gone.
        Assert.Equal(0, await BackupSnapshots.RemoveAsync(Session, orphan, default));
    }

    [Fact]
    public async Task Kept_metadata_is_orphaned_when_a_newer_snapshot_is_kept_or_its_VM_is_destroyed()
    {
        var full = await PurgedFullAsync();
        // A later run that kept its snapshot VM (no purge) supersedes the metadata.
        var later = await SnapshotService.TakeAsync(Session, _vm, "vprotect later kept", false, Array.Empty<string>(), new RecordingObserver(), default);
        await SnapshotService.MarkKeptAsync(Session, later.Ref, "29990101T000000000Z-ffffff", default);
        var found = await BackupSnapshots.FindAsync(Session, _vm.Uuid, null, default);
        Assert.Equal(2, found.Count);
        var vmKind = Assert.Single(found, s => s.Kind == BackupSnapshots.KindSnapshotVm);
        Assert.False(vmKind.IsOrphaned);
        Assert.Equal(later.VdisBySource.Values.Select(v => v.Uuid).OrderBy(u => u, StringComparer.Ordinal), vmKind.VdiUuids);
        var meta = Assert.Single(found, s => s.Kind == BackupSnapshots.KindCbtMetadata);
        Assert.True(meta.IsOrphaned);
        Assert.Contains("newer", meta.OrphanReason);
        await SnapshotService.DestroyAsync(Session, later.Ref, default);
        Assert.False((await SingleMetadataAsync(null)).IsOrphaned);

        // The VM destroyed: its kept metadata is an orphan (XAPI's VM.destroy leaves VDIs alone).
        if ((await Session.GetRecordAsync<VmRecord>(_vmRef, default)).PowerState != "Halted")
            await Session.CallAsyncTaskAsync("VM.hard_shutdown", new object?[] { _vmRef }, null, default);
        await Session.CallAsyncTaskAsync("VM.destroy", new object?[] { _vmRef }, null, default);
        var gone = await SingleMetadataAsync(Repo);
        Assert.Equal(MetadataVdis(full), gone.VdiUuids);
        Assert.True(gone.IsOrphaned);
        Assert.Contains("no longer exists", gone.OrphanReason);
        Assert.Null(gone.VmName);
        Assert.Equal(3, await BackupSnapshots.RemoveAsync(Session, gone, default));
        foreach (var uuid in gone.VdiUuids)
            await Assert.ThrowsAsync<XapiException>(() => Session.GetRecordByUuidAsync<VdiRecord>(uuid));
    }

    [Fact]
    public async Task Disks_whose_purge_destroyed_the_VM_but_not_the_data_are_listed_and_removal_refuses_a_changed_set()
    {
        // What a purge that stopped after VM.destroy leaves: tagged snapshot VDIs that still hold data, in no VM.
        var snap = await SnapshotService.TakeAsync(Session, _vm, "vprotect half purged", false, Array.Empty<string>(), new RecordingObserver(), default);
        var vdis = snap.VdisBySource.Values.ToList();
        foreach (var vdi in vdis)
            foreach (var (k, v) in new[] { (SnapshotService.CreatedByKey, SnapshotService.CreatedByValue), (SnapshotService.VmKey, _vm.Uuid), (SnapshotService.BackupIdKey, "20260101T000000000Z-abcdef") })
                await Session.CallAsync("VDI.add_to_other_config", new object?[] { vdi.OpaqueRef, k, v });
        await Session.CallAsyncTaskAsync("VM.destroy", new object?[] { snap.Ref }, null, default);

        var listed = Assert.Single(await BackupSnapshots.FindAsync(Session, null, null, default));
        Assert.Equal(BackupSnapshots.KindCbtMetadata, listed.Kind);
        Assert.Equal(BackupSnapshots.StateDataNotDestroyed, listed.State);
        Assert.Equal(vdis.Select(v => v.Uuid).OrderBy(u => u, StringComparer.Ordinal), listed.VdiUuids);
        Assert.False(listed.IsOrphaned);
        // Checked against a repository that lacks the backup, it is an orphan.
        Assert.True((await BackupSnapshots.FindAsync(Session, null, Repo, default)).Single().IsOrphaned);

        // One of them no longer tagged (someone took it over): nothing is removed.
        await Session.CallAsync("VDI.remove_from_other_config", new object?[] { vdis[^1].OpaqueRef, SnapshotService.CreatedByKey });
        await Assert.ThrowsAsync<InvalidOperationException>(() => BackupSnapshots.RemoveAsync(Session, listed, default));
        foreach (var vdi in vdis) Assert.NotNull(await Session.GetRecordByUuidAsync<VdiRecord>(vdi.Uuid));

        // Listed again, the untagged one is not part of it, and removal takes exactly the rest.
        var again = Assert.Single(await BackupSnapshots.FindAsync(Session, null, null, default));
        Assert.Equal(vdis.Count - 1, again.VdiUuids.Count);
        Assert.Equal(vdis.Count - 1, await BackupSnapshots.RemoveAsync(Session, again, default));
        Assert.NotNull(await Session.GetRecordByUuidAsync<VdiRecord>(vdis[^1].Uuid));
        Assert.Empty(await BackupSnapshots.FindAsync(Session, null, null, default));
    }
}
