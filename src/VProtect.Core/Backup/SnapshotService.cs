using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;

namespace VProtect.Core.Backup;

/// <summary>A snapshot this module took: the snapshot VM and, per source VDI ref, the snapshot's VDI.</summary>
public sealed record SnapshotInfo(string Ref, string Uuid, string Name, DateTime Time, bool Quiesced,
    IReadOnlyDictionary<string, VdiRecord> VdisBySource);

/// <summary>
/// Takes, tags, finds and removes the snapshots this module creates. Every snapshot is tagged in other_config the
/// moment it exists, so one that a crash leaves behind can still be found (Get-VMBackupSnapshot -Orphaned) and
/// removed; only the one kept for the next incremental is meant to survive a run.
/// </summary>
public static class SnapshotService
{
    public const string CreatedByKey = "vprotect:created-by";
    public const string CreatedByValue = "VProtect.PowerShell";
    public const string StateKey = "vprotect:state";
    public const string VmKey = "vprotect:vm";
    public const string BackupIdKey = "vprotect:backup-id";
    public const string StateInProgress = "in-progress";
    public const string StateKept = "kept";

    private static readonly TimeSpan CleanupTimeout = TimeSpan.FromMinutes(2);

    /// <summary>Quiesced if asked and possible, else crash-consistent with a warning saying why.</summary>
    public static async Task<SnapshotInfo> TakeAsync(XapiSession session, VmRecord vm, string name, bool quiesce,
        IReadOnlyCollection<string> ignoreVdiRefs, IBackupObserver observer, CancellationToken ct)
    {
        string? snapshotRef = null;
        bool quiesced = false;
        if (quiesce)
        {
            try
            {
                snapshotRef = XapiValue.AsString(await session.CallAsyncTaskAsync("VM.snapshot_with_quiesce", new object?[] { vm.OpaqueRef, name }, null, ct).ConfigureAwait(false));
                quiesced = true;
            }
            catch (XapiException ex) when (ex.ErrorCode is "MESSAGE_REMOVED" or "MESSAGE_METHOD_UNKNOWN" or "VM_SNAPSHOT_WITH_QUIESCE_NOT_SUPPORTED"
                                              or "VM_SNAPSHOT_WITH_QUIESCE_FAILED" or "VM_SNAPSHOT_WITH_QUIESCE_TIMEOUT"
                                              or "VM_SNAPSHOT_WITH_QUIESCE_PLUGIN_DEOS_NOT_RESPOND")
            {
                string why = ex.ErrorCode == "MESSAGE_REMOVED"
                    ? "the host no longer offers quiesced snapshots (VSS support was removed in Citrix Hypervisor 8.1)"
                    : $"the host refused it ({ex.ErrorCode})";
                observer.OnWarning($"A quiesced snapshot of '{vm.NameLabel}' was not possible: {why}. Taking a crash-consistent snapshot instead.");
            }
            // VM.snapshot_with_quiesce has no ignore_vdis: drop the copies of excluded disks before anything reads them.
            if (snapshotRef is not null && ignoreVdiRefs.Count > 0)
            {
                await session.DiscardSnapshotDisksAsync(snapshotRef, ignoreVdiRefs, ct).ConfigureAwait(false);
                observer.OnVerbose($"A quiesced snapshot cannot leave disks out; the copies of the {ignoreVdiRefs.Count} excluded disk(s) were destroyed before any read.");
            }
        }
        if (snapshotRef is null)
        {
            // The one snapshot path (XapiSession.TakeVmSnapshotAsync): on hosts without ignore_vdis it snapshots every
            // disk and destroys the excluded disks' copies at once, so an excluded disk is never read nor kept.
            var taken = await session.TakeVmSnapshotAsync(vm.OpaqueRef, name, ignoreVdiRefs.ToArray(), null, ct).ConfigureAwait(false);
            snapshotRef = taken.SnapshotRef;
            if (taken.IgnoreVdisUnsupported)
                observer.OnVerbose($"This host cannot leave disks out of a snapshot (no ignore_vdis before xapi 21.4); the copies of the {taken.DiscardedVdis.Count} excluded disk(s) were destroyed before any read.");
        }
        try
        {
            await SetOtherConfigAsync(session, snapshotRef, CreatedByKey, CreatedByValue, ct).ConfigureAwait(false);
            await SetOtherConfigAsync(session, snapshotRef, VmKey, vm.Uuid, ct).ConfigureAwait(false);
            await SetOtherConfigAsync(session, snapshotRef, StateKey, StateInProgress, ct).ConfigureAwait(false);
            var record = await session.GetRecordAsync<VmRecord>(snapshotRef, ct).ConfigureAwait(false);
            var vdis = new Dictionary<string, VdiRecord>();
            foreach (var vbdRef in record.VBDs)
            {
                var vbd = await session.GetRecordAsync<VbdRecord>(vbdRef, ct).ConfigureAwait(false);
                if (vbd.Type != "Disk" || XapiValue.IsNullRef(vbd.VDI)) continue;
                var vdi = await session.GetRecordAsync<VdiRecord>(vbd.VDI, ct).ConfigureAwait(false);
                if (!XapiValue.IsNullRef(vdi.SnapshotOf)) vdis[vdi.SnapshotOf] = vdi;
            }
            observer.OnVerbose($"Snapshot {record.Uuid} of '{vm.NameLabel}' taken ({(quiesced ? "quiesced" : "crash-consistent")}).");
            return new SnapshotInfo(snapshotRef, record.Uuid, name, record.SnapshotTime, quiesced, vdis);
        }
        catch
        {
            await DestroyQuietlyAsync(session, snapshotRef, observer).ConfigureAwait(false);
            throw;
        }
    }

