using VProtect.Core.Repository;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;

namespace VProtect.Core.Backup;

/// <summary>A disk of the VM being backed up: its VBD and VDI on the live VM.</summary>
public sealed record BackupDisk(VbdRecord Vbd, VdiRecord Vdi)
{
    public string Key => Vdi.Uuid;
    public string Device => string.IsNullOrEmpty(Vbd.Device) ? Vbd.UserDevice : Vbd.Device;
}

/// <summary>Everything a strategy needs during one VM's run.</summary>
public sealed class BackupRun
{
    internal BackupRun(XapiSession session, BackupRepository repository, VmRecord vm, IReadOnlyList<BackupDisk> disks,
        IReadOnlyList<BackupDisk> excluded, BackupOptions options, IBackupObserver observer, IReadOnlyList<BackupManifest> history)
    {
        Session = session; Repository = repository; Vm = vm; Disks = disks; ExcludedDisks = excluded;
        Options = options; Observer = observer; History = history;
    }

    public XapiSession Session { get; }
    public BackupRepository Repository { get; }
    public VmRecord Vm { get; }
    /// <summary>The disks to back up (excluded ones removed).</summary>
    public IReadOnlyList<BackupDisk> Disks { get; }
    public IReadOnlyList<BackupDisk> ExcludedDisks { get; }
    public BackupOptions Options { get; }
    public IBackupObserver Observer { get; }
    /// <summary>This VM's committed backups in the repository, oldest first.</summary>
    public IReadOnlyList<BackupManifest> History { get; }

    public void Report(string stage, string? disk, long done, long total)
        => Observer.OnProgress(new BackupProgress(Vm.Uuid, Vm.NameLabel, stage, disk, done, total));
}

/// <summary>Full or incremental, and if a full was not asked for, why it is one anyway.</summary>
public sealed record BackupPlan(BackupType Type, BackupManifest? Base, string? FullReason)
{
    public static BackupPlan Full(string? reason = null) => new(BackupType.Full, null, reason);
    public static BackupPlan Incremental(BackupManifest @base) => new(BackupType.Incremental, @base, null);
}

/// <summary>What differs between the XVA and CBT strategies; the engine does the rest (locks, scripts, snapshots, commit, clean-up).</summary>
public interface IBackupStrategy
{
    BackupStrategy Kind { get; }

    /// <summary>
    /// Decides full or incremental. When the user asked for an incremental that cannot be done, returns a full with the
    /// reason (the engine warns, records it as FullReason, or fails under NoFallback). Reads only; changes nothing.
    /// </summary>
    Task<BackupPlan> PlanAsync(BackupRun run, CancellationToken ct);

    /// <summary>Work on the live VM before the snapshot (the CBT strategy enables CBT at a full here).</summary>
    Task BeforeSnapshotAsync(BackupRun run, BackupPlan plan, CancellationToken ct);

    /// <summary>Reads the snapshot's data into the backup being written (disks, files, manifest properties).</summary>
    Task TransferAsync(BackupRun run, BackupPlan plan, SnapshotInfo snapshot, BackupWriter writer, CancellationToken ct);

    /// <summary>
    /// After the commit, the snapshot UUIDs of earlier backups that the next incremental no longer needs (CBT: the
    /// previous one; XVA, cumulative: the previous incremental's, never the full's).
    /// </summary>
    IReadOnlyList<string> SnapshotsToRelease(BackupRun run, BackupPlan plan, BackupManifest committed);
}

/// <summary>The outcome of one VM's backup.</summary>
public sealed record BackupResult(BackupManifest Backup, string RepositoryPath, TimeSpan Duration, bool SnapshotKept);

/// <summary>
/// One VM's backup, start to end: chain lock, clean-up of crashed runs, plan (never a silent full), pre-snapshot
/// script, snapshot (quiesced if asked and possible), post-snapshot script, metadata, the strategy's transfer, atomic
/// commit, then the snapshot kept for the next incremental and older ones released. Every snapshot it creates is
/// removed on every failure path, cancellation included.
/// </summary>
public sealed class BackupEngine
{
    private readonly IReadOnlyDictionary<BackupStrategy, IBackupStrategy> _strategies;

