using VProtect.Core.Backup;
using VProtect.Core.Repository;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;

namespace VProtect.Core.Lifecycle;

/// <summary>
/// A snapshot this module created on a host, and whether anything still needs it. <see cref="Kind"/> is
/// <see cref="BackupSnapshots.KindSnapshotVm"/> for a snapshot VM (<see cref="OpaqueRef"/>, <see cref="Uuid"/> and
/// <see cref="Name"/> are the VM's), or <see cref="BackupSnapshots.KindCbtMetadata"/> for the disks -PurgeSnapshotData
/// kept of one backup once their VM was destroyed (metadata-only cbt_metadata VDIs): one object per VM and backup,
/// <see cref="OpaqueRef"/> and <see cref="Uuid"/> are those of its first VDI, <see cref="VdiUuids"/> lists them all.
/// </summary>
public sealed record BackupSnapshot(string OpaqueRef, string Uuid, string Name, string VmUuid, string? VmName, string State,
    string? BackupId, DateTime SnapshotTime, bool IsOrphaned, string? OrphanReason)
{
    public string Kind { get; init; } = BackupSnapshots.KindSnapshotVm;

    /// <summary>The snapshot's disks (VDI uuids): the snapshot VM's disks, or the kept metadata-only VDIs.</summary>
    public IReadOnlyList<string> VdiUuids { get; init; } = Array.Empty<string>();
}

/// <summary>
/// Finds what SnapshotService tagged (vprotect:created-by): snapshot VMs, and the snapshot VDIs -PurgeSnapshotData
/// kept without their VM. Tells which are orphans: a run that died (still in-progress), one superseded by a newer
/// kept snapshot of the same VM (of either kind), one whose VM is gone, or (given a repository) one whose backup is
/// no longer in it.
/// </summary>
public static class BackupSnapshots
{
    public const string KindSnapshotVm = "SnapshotVm";
    public const string KindCbtMetadata = "CbtMetadata";

    /// <summary>State of kept VDIs that still hold data: the purge destroyed their VM but not (all) their data.</summary>
    public const string StateDataNotDestroyed = "data-not-destroyed";

    private sealed record Candidate(string Kind, string Ref, string Uuid, string Name, string Vm, string State, string? BackupId,
        DateTime Time, IReadOnlyList<string> VdiUuids);

    public static async Task<IReadOnlyList<BackupSnapshot>> FindAsync(XapiSession session, string? vmUuid, BackupRepository? repository, CancellationToken ct)
    {
        var all = await session.GetAllRecordsAsync<VmRecord>(ct).ConfigureAwait(false);
        var vdis = await session.GetAllRecordsAsync<VdiRecord>(ct).ConfigureAwait(false);
        var vbds = await session.GetAllRecordsAsync<VbdRecord>(ct).ConfigureAwait(false);
        var vdiUuidByRef = vdis.ToDictionary(v => v.OpaqueRef, v => v.Uuid);
        var vmsByUuid = all.Where(v => !v.IsASnapshot).GroupBy(v => v.Uuid).ToDictionary(g => g.Key, g => g.First());
        bool Mine(IReadOnlyDictionary<string, string> oc)
            => oc.TryGetValue(SnapshotService.CreatedByKey, out var by) && by == SnapshotService.CreatedByValue;
        bool Wanted(string vm) => vmUuid is null || string.Equals(vm, vmUuid, StringComparison.OrdinalIgnoreCase);

        var candidates = new List<Candidate>();
        foreach (var v in all.Where(v => v.IsASnapshot && Mine(v.OtherConfig)))
        {
            string vm = v.OtherConfig.GetValueOrDefault(SnapshotService.VmKey) ?? "";
            if (!Wanted(vm)) continue;
            var disks = vbds.Where(b => b.VM == v.OpaqueRef && b.Type == "Disk" && vdiUuidByRef.ContainsKey(b.VDI))
                            .Select(b => vdiUuidByRef[b.VDI]).OrderBy(u => u, StringComparer.Ordinal).ToList();
            candidates.Add(new Candidate(KindSnapshotVm, v.OpaqueRef, v.Uuid, v.NameLabel, vm,
                v.OtherConfig.GetValueOrDefault(SnapshotService.StateKey) ?? "", v.OtherConfig.GetValueOrDefault(SnapshotService.BackupIdKey),
                v.SnapshotTime, disks));
        }
        // Tagged snapshot VDIs with no VBD left: their snapshot VM was destroyed by -PurgeSnapshotData (a tagged VDI
        // still plugged into its snapshot VM is listed with that VM). One object per VM and backup.
        var detached = vdis.Where(d => d.IsASnapshot && d.VBDs.Count == 0 && Mine(d.OtherConfig))
                           .Select(d => (Vdi: d, Vm: d.OtherConfig.GetValueOrDefault(SnapshotService.VmKey) ?? "",
                                         BackupId: d.OtherConfig.GetValueOrDefault(SnapshotService.BackupIdKey)))
                           .Where(t => Wanted(t.Vm))
                           .GroupBy(t => (t.Vm, t.BackupId));
        foreach (var g in detached)
        {
            var members = g.OrderBy(t => t.Vdi.Uuid, StringComparer.Ordinal).Select(t => t.Vdi).ToList();
            string state = members.All(d => d.Type == "cbt_metadata") ? SnapshotService.StateKept : StateDataNotDestroyed;
            candidates.Add(new Candidate(KindCbtMetadata, members[0].OpaqueRef, members[0].Uuid,
                $"CBT metadata of backup {g.Key.BackupId ?? "(unknown)"}", g.Key.Vm, state, g.Key.BackupId,
                members.Max(d => d.SnapshotTime), members.Select(d => d.Uuid).ToList()));
        }

        // A kept VDI set counts as kept even if its purge left data behind: the next incremental can still start from it.
        static bool Keeps(Candidate c) => c.Kind == KindCbtMetadata || c.State == SnapshotService.StateKept;
        var newestKept = candidates.Where(Keeps)
                                   .GroupBy(c => c.Vm)
                                   .ToDictionary(g => g.Key, g => g.OrderBy(c => c.Time).ThenBy(c => c.BackupId, StringComparer.Ordinal).Last());
        var result = new List<BackupSnapshot>();
        foreach (var c in candidates)
        {
            vmsByUuid.TryGetValue(c.Vm, out var source);
            string? reason = null;
            if (c.Kind == KindSnapshotVm && c.State != SnapshotService.StateKept) reason = $"left '{c.State}' by a backup run that did not finish";
            else if (source is null) reason = "its VM no longer exists";
            else if (Keeps(c) && !ReferenceEquals(newestKept.GetValueOrDefault(c.Vm), c))
                reason = "a newer snapshot is kept for the next incremental";
            else if (repository is not null && c.BackupId is not null && repository.GetBackup(c.Vm, c.BackupId) is null)
                reason = $"its backup {c.BackupId} is not in the repository {repository.RootPath}";
            else if (c.Kind == KindCbtMetadata && c.BackupId is null) reason = "it names no backup";
            result.Add(new BackupSnapshot(c.Ref, c.Uuid, c.Name, c.Vm, source?.NameLabel, c.State, c.BackupId, c.Time,
                reason is not null, reason) { Kind = c.Kind, VdiUuids = c.VdiUuids });
        }
        return result.OrderBy(s => s.VmName).ThenBy(s => s.SnapshotTime).ToList();
    }

