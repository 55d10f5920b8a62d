using VProtect.Core.Backup;
using VProtect.Core.Repository;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;
using VProtect.Simulator;
using VProtect.Simulator.Scenario;
using Xunit;

namespace VProtect.Simulator.Tests.Backup;

/// <summary>
/// The engine's guarantees (scripts, snapshots, never a silent full, clean-up on every failure) against the
/// simulator, with a test strategy that copies the snapshot's disks straight from the simulator's storage.
/// </summary>
public sealed class BackupEngineTests : SimulatorRepositoryTestBase
{
    private string _vmRef = "";

    protected override async Task InitializeTestAsync()
    {
        _vmRef = (await Session.GetByNameLabelAsync("VM", DefaultScenario.WebVm)).Single();
    }

    private sealed class Observer : IBackupObserver
    {
        public List<string> Warnings { get; } = new();
        public List<string> Stages { get; } = new();
        public void OnProgress(BackupProgress p) { lock (Stages) Stages.Add(p.Stage); }
        public void OnWarning(string message) { lock (Warnings) Warnings.Add(message); }
        public void OnVerbose(string message) { }
    }

    /// <summary>Copies each snapshot disk's allocated extents; optionally fails or cancels half way.</summary>
    private sealed class DirectStrategy(XenSimulator sim) : IBackupStrategy
    {
        public Func<Task>? MidTransfer { get; set; }
        public List<string> Released { get; } = new();
        public BackupStrategy Kind => BackupStrategy.Cbt;

        public Task<BackupPlan> PlanAsync(BackupRun run, CancellationToken ct)
        {
            if (run.Options.Type == BackupType.Full) return Task.FromResult(BackupPlan.Full());
            var last = run.History.LastOrDefault();
            return Task.FromResult(last is null ? BackupPlan.Full("there is no previous backup of this VM in the repository.") : BackupPlan.Incremental(last));
        }

        public Task BeforeSnapshotAsync(BackupRun run, BackupPlan plan, CancellationToken ct) => Task.CompletedTask;

        public async Task TransferAsync(BackupRun run, BackupPlan plan, SnapshotInfo snapshot, BackupWriter writer, CancellationToken ct)
        {
            foreach (var disk in run.Disks)
            {
                var snapVdi = snapshot.VdisBySource[disk.Vdi.OpaqueRef];
                var source = sim.OpenVdi(snapVdi.Uuid);
                var w = writer.AddDisk(new DiskManifest { Key = disk.Key, Device = disk.Device, VirtualSize = source.Length });
                var buffer = new byte[1 << 20];
                await foreach (var e in source.GetAllocatedExtentsAsync(0, source.Length, ct))
                    for (long pos = e.Offset; pos < e.End; pos += buffer.Length)
                    {
                        int n = (int)Math.Min(buffer.Length, e.End - pos);
                        await source.ReadAsync(pos, buffer.AsMemory(0, n), ct);
                        await w.WriteAsync(pos, buffer.AsMemory(0, n), ct);
                        if (MidTransfer is not null) await MidTransfer();
                    }
                await w.CompleteAsync(ct);
            }
        }

        public IReadOnlyList<string> SnapshotsToRelease(BackupRun run, BackupPlan plan, BackupManifest committed)
        {
            var previous = run.History.LastOrDefault()?.SnapshotUuid;
            if (previous is not null) Released.Add(previous);
            return previous is null ? Array.Empty<string>() : new[] { previous };
        }
    }

    private async Task<IReadOnlyList<VmRecord>> TaggedSnapshotsAsync() => await SnapshotService.FindTaggedAsync(Session, null, default);

