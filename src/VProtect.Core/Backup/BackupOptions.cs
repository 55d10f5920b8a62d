using VProtect.Core.Repository;

namespace VProtect.Core.Backup;

/// <summary>What a user asked for one backup run (the parameters of Start-VMBackup).</summary>
public sealed class BackupOptions
{
    public BackupStrategy Strategy { get; set; } = BackupStrategy.Cbt;
    public BackupType Type { get; set; } = BackupType.Full;
    /// <summary>Disks to leave out, by device (xvdb), userdevice (1) or VDI uuid. CBT strategy only.</summary>
    public IReadOnlyCollection<string> ExcludeDisks { get; set; } = Array.Empty<string>();
    /// <summary>Try a quiesced snapshot first; fall back to a crash-consistent one with a warning that says why.</summary>
    public bool Quiesce { get; set; }
    /// <summary>Runs before the snapshot (application consistency). Its failure stops this VM's backup.</summary>
    public Func<SnapshotScriptContext, CancellationToken, Task>? PreSnapshot { get; set; }
    /// <summary>Runs after the snapshot, always once the pre-snapshot script ran.</summary>
    public Func<SnapshotScriptContext, CancellationToken, Task>? PostSnapshot { get; set; }
    /// <summary>Keep this run's snapshot on the host for the next incremental (the seed: only while the VM has an incremental policy).</summary>
    public bool KeepSnapshot { get; set; } = true;
    /// <summary>After the transfer, destroy the kept snapshot's data and keep only its CBT metadata (as Xen Orchestra does).</summary>
    public bool PurgeSnapshotData { get; set; }
    /// <summary>Fail instead of falling back to a full when an incremental cannot be done.</summary>
    public bool NoFallback { get; set; }
    /// <summary>Ask the host to compress exports (XVA strategy: use_compression=zstd).</summary>
    public bool UseCompression { get; set; }
    /// <summary>NBD connections per disk (CBT strategy).</summary>
    public int NbdConnections { get; set; } = 4;
    /// <summary>How long to wait for another run holding the VM's chain lock.</summary>
    public TimeSpan LockWait { get; set; } = TimeSpan.FromSeconds(30);
}

/// <summary>Passed to pre/post snapshot scripts.</summary>
public sealed record SnapshotScriptContext(string VmUuid, string VmName, string Phase, string? SnapshotUuid);

/// <summary>Receives what a run has to say; the cmdlet layer turns these into progress records, warnings and verbose text.</summary>
public interface IBackupObserver
{
    void OnProgress(BackupProgress progress);
    void OnWarning(string message);
    void OnVerbose(string message);
}

/// <summary>Progress of one VM (Disk null) or one of its disks.</summary>
public sealed record BackupProgress(string VmUuid, string VmName, string Stage, string? Disk, long BytesDone, long BytesTotal);

/// <summary>An observer that drops everything (tests, callers that do not care).</summary>
public sealed class NullBackupObserver : IBackupObserver
{
    public static readonly NullBackupObserver Instance = new();
    public void OnProgress(BackupProgress progress) { }
    public void OnWarning(string message) { }
    public void OnVerbose(string message) { }
}

/// <summary>An incremental was asked for with NoFallback, and cannot be done; the reason says why.</summary>
public sealed class IncrementalNotPossibleException : Exception
{
    public IncrementalNotPossibleException(string vmName, string reason)
        : base($"An incremental backup of '{vmName}' is not possible: {reason} Run a full backup (or drop -NoFallback to let it fall back).")
    {
        Reason = reason;
    }

    public string Reason { get; }
}

/// <summary>A pre- or post-snapshot script failed.</summary>
public sealed class SnapshotScriptException : Exception
{
    public SnapshotScriptException(string phase, string vmName, Exception inner)
        : base($"The {phase} script for '{vmName}' failed: {inner.Message}", inner)
    {
        Phase = phase;
    }

    public string Phase { get; }
}
