using VProtect.Core.Backup;
using VProtect.Core.Repository;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;

namespace VProtect.Core.Lifecycle;

/// <summary>A snapshot this module created on a host, and whether anything still needs it.</summary>
public sealed record BackupSnapshot(string OpaqueRef, string Uuid, string Name, string VmUuid, string? VmName, string State,
    string? BackupId, DateTime SnapshotTime, bool IsOrphaned, string? OrphanReason);

/// <summary>
/// Finds the snapshots SnapshotService tagged (vprotect:created-by) and tells which are orphans: a run that died
/// (still in-progress), one superseded by a newer kept snapshot of the same VM, one whose VM is gone, or (given a
/// repository) one whose backup is no longer in it.
/// </summary>
public static class BackupSnapshots
{
    public static async Task<IReadOnlyList<BackupSnapshot>> FindAsync(XapiSession session, string? vmUuid, BackupRepository? repository, CancellationToken ct)
    {
        var all = await session.GetAllRecordsAsync<VmRecord>(ct).ConfigureAwait(false);
        var vmsByUuid = all.Where(v => !v.IsASnapshot).GroupBy(v => v.Uuid).ToDictionary(g => g.Key, g => g.First());
        var tagged = all.Where(v => v.IsASnapshot
                                    && v.OtherConfig.TryGetValue(SnapshotService.CreatedByKey, out var by) && by == SnapshotService.CreatedByValue)
                        .Select(v => (Record: v, Vm: v.OtherConfig.GetValueOrDefault(SnapshotService.VmKey) ?? ""))
                        .Where(t => vmUuid is null || string.Equals(t.Vm, vmUuid, StringComparison.OrdinalIgnoreCase))
                        .ToList();
        var newestKept = tagged.Where(t => t.Record.OtherConfig.GetValueOrDefault(SnapshotService.StateKey) == SnapshotService.StateKept)
                               .GroupBy(t => t.Vm)
                               .ToDictionary(g => g.Key, g => g.OrderBy(t => t.Record.SnapshotTime).ThenBy(t => t.Record.OtherConfig.GetValueOrDefault(SnapshotService.BackupIdKey), StringComparer.Ordinal).Last().Record.Uuid);
        var result = new List<BackupSnapshot>();
        foreach (var (record, vm) in tagged)
        {
            string state = record.OtherConfig.GetValueOrDefault(SnapshotService.StateKey) ?? "";
            string? backupId = record.OtherConfig.GetValueOrDefault(SnapshotService.BackupIdKey);
            vmsByUuid.TryGetValue(vm, out var source);
            string? reason = null;
            if (state != SnapshotService.StateKept) reason = $"left '{state}' by a backup run that did not finish";
            else if (source is null) reason = "its VM no longer exists";
            else if (newestKept.GetValueOrDefault(vm) != record.Uuid) reason = "a newer snapshot is kept for the next incremental";
            else if (repository is not null && backupId is not null && repository.GetBackup(vm, backupId) is null)
                reason = $"its backup {backupId} is not in the repository {repository.RootPath}";
            result.Add(new BackupSnapshot(record.OpaqueRef, record.Uuid, record.NameLabel, vm, source?.NameLabel, state, backupId,
                record.SnapshotTime, reason is not null, reason));
        }
        return result.OrderBy(s => s.VmName).ThenBy(s => s.SnapshotTime).ToList();
    }
}