    public BackupEngine(params IBackupStrategy[] strategies)
    {
        _strategies = strategies.ToDictionary(s => s.Kind);
    }

    public async Task<BackupResult> RunAsync(XapiSession session, BackupRepository repository, string vmRef,
        BackupOptions options, IBackupObserver observer, CancellationToken ct)
    {
        var started = DateTime.UtcNow;
        if (!_strategies.TryGetValue(options.Strategy, out var strategy))
            throw new NotSupportedException($"The {options.Strategy} strategy is not available in this build.");
        var vm = await session.GetRecordAsync<VmRecord>(vmRef, ct).ConfigureAwait(false);
        if (vm.IsASnapshot || vm.IsATemplate || vm.IsControlDomain)
            throw new InvalidOperationException($"'{vm.NameLabel}' is a {(vm.IsASnapshot ? "snapshot" : vm.IsATemplate ? "template" : "control domain")}; only VMs can be backed up.");
        var (disks, excluded) = await ResolveDisksAsync(session, vm, options, ct).ConfigureAwait(false);

        await using var chainLock = await repository.LockChainAsync(vm.Uuid, options.LockWait, ct).ConfigureAwait(false);
        foreach (var leftover in repository.CleanInterrupted(chainLock))
            observer.OnWarning($"Removed an incomplete backup left by an interrupted run: {leftover}");
        var history = repository.ListBackups(vm.Uuid).Where(b => b.Strategy == options.Strategy).ToList();
        var run = new BackupRun(session, repository, vm, disks, excluded, options, observer, history);

        run.Report("Planning", null, 0, 0);
        var plan = await strategy.PlanAsync(run, ct).ConfigureAwait(false);
        if (options.Type == BackupType.Incremental && plan.Type == BackupType.Full)
        {
            string reason = plan.FullReason ?? "no usable previous backup.";
            if (options.NoFallback) throw new IncrementalNotPossibleException(vm.NameLabel, reason);
            observer.OnWarning($"'{vm.NameLabel}': taking a full backup instead of an incremental: {reason}");
            plan = plan with { FullReason = reason };
        }
        await strategy.BeforeSnapshotAsync(run, plan, ct).ConfigureAwait(false);

        var snapshot = await SnapshotWithScriptsAsync(run, ct).ConfigureAwait(false);
        BackupManifest committed;
        try
        {
            var manifest = new BackupManifest
            {
                VmUuid = vm.Uuid, VmName = vm.NameLabel, Strategy = options.Strategy, Type = plan.Type,
                BaseId = plan.Base?.Id, SnapshotUuid = snapshot.Uuid, SnapshotTime = new DateTimeOffset(snapshot.Time, TimeSpan.Zero),
                FullReason = plan.FullReason,
            };
            manifest.Properties["snapshotConsistency"] = snapshot.Quiesced ? "quiesced" : "crash-consistent";
            await using var writer = repository.BeginBackup(chainLock, manifest);
            var excludedRefs = excluded.Select(d => d.Vdi.OpaqueRef).ToHashSet();
            run.Report("VM metadata", null, 0, 0);
            // The metadata (XAPI reads only) is captured while the data transfer starts: on an incremental the transfer
            // first waits for the NBD connection's dom0 plug, and the two together were a measurable part of it.
            // A metadata failure stops the transfer; vm.json is written once both are done.
            using var transferCts = CancellationTokenSource.CreateLinkedTokenSource(ct);
            var metadataTask = VmMetadata.CaptureAsync(session, vm, snapshot.Uuid, excludedRefs, ct);
            _ = metadataTask.ContinueWith(_ => { try { transferCts.Cancel(); } catch (ObjectDisposedException) { } },
                CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
            try { await strategy.TransferAsync(run, plan, snapshot, writer, transferCts.Token).ConfigureAwait(false); }
            catch (Exception) when (!metadataTask.IsCompleted || metadataTask.IsFaulted)
            {
                // Report the metadata's own failure rather than the cancellation it caused; else the transfer's.
                try { await metadataTask.ConfigureAwait(false); }
                catch (Exception) when (!metadataTask.IsFaulted) { }
                throw;
            }
            await writer.WriteVmMetadataAsync(await metadataTask.ConfigureAwait(false), ct).ConfigureAwait(false);
            run.Report("Committing", null, 0, 0);
            committed = await writer.CommitAsync(ct).ConfigureAwait(false);
        }
        catch
        {
            await SnapshotService.DestroyQuietlyAsync(session, snapshot.Ref, observer).ConfigureAwait(false);
            throw;
        }

        // The backup is safe in the repository; what follows only tidies the host, so a failure here is a warning.
        bool kept = options.KeepSnapshot;
        run.Report("Releasing snapshots", null, 0, 0);
        try
        {
            if (kept)
            {
                if (options.PurgeSnapshotData) await SnapshotService.PurgeDataAsync(session, snapshot.Ref, vm.Uuid, committed.Id, ct).ConfigureAwait(false);
                else await SnapshotService.MarkKeptAsync(session, snapshot.Ref, committed.Id, ct).ConfigureAwait(false);
            }
            else await SnapshotService.DestroyAsync(session, snapshot.Ref, ct).ConfigureAwait(false);
            foreach (var uuid in strategy.SnapshotsToRelease(run, plan, committed))
                await ReleaseSnapshotAsync(run, uuid, ct).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is XapiException or XapiConnectionException)
        {
            observer.OnWarning($"The backup {committed.Id} of '{vm.NameLabel}' is complete, but tidying its snapshots failed: {ex.Message}");
        }
        return new BackupResult(committed, repository.GetBackupFolder(committed), DateTime.UtcNow - started, kept);
    }

    private static async Task<SnapshotInfo> SnapshotWithScriptsAsync(BackupRun run, CancellationToken ct)
    {
        var vm = run.Vm;
        var o = run.Options;
        string name = $"{vm.NameLabel} (VProtect backup {DateTime.UtcNow:yyyy-MM-dd HH:mm:ss}Z)";
        var ignore = run.ExcludedDisks.Select(d => d.Vdi.OpaqueRef).ToArray();
        if (o.PreSnapshot is not null)
        {
            run.Report("Pre-snapshot script", null, 0, 0);
            try { await o.PreSnapshot(new SnapshotScriptContext(vm.Uuid, vm.NameLabel, "pre-snapshot", null), ct).ConfigureAwait(false); }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                // The pre script may have half-frozen the application: the post script still runs.
                await RunPostScriptAsync(run, null).ConfigureAwait(false);
                throw new SnapshotScriptException("pre-snapshot", vm.NameLabel, ex);
            }
        }
        SnapshotInfo? snapshot = null;
        try
        {
            run.Report("Snapshot", null, 0, 0);
            snapshot = await SnapshotService.TakeAsync(run.Session, vm, name, o.Quiesce, ignore, run.Observer, ct).ConfigureAwait(false);
            return snapshot;
        }
        finally
        {
            if (o.PreSnapshot is not null || o.PostSnapshot is not null)
                await RunPostScriptAsync(run, snapshot?.Uuid).ConfigureAwait(false);
        }
    }

