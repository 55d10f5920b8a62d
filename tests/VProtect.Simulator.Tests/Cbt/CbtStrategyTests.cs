using VProtect.Core.Backup;
using VProtect.Core.Backup.Cbt;
using VProtect.Core.Repository;
using VProtect.Core.Restore;
using VProtect.Core.Restore.Cbt;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;
using VProtect.Simulator.Scenario;
using Xunit;

namespace VProtect.Simulator.Tests.Cbt;

/// <summary>The CBT strategy and restore end to end against the simulator (HTTP and NBD data planes).</summary>
public sealed class CbtStrategyTests : SimulatorRepositoryTestBase
{
    private string _vmRef = "";
    private readonly BackupEngine _engine = new(new CbtStrategy());
    private readonly RestoreEngine _restore = new(new CbtRestore());

    protected override async Task InitializeTestAsync()
    {
        _vmRef = (await Session.GetByNameLabelAsync("VM", DefaultScenario.WebVm)).Single();
    }

    private Task<BackupResult> BackupAsync(BackupType type, RecordingObserver? observer = null, bool noFallback = false, params string[] exclude) =>
        _engine.RunAsync(Session, Repo, _vmRef, new BackupOptions { Type = type, NoFallback = noFallback, ExcludeDisks = exclude },
            observer ?? new RecordingObserver(), new CancellationTokenSource(TimeSpan.FromMinutes(2)).Token);

    /// <summary>SHA-256 of each snapshot VDI the backup read, by disk key: the content a restore must reproduce.</summary>
    private async Task<Dictionary<string, string>> SnapshotHashesAsync(BackupManifest backup)
    {
        var hashes = new Dictionary<string, string>();
        foreach (var d in backup.Disks)
            hashes[d.Key] = await CbtTestKit.Sha256Async(Sim.OpenVdi(d.Properties[CbtStrategy.SnapshotVdiProperty]));
        return hashes;
    }

    private async Task AssertRestoredAsync(RestoreResult result, Dictionary<string, string> expected)
    {
        Assert.Equal(expected.Count, result.Disks.Count);
        foreach (var d in result.Disks)
            Assert.Equal(expected[d.SourceKey], await CbtTestKit.Sha256Async(Sim.OpenVdi(d.VdiUuid)));
    }

    [Fact]
    public async Task A_full_enables_CBT_reads_only_allocated_data_over_HTTP_and_restores_byte_for_byte()
    {
        var before = await Session.GetRecordAsync<VmRecord>(_vmRef);
        var full = await BackupAsync(BackupType.Full);
        Assert.Equal(BackupType.Full, full.Backup.Type);
        Assert.Equal(2, full.Backup.Disks.Count);
        foreach (var d in full.Backup.Disks)
        {
            Assert.Equal("http-vhd", d.Properties[CbtStrategy.TransportProperty]);
            var live = await Session.GetRecordAsync<VdiRecord>(await Session.GetByUuidAsync("VDI", d.Key));
            Assert.True(live.CbtEnabled, "a full enables CBT on each disk for the next incremental");
            Assert.True(d.DataBytes < d.VirtualSize / 10, $"a sparse disk moves about what is written, not {d.DataBytes} of {d.VirtualSize}");
        }
        var expected = await SnapshotHashesAsync(full.Backup);

        // Restoring while the original still exists: a new VM with new MACs.
        var restored = await _restore.RestoreAsync(Session, Repo, full.Backup, new RestoreOptions(), new RecordingObserver(), default);
        await AssertRestoredAsync(restored, expected);
        Assert.True(restored.NewMacAddresses);
        var vm = await Session.GetRecordAsync<VmRecord>(await Session.GetByUuidAsync("VM", restored.VmUuid!));
        Assert.NotEqual(before.Uuid, vm.Uuid);
        Assert.Equal(before.VIFs.Count, vm.VIFs.Count);
        var originalMacs = new HashSet<string>();
        foreach (var v in before.VIFs) originalMacs.Add((await Session.GetRecordAsync<VifRecord>(v)).MAC);
        foreach (var v in vm.VIFs) Assert.DoesNotContain((await Session.GetRecordAsync<VifRecord>(v)).MAC, originalMacs);
        Assert.Equal(before.MemoryStaticMax, vm.MemoryStaticMax);
        Assert.Equal(before.VcpusMax, vm.VcpusMax);
    }

