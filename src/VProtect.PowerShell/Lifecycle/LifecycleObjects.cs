using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;

namespace VProtect.PowerShell;

/// <summary>A chain: a full and the incrementals that depend on it.</summary>
public sealed class VMBackupChain
{
    internal VMBackupChain(BackupRepository repository, BackupChain chain)
    {
        Chain = chain;
        Full = chain.Full is null ? null : VMBackup.From(repository, chain.Full);
        Incrementals = chain.Incrementals.Select(b => VMBackup.From(repository, b)).ToArray();
        RepositoryPath = repository.RootPath;
    }

    internal BackupChain Chain { get; }
    public string VM => Chain.VmName;
    public string VmUuid => Chain.VmUuid;
    public BackupStrategy Strategy => Chain.Strategy;
    public VMBackup? Full { get; }
    public VMBackup[] Incrementals { get; }
    public VMBackup[] RestorePoints => (Full is null ? Incrementals : new[] { Full }.Concat(Incrementals)).ToArray();
    public int RestorePointCount => RestorePoints.Length;
    public DateTime First => Chain.FirstUtc.UtcDateTime;
    public DateTime Last => Chain.LastUtc.UtcDateTime;
    public long TotalSize => Chain.TotalBytes;
    public long UniqueSize => Chain.UniqueBytes;
    public string? Problem => Chain.Problem;
    public string RepositoryPath { get; }

    /// <summary>The chain drawn as a tree: the full, then each incremental under it.</summary>
    public string Tree
    {
        get
        {
            var lines = new List<string> { Full is null ? $"(missing full) {Chain.Problem}" : $"● {Full.Id}  Full  {Format(Full.Size)}" };
            for (int i = 0; i < Incrementals.Length; i++)
                lines.Add($"{(i == Incrementals.Length - 1 ? "└─" : "├─")} {Incrementals[i].Id}  Incremental  {Format(Incrementals[i].Size)}");
            return string.Join(Environment.NewLine, lines);
        }
    }

    internal static string Format(long bytes) => bytes >= 1L << 30 ? $"{bytes / (double)(1L << 30):N1} GiB"
        : bytes >= 1 << 20 ? $"{bytes / (double)(1 << 20):N1} MiB" : $"{bytes / 1024.0:N1} KiB";

    public override string ToString() => $"{VM} ({Strategy}, {RestorePointCount} restore points)";
}

/// <summary>What Test-VMBackup found for one restore point.</summary>
public sealed class VMBackupTestResult
{
    internal VMBackupTestResult(VMBackup backup, BackupVerification verification)
    {
        Backup = backup;
        Verification = verification;
    }

    internal BackupVerification Verification { get; }
    public VMBackup Backup { get; }
    public string BackupId => Backup.Id;
    public string VM => Backup.VM;
    public string Type => Backup.Type;
    public DateTimeOffset CreatedUtc => Backup.CreatedUtc;
    /// <summary>Healthy, Damaged or BrokenChain; with -Restore, RestoreFailed when the test restore did not match.</summary>
    public string Status => RestoreProblems.Count > 0 && Verification.Status == VerificationStatus.Healthy ? "RestoreFailed" : Verification.Status.ToString();
    public bool IsHealthy => Status == nameof(VerificationStatus.Healthy);
    public long BlocksChecked => Verification.BlocksChecked;
    public long BytesChecked => Verification.BytesChecked;
    public string[] Chain => Verification.ChainIds.ToArray();
    public VerificationProblem[] Problems => Verification.Problems.Concat(RestoreProblems).ToArray();
    public TimeSpan Duration => Verification.Duration;
    /// <summary>With -Restore: whether the test restore matched (null when not asked).</summary>
    public bool? Restored { get; internal set; }
    internal List<VerificationProblem> RestoreProblems { get; } = new();

    public override string ToString() => $"{VM} {BackupId}: {Status}";
}
