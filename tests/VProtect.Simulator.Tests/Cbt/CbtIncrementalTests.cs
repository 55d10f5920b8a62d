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

/// <summary>Fulls and incrementals over the simulator's xapi-nbd (TLS pinned), the fallback reasons, and NBD faults.</summary>
public sealed class CbtIncrementalTests : SimulatorRepositoryTestBase
{
    private string _vmRef = "";
    private Dictionary<string, string> _disks = null!;
    private readonly BackupEngine _engine = new(new CbtStrategy { FullsOverNbd = true });
    private readonly RestoreEngine _restore = new(new CbtRestore());

    protected override async Task InitializeTestAsync()
    {
        _vmRef = (await Session.GetByNameLabelAsync("VM", DefaultScenario.WebVm)).Single();
        _disks = await CbtTestKit.DisksAsync(Session, _vmRef);
        await SetNbdAsync("nbd");
    }

    private async Task SetNbdAsync(string? purpose)
    {
        var net = (await Session.GetByNameLabelAsync("network", DefaultScenario.ManagementNetwork)).Single();
        foreach (var p in new[] { "nbd", "insecure_nbd" })
            await Session.CallAsync("network.remove_purpose", new object?[] { net, p });
        if (purpose is not null) await Session.CallAsync("network.add_purpose", new object?[] { net, purpose });
    }

    private Task<BackupResult> BackupAsync(BackupType type, RecordingObserver? observer = null, bool noFallback = false) =>
        _engine.RunAsync(Session, Repo, _vmRef, new BackupOptions { Type = type, NoFallback = noFallback },
            observer ?? new RecordingObserver(), new CancellationTokenSource(TimeSpan.FromMinutes(2)).Token);

    private async Task<Dictionary<string, string>> SnapshotHashesAsync(BackupManifest backup)
    {
        var hashes = new Dictionary<string, string>();
        foreach (var d in backup.Disks)
            hashes[d.Key] = await CbtTestKit.Sha256Async(Sim.OpenVdi(d.Properties[CbtStrategy.SnapshotVdiProperty]));
        return hashes;
    }

    private async Task AssertRestoresAsync(BackupManifest point, Dictionary<string, string> expected)
    {
        var result = await _restore.RestoreAsync(Session, Repo, point, new RestoreOptions { Name = "restored " + point.Id }, new RecordingObserver(), default);
        Assert.Equal(expected.Count, result.Disks.Count);
        foreach (var d in result.Disks)
            Assert.Equal(expected[d.SourceKey], await CbtTestKit.Sha256Async(Sim.OpenVdi(d.VdiUuid)));
    }

    [Fact]
    public async Task Full_then_two_incrementals_move_only_changed_blocks_and_every_point_restores_exactly()
    {
        var full = await BackupAsync(BackupType.Full);
        Assert.All(full.Backup.Disks, d => Assert.Equal("nbd", d.Properties[CbtStrategy.TransportProperty]));
        Assert.All(full.Backup.Disks, d => Assert.Equal(d.VirtualSize, d.DataBytes)); // xapi-nbd cannot tell holes: every byte is read
        var fullHashes = await SnapshotHashesAsync(full.Backup);

        await CbtTestKit.GuestWriteAsync(Sim, _disks["0"], 3L << 20, 200_000, 1);
        await CbtTestKit.GuestWriteAsync(Sim, _disks["1"], 700L << 20, 4096, 2);
        var inc1 = await BackupAsync(BackupType.Incremental);
        Assert.Equal(BackupType.Incremental, inc1.Backup.Type);
        Assert.Equal(full.Backup.Id, inc1.Backup.BaseId);
        var inc1Hashes = await SnapshotHashesAsync(inc1.Backup);
        Assert.NotEqual(fullHashes, inc1Hashes);
        // Only the touched 64 KiB blocks travel: 200 000 bytes span 4 blocks, 4096 bytes one.
        Assert.Equal(4 * 65536L, inc1.Backup.Disks.Single(d => d.Key == _disks["0"]).DataBytes);
        Assert.Equal(65536L, inc1.Backup.Disks.Single(d => d.Key == _disks["1"]).DataBytes);

        await CbtTestKit.GuestWriteAsync(Sim, _disks["0"], 3L << 20, 65536, 3); // overwrites part of inc1's change
        await CbtTestKit.GuestWriteAsync(Sim, _disks["0"], (2L << 30) - 65536, 65536, 4);
        var inc2 = await BackupAsync(BackupType.Incremental);
        Assert.Equal(inc1.Backup.Id, inc2.Backup.BaseId);
        Assert.Equal(0L, inc2.Backup.Disks.Single(d => d.Key == _disks["1"]).DataBytes);
        var inc2Hashes = await SnapshotHashesAsync(inc2.Backup);

        // Only the newest snapshot stays on the host.
        var tagged = await SnapshotService.FindTaggedAsync(Session, null, default);
        Assert.Equal(inc2.Backup.SnapshotUuid, Assert.Single(tagged).Uuid);

        await AssertRestoresAsync(inc2.Backup, inc2Hashes);
        await AssertRestoresAsync(inc1.Backup, inc1Hashes);
        await AssertRestoresAsync(full.Backup, fullHashes);
    }

