using VProtect.Core.Formats;
using VProtect.Core.Repository;

namespace VProtect.Core.Lifecycle;

/// <summary>
/// One chain of a VM in a repository: a full and the incrementals that depend on it (directly or through each
/// other), oldest first. Every backup in it is a restore point.
/// </summary>
public sealed class BackupChain
{
    public required string VmUuid { get; init; }
    public required string VmName { get; init; }
    public required BackupStrategy Strategy { get; init; }
    /// <summary>The full the chain starts with; null for incrementals whose full is missing (a broken chain).</summary>
    public BackupManifest? Full { get; init; }
    /// <summary>The incrementals, oldest first.</summary>
    public required IReadOnlyList<BackupManifest> Incrementals { get; init; }
    /// <summary>Why the chain cannot be restored (a missing full), or null.</summary>
    public string? Problem { get; init; }

    /// <summary>Full first, then the incrementals: every restore point of the chain.</summary>
    public IReadOnlyList<BackupManifest> RestorePoints => Full is null ? Incrementals : new[] { Full }.Concat(Incrementals).ToList();
    public int RestorePointCount => RestorePoints.Count;
    public BackupManifest Newest => RestorePoints[^1];
    public DateTimeOffset FirstUtc => RestorePoints[0].CreatedUtc;
    public DateTimeOffset LastUtc => Newest.CreatedUtc;
    /// <summary>Bytes the chain's backups take in the repository.</summary>
    public long TotalBytes => RestorePoints.Sum(b => b.StoredBytes);
    /// <summary>
    /// Bytes only the newest restore point needs: for a CBT chain every backup (the blocks overlay), for an XVA chain
    /// the full and the newest cumulative incremental. TotalBytes minus this is what retention can give back.
    /// </summary>
    public long UniqueBytes => Strategy == BackupStrategy.Xva && Full is not null
        ? Full.StoredBytes + (Incrementals.Count > 0 ? Incrementals[^1].StoredBytes : 0)
        : TotalBytes;
}

/// <summary>Groups a repository's backups into chains.</summary>
public static class BackupChains
{
    /// <summary>The chains of one VM or of all, oldest first per VM. Unreadable backup folders are reported in <paramref name="problems"/>.</summary>
    public static IReadOnlyList<BackupChain> Get(BackupRepository repository, string? vmUuid = null, List<BackupFormatException>? problems = null)
    {
        var all = repository.ListBackups(vmUuid, problems);
        var result = new List<BackupChain>();
        foreach (var vm in all.GroupBy(b => b.VmUuid))
        {
            var byId = vm.ToDictionary(b => b.Id);
            var rootOf = new Dictionary<string, string>();
            string RootOf(BackupManifest b)
            {
                var seen = new List<string>();
                var current = b;
                while (true)
                {
                    if (rootOf.TryGetValue(current.Id, out var known)) { foreach (var s in seen) rootOf[s] = known; return known; }
                    seen.Add(current.Id);
                    // A missing base ends the walk: the chain is rooted at the missing id (reported as broken).
                    if (current.BaseId is null || !byId.TryGetValue(current.BaseId, out var parent) || seen.Count > byId.Count)
                    {
                        string root = current.BaseId is null ? current.Id : current.BaseId;
                        foreach (var s in seen) rootOf[s] = root;
                        return root;
                    }
                    current = parent;
                }
            }
            foreach (var group in vm.GroupBy(RootOf))
            {
                byId.TryGetValue(group.Key, out var full);
                if (full is not null && full.Type != BackupType.Full) full = null;
                var incrementals = group.Where(b => b != full).OrderBy(b => b.CreatedUtc).ThenBy(b => b.Id, StringComparer.Ordinal).ToList();
                var first = full ?? incrementals[0];
                result.Add(new BackupChain
                {
                    VmUuid = vm.Key,
                    VmName = group.OrderBy(b => b.CreatedUtc).Last().VmName,
                    Strategy = first.Strategy,
                    Full = full,
                    Incrementals = incrementals,
                    Problem = full is null ? $"the full backup {group.Key} these incrementals depend on is missing; they cannot be restored." : null,
                });
            }
        }
        return result.OrderBy(c => c.VmName, StringComparer.OrdinalIgnoreCase).ThenBy(c => c.VmUuid).ThenBy(c => c.FirstUtc).ToList();
    }
}