    [Fact]
    public async Task With_the_original_VM_gone_the_restore_brings_back_its_MAC_addresses()
    {
        var before = await Session.GetRecordAsync<VmRecord>(_vmRef);
        var macs = new List<string>();
        foreach (var v in before.VIFs) macs.Add((await Session.GetRecordAsync<VifRecord>(v)).MAC);
        var full = await BackupAsync(BackupType.Full);
        await Session.CallAsyncTaskAsync("VM.hard_shutdown", new object?[] { _vmRef }, null, default);
        foreach (var s in before.Snapshots.Concat((await Session.GetRecordAsync<VmRecord>(_vmRef)).Snapshots).Distinct())
            await SnapshotService.DestroyAsync(Session, s, default);
        await Session.CallAsyncTaskAsync("VM.destroy", new object?[] { _vmRef }, null, default);

        var restored = await _restore.RestoreAsync(Session, Repo, full.Backup, new RestoreOptions(), new RecordingObserver(), default);
        Assert.False(restored.NewMacAddresses);
        var vm = await Session.GetRecordAsync<VmRecord>(await Session.GetByUuidAsync("VM", restored.VmUuid!));
        Assert.Equal(before.NameLabel, vm.NameLabel);
        var restoredMacs = new List<string>();
        foreach (var v in vm.VIFs) restoredMacs.Add((await Session.GetRecordAsync<VifRecord>(v)).MAC);
        Assert.Equal(macs.OrderBy(m => m), restoredMacs.OrderBy(m => m));
    }

    [Fact]
    public async Task Without_NBD_an_incremental_is_a_full_with_the_reason_and_NoFallback_fails()
    {
        await BackupAsync(BackupType.Full);
        var ex = await Assert.ThrowsAsync<IncrementalNotPossibleException>(() => BackupAsync(BackupType.Incremental, noFallback: true));
        Assert.Contains("NBD", ex.Reason);
        var observer = new RecordingObserver();
        var second = await BackupAsync(BackupType.Incremental, observer);
        Assert.Equal(BackupType.Full, second.Backup.Type);
        Assert.Contains("NBD", second.Backup.FullReason);
        Assert.Contains(observer.Warnings, w => w.Contains("full backup instead of an incremental"));
    }

    [Fact]
    public async Task Restoring_chosen_disks_creates_only_those_VDIs_and_no_VM()
    {
        var full = await BackupAsync(BackupType.Full);
        var expected = await SnapshotHashesAsync(full.Backup);
        var vmsBefore = (await Session.GetAllRecordsAsync<VmRecord>()).Count;
        var result = await _restore.RestoreAsync(Session, Repo, full.Backup, new RestoreOptions { Disks = new[] { "1" } }, new RecordingObserver(), default);
        Assert.Null(result.VmUuid);
        var disk = Assert.Single(result.Disks);
        Assert.Equal(expected[disk.SourceKey], await CbtTestKit.Sha256Async(Sim.OpenVdi(disk.VdiUuid)));
        Assert.Equal(vmsBefore, (await Session.GetAllRecordsAsync<VmRecord>()).Count);
        await Assert.ThrowsAsync<ArgumentException>(() => _restore.RestoreAsync(Session, Repo, full.Backup, new RestoreOptions { Disks = new[] { "xvdq" } }, new RecordingObserver(), default));
    }

    [Fact]
    public async Task A_licence_without_CBT_lets_the_full_go_on_and_names_the_reason_at_the_next_incremental()
    {
        Sim.Settings.RestrictCbt = true;
        var observer = new RecordingObserver();
        var full = await BackupAsync(BackupType.Full, observer);
        Assert.Contains(observer.Warnings, w => w.Contains("LICENCE_RESTRICTION"));
        Assert.All(full.Backup.Disks, d => Assert.Contains("licence", d.Properties[CbtStrategy.CbtUnavailableProperty]));
        var next = await BackupAsync(BackupType.Incremental);
        Assert.Equal(BackupType.Full, next.Backup.Type);
        Assert.Contains("licence", next.Backup.FullReason);
    }

    [Fact]
    public async Task An_HTTP_export_dropped_mid_stream_leaves_no_snapshot_and_no_backup_and_the_next_run_succeeds()
    {
        Sim.Faults.AddDrop(new Faults.TransferDropFault(Faults.TransferChannel.Http, 1 << 20, 1));
        await Assert.ThrowsAnyAsync<Exception>(() => BackupAsync(BackupType.Full));
        Assert.Empty(await SnapshotService.FindTaggedAsync(Session, null, default));
        Assert.Empty(Repo.ListBackups());
        var ok = await BackupAsync(BackupType.Full);
        Assert.Single(Repo.ListBackups());
        var restored = await _restore.RestoreAsync(Session, Repo, ok.Backup, new RestoreOptions { Disks = new[] { "0" } }, new RecordingObserver(), default);
        var expected = await SnapshotHashesAsync(ok.Backup);
        Assert.Equal(expected[restored.Disks[0].SourceKey], await CbtTestKit.Sha256Async(Sim.OpenVdi(restored.Disks[0].VdiUuid)));
    }
}