    [Fact]
    public async Task Base_snapshot_gone_is_a_full_with_the_reason()
    {
        var full = await BackupAsync(BackupType.Full);
        var snapRef = await Session.GetByUuidAsync("VM", full.Backup.SnapshotUuid!);
        await SnapshotService.DestroyAsync(Session, snapRef, default);
        var r = await BackupAsync(BackupType.Incremental);
        Assert.Equal(BackupType.Full, r.Backup.Type);
        Assert.Contains("is gone", r.Backup.FullReason);
    }

    [Fact]
    public async Task CBT_disabled_is_a_full_with_the_reason_and_NoFallback_fails()
    {
        await BackupAsync(BackupType.Full);
        var vdiRef = await Session.GetByUuidAsync("VDI", _disks["1"]);
        await Session.CallAsync("VDI.disable_cbt", new object?[] { vdiRef });
        var ex = await Assert.ThrowsAsync<IncrementalNotPossibleException>(() => BackupAsync(BackupType.Incremental, noFallback: true));
        Assert.Contains("CBT is disabled", ex.Reason);
        var r = await BackupAsync(BackupType.Incremental);
        Assert.Equal(BackupType.Full, r.Backup.Type);
        Assert.Contains("CBT is disabled", r.Backup.FullReason);
        Assert.True((await Session.GetRecordAsync<VdiRecord>(vdiRef)).CbtEnabled, "the full re-enables CBT");
    }

    [Fact]
    public async Task CBT_reset_since_the_base_is_found_by_list_changed_blocks_and_gives_a_full()
    {
        var full = await BackupAsync(BackupType.Full);
        var vdiRef = await Session.GetByUuidAsync("VDI", _disks["0"]);
        await Session.CallAsync("VDI.disable_cbt", new object?[] { vdiRef });
        await Session.CallAsync("VDI.enable_cbt", new object?[] { vdiRef });
        var observer = new RecordingObserver();
        var r = await BackupAsync(BackupType.Incremental, observer);
        Assert.Equal(BackupType.Full, r.Backup.Type);
        Assert.Null(r.Backup.BaseId);
        Assert.False(string.IsNullOrEmpty(r.Backup.FullReason));
        Assert.Contains(observer.Warnings, w => w.Contains("full backup instead of an incremental"));
        await AssertRestoresAsync(r.Backup, await SnapshotHashesAsync(r.Backup));
        Assert.Empty(Repo.ListBackups().Where(b => b.Type == BackupType.Incremental));
        Assert.Equal(full.Backup.VmUuid, r.Backup.VmUuid);
    }

    [Fact]
    public async Task NBD_not_enabled_any_more_is_a_full_with_the_reason()
    {
        await BackupAsync(BackupType.Full);
        await SetNbdAsync(null);
        var r = await BackupAsync(BackupType.Incremental);
        Assert.Equal(BackupType.Full, r.Backup.Type);
        Assert.Contains("NBD is not enabled", r.Backup.FullReason);
    }

    [Fact]
    public async Task A_disk_added_since_the_base_gives_a_full_with_the_reason()
    {
        await BackupAsync(BackupType.Full);
        var sr = (await Session.GetByNameLabelAsync("SR", DefaultScenario.SharedSr)).Single();
        var vdi = XapiValue.AsString(await Session.CallAsync("VDI.create", new object?[] { new Dictionary<string, object?>
        {
            ["name_label"] = "added", ["name_description"] = "", ["SR"] = sr, ["virtual_size"] = 64L << 20, ["type"] = "user",
            ["sharable"] = false, ["read_only"] = false, ["other_config"] = new Dictionary<string, object?>(),
        } }));
        await Session.CallAsync("VBD.create", new object?[] { new Dictionary<string, object?>
        {
            ["VM"] = _vmRef, ["VDI"] = vdi, ["userdevice"] = "2", ["bootable"] = false, ["mode"] = "RW", ["type"] = "Disk", ["empty"] = false,
            ["other_config"] = new Dictionary<string, object?>(), ["qos_algorithm_type"] = "", ["qos_algorithm_params"] = new Dictionary<string, object?>(),
        } });
        var r = await BackupAsync(BackupType.Incremental);
        Assert.Equal(BackupType.Full, r.Backup.Type);
        Assert.Contains("was added", r.Backup.FullReason);
        Assert.Equal(3, r.Backup.Disks.Count);
    }

