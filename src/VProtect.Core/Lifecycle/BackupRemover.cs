using VProtect.Core.Repository;

namespace VProtect.Core.Lifecycle;

/// <summary>
/// Applies retention (or removes chosen backups) under the VM's chain lock: merges first (each commits with one
/// rename), then deletions newest first (each folder renamed to a hidden name, then deleted), so an interruption
/// at any point leaves a repository where every listed backup restores. Leftovers are cleaned on the next run.
/// </summary>
public static class BackupRemover
{
    private const string DeletingPrefix = ".deleting-";

    /// <summary>Finishes what an interrupted removal or merge left behind (needs the chain lock).</summary>
    public static IReadOnlyList<string> CleanInterrupted(BackupRepository repository, ChainLock chainLock)
    {
        var cleaned = new List<string>();
        string vmFolder = Path.Combine(repository.RootPath, "vms", chainLock.VmUuid);
        if (!Directory.Exists(vmFolder)) return cleaned;
        foreach (var dir in Directory.EnumerateDirectories(vmFolder, DeletingPrefix + "*"))
        {
            Directory.Delete(dir, recursive: true);
            cleaned.Add(dir);
        }
        foreach (var b in repository.ListBackups(chainLock.VmUuid))
        {
            if (b.Strategy != BackupStrategy.Cbt) continue;
            ChainMerger.RemoveUnreferencedFiles(repository.GetBackupFolder(b), b);
        }
        return cleaned;
    }

    /// <summary>What retention would do to one VM's backups now (for -WhatIf and for <see cref="ApplyAsync"/>).</summary>
    public static IReadOnlyList<RetentionAction> PlanRetention(BackupRepository repository, string vmUuid, RetentionPolicy policy, DateTimeOffset now)
    {
        var backups = repository.ListBackups(vmUuid);
        return RetentionPlanner.Plan(repository, vmUuid, policy.Expired(backups, now));
    }

    /// <summary>The actions that remove exactly <paramref name="ids"/> (merging what kept points need).</summary>
    public static IReadOnlyList<RetentionAction> PlanRemoval(BackupRepository repository, string vmUuid, IEnumerable<string> ids) =>
        RetentionPlanner.Plan(repository, vmUuid, new HashSet<string>(ids, StringComparer.Ordinal));

    /// <summary>Runs the actions; re-plans under the lock so a concurrent backup is never undone.</summary>
    public static Task<IReadOnlyList<RetentionAction>> ApplyAsync(BackupRepository repository, string vmUuid, Func<IReadOnlyList<RetentionAction>> plan,
        TimeSpan lockWait, Action<RetentionAction>? onAction, Func<string, Task>? checkpoint, CancellationToken ct) =>
        ApplyAsync(repository, vmUuid, plan, lockWait, CompactionPolicy.Default, onAction, checkpoint, ct);

    /// <summary>As above; <paramref name="compaction"/> decides when a merge rewrites a disk as one plain layer.</summary>
    public static async Task<IReadOnlyList<RetentionAction>> ApplyAsync(BackupRepository repository, string vmUuid, Func<IReadOnlyList<RetentionAction>> plan,
        TimeSpan lockWait, CompactionPolicy compaction, Action<RetentionAction>? onAction, Func<string, Task>? checkpoint, CancellationToken ct)
    {
        await using var chainLock = await repository.LockChainAsync(vmUuid, lockWait, ct).ConfigureAwait(false);
        CleanInterrupted(repository, chainLock);
        var actions = plan();
        foreach (var a in actions.Where(a => a.Kind == RetentionActionKind.Merge))
        {
            ct.ThrowIfCancellationRequested();
            await ChainMerger.MergeAsync(repository, chainLock, a.Backup, a.Absorbed, compaction, checkpoint, ct).ConfigureAwait(false);
            onAction?.Invoke(a);
        }
        foreach (var a in actions.Where(a => a.Kind == RetentionActionKind.Delete))
        {
            ct.ThrowIfCancellationRequested();
            string folder = repository.GetBackupFolder(a.Backup);
            string hidden = Path.Combine(Path.GetDirectoryName(folder)!, DeletingPrefix + a.Backup.Id);
            Directory.Move(folder, hidden); // atomic: the backup stops being listed here
            if (checkpoint is not null) await checkpoint($"{a.Backup.Id} unlisted").ConfigureAwait(false);
            Directory.Delete(hidden, recursive: true);
            onAction?.Invoke(a);
        }
        foreach (var a in actions.Where(a => a.Kind == RetentionActionKind.Keep)) onAction?.Invoke(a);
        return actions;
    }
}