    [Fact]
    public async Task A_full_then_an_incremental_keep_exactly_one_tagged_snapshot_and_restore_the_source()
    {
        var engine = new BackupEngine(new DirectStrategy(Sim));
        var observer = new Observer();
        var full = await engine.RunAsync(Session, Repo, _vmRef, new BackupOptions { Type = BackupType.Full }, observer, default);
        var kept = Assert.Single(await TaggedSnapshotsAsync());
        Assert.Equal(full.Backup.SnapshotUuid, kept.Uuid);
        Assert.Equal(SnapshotService.StateKept, kept.OtherConfig[SnapshotService.StateKey]);
        Assert.Equal(full.Backup.Id, kept.OtherConfig[SnapshotService.BackupIdKey]);

        var inc = await engine.RunAsync(Session, Repo, _vmRef, new BackupOptions { Type = BackupType.Incremental }, observer, default);
        Assert.Equal(BackupType.Incremental, inc.Backup.Type);
        Assert.Equal(full.Backup.Id, inc.Backup.BaseId);
        var afterInc = Assert.Single(await TaggedSnapshotsAsync());
        Assert.Equal(inc.Backup.SnapshotUuid, afterInc.Uuid);

        // The stored disk equals the live disk (nothing wrote to it since).
        var vm = await Session.GetRecordAsync<VmRecord>(_vmRef);
        foreach (var disk in inc.Backup.Disks)
        {
            using var restored = Repo.OpenDisk(inc.Backup, disk.Key);
            Assert.Equal(await Sha256Async(Sim.OpenVdi(disk.Key)), await Sha256Async(restored));
        }
        Assert.True(File.Exists(Path.Combine(inc.RepositoryPath, BackupRepository.VmMetadataFile)));
        var metadata = VmMetadata.Read(Path.Combine(inc.RepositoryPath, BackupRepository.VmMetadataFile));
        Assert.Equal(vm.Uuid, metadata.VmUuid);
        Assert.Equal(vm.VIFs.Count, metadata.Vifs.Count);
    }

    [Fact]
    public async Task A_failure_mid_transfer_leaves_no_snapshot_and_no_listed_backup()
    {
        var strategy = new DirectStrategy(Sim) { MidTransfer = () => throw new IOException("link dropped") };
        var engine = new BackupEngine(strategy);
        await Assert.ThrowsAsync<IOException>(() => engine.RunAsync(Session, Repo, _vmRef, new BackupOptions(), new Observer(), default));
        Assert.Empty(await TaggedSnapshotsAsync());
        Assert.Empty(Repo.ListBackups());
        Assert.Empty(Directory.GetDirectories(Path.Combine(RepoPath, "vms"), ".partial-*", SearchOption.AllDirectories));
    }