    [Fact]
    public async Task An_NBD_connection_dropped_mid_read_leaves_no_snapshot_and_no_backup_and_the_next_run_succeeds()
    {
        var full = await BackupAsync(BackupType.Full);
        await CbtTestKit.GuestWriteAsync(Sim, _disks["0"], 0, 4 << 20, 9);
        // Drop every connection after 1 MiB, more times than the client retries.
        Sim.Faults.AddDrop(new Faults.TransferDropFault(Faults.TransferChannel.Nbd, 1 << 20, 100));
        await Assert.ThrowsAnyAsync<Exception>(() => BackupAsync(BackupType.Incremental));
        var tagged = await SnapshotService.FindTaggedAsync(Session, null, default);
        Assert.Equal(full.Backup.SnapshotUuid, Assert.Single(tagged).Uuid); // only the previous, kept base
        Assert.Single(Repo.ListBackups());
        Sim.Faults.Clear();
        var ok = await BackupAsync(BackupType.Incremental);
        Assert.Equal(BackupType.Incremental, ok.Backup.Type);
        await AssertRestoresAsync(ok.Backup, await SnapshotHashesAsync(ok.Backup));
    }

    /// <summary>VBDs plugged into dom0 (xapi-nbd's, one per open NBD connection), waited for until none is left (15 s).</summary>
    private async Task WaitForNoDom0VbdsAsync()
    {
        var deadline = DateTime.UtcNow.AddSeconds(15);
        while (true)
        {
            int dom0 = 0;
            foreach (var vbd in XapiValue.AsStringList(await Session.CallAsync("VBD.get_all", Array.Empty<object?>())))
            {
                var vm = XapiValue.AsString(await Session.CallAsync("VBD.get_VM", new object?[] { vbd }));
                if (XapiValue.AsBool(await Session.CallAsync("VM.get_is_control_domain", new object?[] { vm }))) dom0++;
            }
            if (dom0 == 0) return;
            Assert.True(DateTime.UtcNow < deadline, $"{dom0} dom0 VBD(s) left: an NBD connection was not closed");
            await Task.Delay(20);
        }
    }

    [Fact]
    public async Task An_incremental_that_becomes_a_full_closes_the_NBD_connection_it_opened_early()
    {
        // The first disk's NBD connect starts while the host lists the changed blocks; when that fails and the run
        // becomes a full, the connection must not outlive the decision.
        await BackupAsync(BackupType.Full);
        await CbtTestKit.GuestWriteAsync(Sim, _disks["0"], 0, 1 << 20, 21);
        Sim.Faults.AddMethodFault(new Faults.XapiMethodFault("VDI.list_changed_blocks", "SR_BACKEND_FAILURE_460", ["", "Failed to calculate changed blocks for given VDIs. [opterr=Source and target VDI are unrelated]", ""], 1));
        var r = await BackupAsync(BackupType.Incremental);
        Assert.Equal(BackupType.Full, r.Backup.Type);
        Assert.Contains("SR_BACKEND_FAILURE_460", r.Backup.FullReason);
        await WaitForNoDom0VbdsAsync();
        await AssertRestoresAsync(r.Backup, await SnapshotHashesAsync(r.Backup));
    }

    [Fact]
    public async Task A_failure_reading_the_VM_metadata_fails_the_run_with_that_error_and_leaves_nothing_behind()
    {
        // The metadata is read while the transfer starts; its failure must be the one reported (not the cancellation it
        // causes), and neither the new snapshot nor an NBD connection nor a backup may be left.
        var full = await BackupAsync(BackupType.Full);
        await CbtTestKit.GuestWriteAsync(Sim, _disks["0"], 0, 1 << 20, 22);
        Sim.Faults.AddMethodFault(new Faults.XapiMethodFault("VIF.get_record", "INTERNAL_ERROR", ["injected metadata failure"], 1));
        var ex = await Assert.ThrowsAsync<XapiException>(() => BackupAsync(BackupType.Incremental));
        Assert.Equal("INTERNAL_ERROR", ex.ErrorCode);
        var tagged = await SnapshotService.FindTaggedAsync(Session, null, default);
        Assert.Equal(full.Backup.SnapshotUuid, Assert.Single(tagged).Uuid);
        Assert.Single(Repo.ListBackups());
        await WaitForNoDom0VbdsAsync();
        var ok = await BackupAsync(BackupType.Incremental);
        Assert.Equal(BackupType.Incremental, ok.Backup.Type);
    }
}
