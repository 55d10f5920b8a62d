using VProtect.Core.Repository;

namespace VProtect.Core.Lifecycle;

/// <summary>
/// Retention as Storware defines it: by versions and by days, separately for fulls and incrementals; a restore point
/// goes when any limit that applies to it is exceeded (whichever is hit first). KeepLast/KeepDays count every restore
/// point; KeepFullLast/KeepFullDays govern fulls (when neither is given, fulls follow KeepLast/KeepDays). The newest
/// restore point of a VM is always kept.
/// </summary>
public sealed record RetentionPolicy(int? KeepLast = null, int? KeepDays = null, int? KeepFullLast = null, int? KeepFullDays = null)
{
    public bool IsEmpty => KeepLast is null && KeepDays is null && KeepFullLast is null && KeepFullDays is null;

    /// <summary>The ids of the restore points of one VM (any order) that this policy lets go at <paramref name="now"/>.</summary>
    public HashSet<string> Expired(IReadOnlyList<BackupManifest> backupsOfVm, DateTimeOffset now)
    {
        var newestFirst = backupsOfVm.OrderByDescending(b => b.CreatedUtc).ThenByDescending(b => b.Id, StringComparer.Ordinal).ToList();
        var expired = new HashSet<string>(StringComparer.Ordinal);
        bool fullRules = KeepFullLast is not null || KeepFullDays is not null;
        int fullRank = 0;
        for (int rank = 0; rank < newestFirst.Count; rank++)
        {
            var b = newestFirst[rank];
            double age = (now - b.CreatedUtc).TotalDays;
            bool goes;
            if (b.Type == BackupType.Full && fullRules)
                goes = (KeepFullLast is { } n && fullRank >= n) || (KeepFullDays is { } d && age > d);
            else
                goes = (KeepLast is { } n && rank >= n) || (KeepDays is { } d && age > d);
            if (b.Type == BackupType.Full) fullRank++;
            if (goes && rank > 0) expired.Add(b.Id);
        }
        return expired;
    }
}

public enum RetentionActionKind
{
    /// <summary>The backup is deleted: nothing that stays depends on it.</summary>
    Delete,
    /// <summary>Expired backups are merged into a kept restore point that depends on them, which then no longer does.</summary>
    Merge,
    /// <summary>Expired but kept: restore points that stay depend on it and its format cannot be merged (an XVA full).</summary>
    Keep,
}

/// <summary>One step of applying retention; <see cref="Absorbed"/> lists what a merge folds into <see cref="Backup"/>.</summary>
public sealed record RetentionAction(RetentionActionKind Kind, BackupManifest Backup, IReadOnlyList<BackupManifest> Absorbed, string Reason)
{
    public override string ToString() => Kind switch
    {
        RetentionActionKind.Merge => $"merge {string.Join(", ", Absorbed.Select(a => a.Id))} into {Backup.Id} ({Reason})",
        _ => $"{Kind.ToString().ToLowerInvariant()} {Backup.Id} ({Reason})",
    };
}

/// <summary>Turns a set of expired restore points into chain-safe actions: every kept restore point still restores exactly.</summary>
public static class RetentionPlanner
{
    public static IReadOnlyList<RetentionAction> Plan(BackupRepository repository, string vmUuid, ISet<string> expired)
    {
        var actions = new List<RetentionAction>();
        foreach (var chain in BackupChains.Get(repository, vmUuid))
        {
            if (chain.Full is null) continue; // a broken chain is reported by Test-VMBackup, never merged
            var points = chain.RestorePoints;
            if (chain.Strategy == BackupStrategy.Xva)
            {
                bool anyKeptIncremental = chain.Incrementals.Any(i => !expired.Contains(i.Id));
                foreach (var i in chain.Incrementals.Where(i => expired.Contains(i.Id)).Reverse())
                    actions.Add(new(RetentionActionKind.Delete, i, Array.Empty<BackupManifest>(), "expired; cumulative XVA incrementals depend only on the full"));
                if (chain.Full is { } full && expired.Contains(full.Id))
                    actions.Add(anyKeptIncremental
                        ? new(RetentionActionKind.Keep, full, Array.Empty<BackupManifest>(), "expired, but kept incrementals depend on this XVA full")
                        : new(RetentionActionKind.Delete, full, Array.Empty<BackupManifest>(), "expired"));
                continue;
            }
            // CBT: each kept point absorbs the run of expired points right before it; expired points after the
            // last kept one have no dependents and are deleted.
            var run = new List<BackupManifest>();
            var deletes = new List<RetentionAction>();
            foreach (var p in points)
            {
                if (expired.Contains(p.Id)) { run.Add(p); continue; }
                if (run.Count > 0)
                {
                    string why = run[0].Type == BackupType.Full ? "rolled forward into a synthetic full" : "merged forward";
                    actions.Add(new(RetentionActionKind.Merge, p, run.ToList(), why));
                    deletes.AddRange(run.Select(r => new RetentionAction(RetentionActionKind.Delete, r, Array.Empty<BackupManifest>(), $"expired; merged into {p.Id}")));
                    run.Clear();
                }
            }
            deletes.AddRange(run.Select(r => new RetentionAction(RetentionActionKind.Delete, r, Array.Empty<BackupManifest>(), "expired")));
            // Newest first: at every moment no remaining backup points at a deleted one.
            actions.AddRange(deletes.OrderByDescending(d => d.Backup.CreatedUtc).ThenByDescending(d => d.Backup.Id, StringComparer.Ordinal));
        }
        return actions;
    }
}