    public static async Task SetOtherConfigAsync(XapiSession session, string vmRef, string key, string value, CancellationToken ct)
    {
        await session.CallAsync("VM.remove_from_other_config", new object?[] { vmRef, key }, ct).ConfigureAwait(false);
        await session.CallAsync("VM.add_to_other_config", new object?[] { vmRef, key, value }, ct).ConfigureAwait(false);
    }

    /// <summary>Marks a snapshot as the one kept for the next incremental of <paramref name="backupId"/>.</summary>
    public static async Task MarkKeptAsync(XapiSession session, string snapshotRef, string backupId, CancellationToken ct)
    {
        await SetOtherConfigAsync(session, snapshotRef, StateKey, StateKept, ct).ConfigureAwait(false);
        await SetOtherConfigAsync(session, snapshotRef, BackupIdKey, backupId, ct).ConfigureAwait(false);
    }

    /// <summary>Removes a snapshot VM and its disks. Already gone is fine.</summary>
    public static Task DestroyAsync(XapiSession session, string snapshotRef, CancellationToken ct)
        => session.DestroySnapshotAsync(snapshotRef, ct);

    /// <summary>
    /// Removes the snapshot VM and destroys its disks' data, keeping only their CBT metadata (cbt_metadata VDIs),
    /// which is all the next incremental needs (list_changed_blocks accepts a cbt_metadata VDI as the earlier side).
    /// The VM goes first: data_destroy waits for the VBDs to disappear. Each VDI is tagged like the snapshot VM was
    /// (created-by, vm, backup id) so it can still be found once the VM is gone; a disk without CBT has no metadata to
    /// keep and is destroyed outright.
    /// </summary>
    public static async Task PurgeDataAsync(XapiSession session, string snapshotRef, string vmUuid, string backupId, CancellationToken ct)
    {
        IReadOnlyList<VmDisk> disks;
        try { disks = await session.GetVmDisksAsync(snapshotRef, ct).ConfigureAwait(false); }
        catch (XapiException ex) when (ex.ErrorCode == "HANDLE_INVALID") { return; }
        foreach (var disk in disks)
        {
            foreach (var (key, value) in new[] { (CreatedByKey, CreatedByValue), (VmKey, vmUuid), (BackupIdKey, backupId) })
            {
                await session.CallAsync("VDI.remove_from_other_config", new object?[] { disk.Vdi.OpaqueRef, key }, ct).ConfigureAwait(false);
                await session.CallAsync("VDI.add_to_other_config", new object?[] { disk.Vdi.OpaqueRef, key, value }, ct).ConfigureAwait(false);
            }
        }
        await IgnoreGoneAsync(() => session.CallAsyncTaskAsync("VM.destroy", new object?[] { snapshotRef }, null, ct)).ConfigureAwait(false);
        foreach (var disk in disks)
        {
            string op = disk.Vdi.CbtEnabled ? "VDI.data_destroy" : "VDI.destroy";
            await session.CallAsyncTaskAsync(op, new object?[] { disk.Vdi.OpaqueRef }, null, ct).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// Destroys the metadata-only disks (cbt_metadata VDIs) that -PurgeSnapshotData left of an earlier backup, once a
    /// newer backup has replaced them as the base. Only VDIs that are snapshots, of type cbt_metadata and tagged by this
    /// module for <paramref name="vmUuid"/> are touched; ones already gone are fine. Returns how many were destroyed.
    /// </summary>
    public static async Task<int> ReleasePurgedVdisAsync(XapiSession session, IEnumerable<string> vdiUuids, string vmUuid, CancellationToken ct)
    {
        int released = 0;
        foreach (var uuid in vdiUuids)
        {
            VdiRecord vdi;
            try { vdi = await session.GetRecordByUuidAsync<VdiRecord>(uuid, ct).ConfigureAwait(false); }
            catch (XapiException ex) when (ex.ErrorCode is "UUID_INVALID" or "HANDLE_INVALID") { continue; }
            if (!vdi.IsASnapshot || vdi.Type != "cbt_metadata") continue;
            if (!vdi.OtherConfig.TryGetValue(CreatedByKey, out var by) || by != CreatedByValue) continue;
            if (!vdi.OtherConfig.TryGetValue(VmKey, out var owner) || owner != vmUuid) continue;
            await IgnoreGoneAsync(() => session.CallAsyncTaskAsync("VDI.destroy", new object?[] { vdi.OpaqueRef }, null, ct)).ConfigureAwait(false);
            released++;
        }
        return released;
    }

    /// <summary>Best-effort removal on a failure path (also after Ctrl+C): never throws, reports what it could not do.</summary>
    public static async Task DestroyQuietlyAsync(XapiSession session, string snapshotRef, IBackupObserver observer)
    {
        using var cts = new CancellationTokenSource(CleanupTimeout);
        try
        {
            await DestroyAsync(session, snapshotRef, cts.Token).ConfigureAwait(false);
            observer.OnVerbose($"Snapshot {snapshotRef} removed.");
        }
        catch (Exception ex)
        {
            observer.OnWarning($"Could not remove snapshot {snapshotRef} after a failure ({ex.Message}). It is tagged '{CreatedByKey}'; remove it with Remove-VMBackupSnapshot or the host's tools.");
        }
    }

    /// <summary>Snapshots this module created (tagged), of one VM or all.</summary>
    public static async Task<IReadOnlyList<VmRecord>> FindTaggedAsync(XapiSession session, string? vmUuid, CancellationToken ct)
    {
        var all = await session.GetAllRecordsAsync<VmRecord>(ct).ConfigureAwait(false);
        return all.Where(v => v.IsASnapshot
                              && v.OtherConfig.TryGetValue(CreatedByKey, out var by) && by == CreatedByValue
                              && (vmUuid is null || (v.OtherConfig.TryGetValue(VmKey, out var u) && u == vmUuid)))
                  .ToList();
    }

    private static async Task IgnoreGoneAsync(Func<Task> action)
    {
        try { await action().ConfigureAwait(false); }
        catch (XapiException ex) when (ex.ErrorCode is "HANDLE_INVALID" or "UUID_INVALID") { }
    }
}
