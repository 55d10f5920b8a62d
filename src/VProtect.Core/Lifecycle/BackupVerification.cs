using VProtect.Core.Repository;

namespace VProtect.Core.Lifecycle;

public enum VerificationStatus
{
    /// <summary>Every hash, checksum and structure of the backup and of everything it depends on checked out.</summary>
    Healthy,
    /// <summary>Some stored data is damaged (a hash mismatch, a truncated or missing file, an unparsable structure).</summary>
    Damaged,
    /// <summary>The backup depends on a backup that is not in the repository: it cannot be restored.</summary>
    BrokenChain,
}

/// <summary>One thing wrong with a backup: which backup, which file, where in it, and what.</summary>
public sealed record VerificationProblem(string BackupId, string File, long Offset, string Message)
{
    public override string ToString() => $"{BackupId}: {File} at offset {Offset}: {Message}";
}

/// <summary>The result of checking one restore point (the backup and its whole chain) without the hypervisor.</summary>
public sealed class BackupVerification
{
    public required BackupManifest Backup { get; init; }
    public VerificationStatus Status => Problems.Count == 0 ? VerificationStatus.Healthy
        : Problems.Any(p => p.Message.StartsWith(BackupVerifier.BrokenChainPrefix, StringComparison.Ordinal)) ? VerificationStatus.BrokenChain
        : VerificationStatus.Damaged;
    /// <summary>The backups checked for this restore point, oldest (the full) first.</summary>
    public IReadOnlyList<string> ChainIds { get; init; } = Array.Empty<string>();
    /// <summary>Block records (CBT) and chunks/blocks (XVA, VHD) whose checksum was verified.</summary>
    public long BlocksChecked { get; init; }
    /// <summary>Bytes of stored data read and verified (compressed size for block records; file size for whole files).</summary>
    public long BytesChecked { get; init; }
    public IReadOnlyList<VerificationProblem> Problems { get; init; } = Array.Empty<VerificationProblem>();
    public TimeSpan Duration { get; init; }
}

/// <summary>What checking one backup's own files found (shared between the restore points that depend on it).</summary>
internal sealed record OwnVerification(long Blocks, long Bytes, IReadOnlyList<VerificationProblem> Problems);