    /// <summary>
    /// Removes what <paramref name="snapshot"/> names, as it is on the host now: a snapshot VM with its disks
    /// (VM.destroy of the snapshot and its VDIs), or the kept VDIs (VDI.destroy). Only what this module tagged and
    /// nothing plugged into a VM is touched; what is already gone is fine. Returns how many VMs/VDIs were destroyed.
    /// </summary>
    public static async Task<int> RemoveAsync(XapiSession session, BackupSnapshot snapshot, CancellationToken ct)
    {
        if (snapshot.Kind == KindSnapshotVm)
        {
            var current = await FindAsync(session, null, null, ct).ConfigureAwait(false);
            var match = current.FirstOrDefault(c => c.Kind == KindSnapshotVm && c.Uuid == snapshot.Uuid);
            if (match is null) return 0;
            await SnapshotService.DestroyAsync(session, match.OpaqueRef, ct).ConfigureAwait(false);
            return 1;
        }
        if (snapshot.Kind != KindCbtMetadata) throw new ArgumentException($"Unknown snapshot kind '{snapshot.Kind}'.", nameof(snapshot));
        // Check every VDI before destroying any, so a set that changed since it was listed is left whole.
        var present = new List<VdiRecord>();
        foreach (var uuid in snapshot.VdiUuids)
        {
            VdiRecord vdi;
            try { vdi = await session.GetRecordByUuidAsync<VdiRecord>(uuid, ct).ConfigureAwait(false); }
            catch (XapiException ex) when (ex.ErrorCode is "UUID_INVALID" or "HANDLE_INVALID") { continue; }
            if (!vdi.IsASnapshot || vdi.VBDs.Count > 0
                || !vdi.OtherConfig.TryGetValue(SnapshotService.CreatedByKey, out var by) || by != SnapshotService.CreatedByValue
                || vdi.OtherConfig.GetValueOrDefault(SnapshotService.VmKey) != snapshot.VmUuid)
                throw new InvalidOperationException($"VDI {uuid} is no longer a detached snapshot disk this module kept for VM {snapshot.VmUuid}; nothing was removed.");
            present.Add(vdi);
        }
        int destroyed = 0;
        foreach (var vdi in present)
        {
            try
            {
                await session.CallAsyncTaskAsync("VDI.destroy", new object?[] { vdi.OpaqueRef }, null, ct).ConfigureAwait(false);
                destroyed++;
            }
            catch (XapiException ex) when (ex.ErrorCode is "HANDLE_INVALID" or "UUID_INVALID") { }
        }
        return destroyed;
    }
}