    [Fact]
    public async Task Cancellation_mid_transfer_removes_the_snapshot_too()
    {
        using var cts = new CancellationTokenSource();
        var strategy = new DirectStrategy(Sim) { MidTransfer = () => { cts.Cancel(); return Task.CompletedTask; } };
        var engine = new BackupEngine(strategy);
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => engine.RunAsync(Session, Repo, _vmRef, new BackupOptions(), new Observer(), cts.Token));
        Assert.Empty(await TaggedSnapshotsAsync());
        Assert.Empty(Repo.ListBackups());
    }

    [Fact]
    public async Task An_incremental_without_a_previous_backup_is_a_full_with_the_reason_and_NoFallback_fails()
    {
        var engine = new BackupEngine(new DirectStrategy(Sim));
        var observer = new Observer();
        await Assert.ThrowsAsync<IncrementalNotPossibleException>(() =>
            engine.RunAsync(Session, Repo, _vmRef, new BackupOptions { Type = BackupType.Incremental, NoFallback = true }, observer, default));
        Assert.Empty(await TaggedSnapshotsAsync());
        var r = await engine.RunAsync(Session, Repo, _vmRef, new BackupOptions { Type = BackupType.Incremental }, observer, default);
        Assert.Equal(BackupType.Full, r.Backup.Type);
        Assert.Contains("no previous backup", r.Backup.FullReason);
        Assert.Contains(observer.Warnings, w => w.Contains("full backup instead of an incremental"));
    }

    [Fact]
    public async Task Scripts_run_in_order_and_a_failing_pre_script_stops_the_backup_but_still_runs_post()
    {
        var engine = new BackupEngine(new DirectStrategy(Sim));
        var calls = new List<string>();
        var options = new BackupOptions
        {
            PreSnapshot = (c, _) => { calls.Add("pre:" + c.SnapshotUuid); return Task.CompletedTask; },
            PostSnapshot = (c, _) => { calls.Add("post:" + (c.SnapshotUuid is null ? "none" : "snap")); return Task.CompletedTask; },
        };
        await engine.RunAsync(Session, Repo, _vmRef, options, new Observer(), default);
        Assert.Equal(new[] { "pre:", "post:snap" }, calls);

        calls.Clear();
        options.PreSnapshot = (_, _) => throw new InvalidOperationException("database would not freeze");
        var ex = await Assert.ThrowsAsync<SnapshotScriptException>(() => engine.RunAsync(Session, Repo, _vmRef, options, new Observer(), default));
        Assert.Equal("pre-snapshot", ex.Phase);
        Assert.Equal(new[] { "post:none" }, calls);
        Assert.Single(Repo.ListBackups()); // only the first run's backup
        Assert.Single(await TaggedSnapshotsAsync()); // only the first run's kept snapshot
    }

    [Fact]
    public async Task A_quiesced_snapshot_falls_back_with_a_warning_on_a_host_that_removed_it()
    {
        var engine = new BackupEngine(new DirectStrategy(Sim));
        var observer = new Observer();
        var r = await engine.RunAsync(Session, Repo, _vmRef, new BackupOptions { Quiesce = true }, observer, default);
        Assert.Contains(observer.Warnings, w => w.Contains("quiesced snapshot") && w.Contains("crash-consistent"));
        Assert.Equal("crash-consistent", r.Backup.Properties["snapshotConsistency"]);
    }

    [Fact]
    public async Task Excluded_disks_are_left_out_and_unknown_ones_are_refused_before_anything_happens()
    {
        var engine = new BackupEngine(new DirectStrategy(Sim));
        var r = await engine.RunAsync(Session, Repo, _vmRef, new BackupOptions { ExcludeDisks = new[] { "1" } }, new Observer(), default);
        Assert.Single(r.Backup.Disks);
        await Assert.ThrowsAsync<ArgumentException>(() => engine.RunAsync(Session, Repo, _vmRef, new BackupOptions { ExcludeDisks = new[] { "xvdz" } }, new Observer(), default));
        Assert.Single(await TaggedSnapshotsAsync());
    }

    [Theory]
    [InlineData(false, QuiesceMode.Removed)] // a host before xapi 21.4: VM.snapshot has no ignore_vdis
    [InlineData(true, QuiesceMode.Works)]    // VM.snapshot_with_quiesce never had ignore_vdis
    public async Task An_excluded_disk_is_never_kept_in_the_snapshot_when_the_host_cannot_leave_it_out(bool ignoreVdis, QuiesceMode quiesce)
    {
        Sim.Settings.SnapshotIgnoreVdis = ignoreVdis;
        Sim.Settings.SnapshotWithQuiesce = quiesce;
        var excludedRef = (await Session.GetVmDisksAsync(_vmRef))[1].Vdi.OpaqueRef;
        var engine = new BackupEngine(new DirectStrategy(Sim));
        var r = await engine.RunAsync(Session, Repo, _vmRef,
            new BackupOptions { ExcludeDisks = new[] { "1" }, Quiesce = quiesce == QuiesceMode.Works }, new Observer(), default);
        Assert.Single(r.Backup.Disks);
        Assert.Equal(quiesce == QuiesceMode.Works ? "quiesced" : "crash-consistent", r.Backup.Properties["snapshotConsistency"]);
        var kept = Assert.Single(await TaggedSnapshotsAsync());
        var keptDisks = await Session.GetVmDisksAsync(kept.OpaqueRef);
        Assert.DoesNotContain(keptDisks, d => d.Vdi.SnapshotOf == excludedRef);
        Assert.Single(keptDisks);
        var all = await Session.GetAllRecordsAsync<VdiRecord>(default);
        Assert.DoesNotContain(all, v => v.SnapshotOf == excludedRef);
    }

    [Fact]
    public async Task KeepSnapshot_false_removes_the_snapshot_after_commit()
    {
        var engine = new BackupEngine(new DirectStrategy(Sim));
        var r = await engine.RunAsync(Session, Repo, _vmRef, new BackupOptions { KeepSnapshot = false }, new Observer(), default);
        Assert.False(r.SnapshotKept);
        Assert.Empty(await TaggedSnapshotsAsync());
        Assert.Single(Repo.ListBackups());
    }

    private static async Task<string> Sha256Async(Core.IO.IBlockSource source)
    {
        using var sha = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        for (long pos = 0; pos < source.Length; pos += buffer.Length)
        {
            int n = (int)Math.Min(buffer.Length, source.Length - pos);
            await source.ReadAsync(pos, buffer.AsMemory(0, n), default);
            sha.AppendData(buffer, 0, n);
        }
        return Convert.ToHexString(sha.GetHashAndReset());
    }
}