    private static async Task RunPostScriptAsync(BackupRun run, string? snapshotUuid)
    {
        if (run.Options.PostSnapshot is null) return;
        run.Report("Post-snapshot script", null, 0, 0);
        try
        {
            // Runs even when the run is being cancelled: it undoes what the pre script did in the guest.
            using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(5));
            await run.Options.PostSnapshot(new SnapshotScriptContext(run.Vm.Uuid, run.Vm.NameLabel, "post-snapshot", snapshotUuid), cts.Token).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            run.Observer.OnWarning($"The post-snapshot script for '{run.Vm.NameLabel}' failed: {ex.Message}");
        }
    }

    private static async Task ReleaseSnapshotAsync(BackupRun run, string snapshotUuid, CancellationToken ct)
    {
        var (session, observer) = (run.Session, run.Observer);
        string snapshotRef;
        try { snapshotRef = await session.GetByUuidAsync("VM", snapshotUuid, ct).ConfigureAwait(false); }
        catch (XapiException ex) when (ex.ErrorCode is "UUID_INVALID" or "HANDLE_INVALID")
        {
            // No snapshot VM: gone, or purged (-PurgeSnapshotData destroyed the VM and kept its disks as cbt_metadata
            // VDIs, which the new backup has now replaced as the base).
            var previous = run.History.LastOrDefault(b => b.SnapshotUuid == snapshotUuid);
            var vdis = previous?.Disks.Select(d => d.Properties.GetValueOrDefault(Cbt.CbtStrategy.SnapshotVdiProperty)).OfType<string>() ?? [];
            int released = await SnapshotService.ReleasePurgedVdisAsync(session, vdis, run.Vm.Uuid, ct).ConfigureAwait(false);
            if (released > 0) observer.OnVerbose($"Released the {released} metadata-only disk(s) of the previous purged snapshot {snapshotUuid}.");
            return;
        }
        var record = await session.GetRecordAsync<VmRecord>(snapshotRef, ct).ConfigureAwait(false);
        if (!record.OtherConfig.TryGetValue(SnapshotService.CreatedByKey, out var by) || by != SnapshotService.CreatedByValue)
        {
            observer.OnWarning($"Snapshot {snapshotUuid} was not created by this module; leaving it in place.");
            return;
        }
        await SnapshotService.DestroyAsync(session, snapshotRef, ct).ConfigureAwait(false);
        observer.OnVerbose($"Released the previous snapshot {snapshotUuid}.");
    }

    /// <summary>The VM's disks (VBDs of type Disk with a VDI), split into included and excluded.</summary>
    public static async Task<(List<BackupDisk> Included, List<BackupDisk> Excluded)> ResolveDisksAsync(
        XapiSession session, VmRecord vm, BackupOptions options, CancellationToken ct)
    {
        var included = new List<BackupDisk>();
        var excluded = new List<BackupDisk>();
        var unmatched = new HashSet<string>(options.ExcludeDisks, StringComparer.OrdinalIgnoreCase);
        foreach (var vbdRef in vm.VBDs)
        {
            var vbd = await session.GetRecordAsync<VbdRecord>(vbdRef, ct).ConfigureAwait(false);
            if (vbd.Type != "Disk" || XapiValue.IsNullRef(vbd.VDI)) continue;
            var vdi = await session.GetRecordAsync<VdiRecord>(vbd.VDI, ct).ConfigureAwait(false);
            var disk = new BackupDisk(vbd, vdi);
            var names = new[] { vbd.Device, vbd.UserDevice, vdi.Uuid };
            var hit = names.FirstOrDefault(n => !string.IsNullOrEmpty(n) && unmatched.Contains(n));
            if (hit is not null)
            {
                excluded.Add(disk);
                foreach (var n in names) unmatched.Remove(n);
            }
            else included.Add(disk);
        }
        if (unmatched.Count > 0)
            throw new ArgumentException($"'{vm.NameLabel}' has no disk {string.Join(", ", unmatched)} to exclude (give a device such as xvdb, a userdevice number, or a VDI uuid).");
        if (excluded.Count > 0 && options.Strategy == BackupStrategy.Xva)
            throw new ArgumentException("The XVA strategy exports the whole VM; disks cannot be excluded. Use the CBT strategy to exclude disks.");
        if (included.Count == 0)
            throw new InvalidOperationException($"'{vm.NameLabel}' has no disk left to back up.");
        included.Sort((a, b) => string.CompareOrdinal(a.Vbd.UserDevice, b.Vbd.UserDevice));
        return (included, excluded);
    }
}
