using VProtect.Core.Backup;
using VProtect.Core.Repository;
using VProtect.Core.Xapi;

namespace VProtect.Core.Restore;

/// <summary>What a user asked for one restore (the parameters of Restore-VMBackup).</summary>
public sealed class RestoreOptions
{
    /// <summary>Name of the restored VM; default: the original name.</summary>
    public string? Name { get; set; }
    /// <summary>SR to restore the disks into (uuid or name); default: each disk's original SR if it exists, else the pool's default SR.</summary>
    public string? StorageRepository { get; set; }
    /// <summary>Restore only these disks (device, userdevice or source VDI uuid) as new VDIs, without recreating the VM.</summary>
    public IReadOnlyCollection<string>? Disks { get; set; }
    public bool PowerOn { get; set; }
}

/// <summary>Everything a restore strategy needs.</summary>
public sealed record RestoreRun(XapiSession Session, BackupRepository Repository, BackupManifest Point,
    IReadOnlyList<BackupManifest> Chain, RestoreOptions Options, IBackupObserver Observer);

/// <summary>A disk written by a restore.</summary>
public sealed record RestoredDisk(string SourceKey, string? Device, string VdiUuid, long BytesWritten);

/// <summary>The outcome of a restore: the new (or re-created) VM, or only disks when RestoreOptions.Disks was given.</summary>
public sealed record RestoreResult(string? VmUuid, string? VmName, IReadOnlyList<RestoredDisk> Disks, bool NewMacAddresses, TimeSpan Duration);

/// <summary>How one strategy's backups come back: CBT (recreate from metadata, import merged chains) or XVA (import, rename, apply).</summary>
public interface IRestoreStrategy
{
    BackupStrategy Kind { get; }
    /// <summary>Restores; on failure leaves nothing half-restored in the pool (or names what it could not remove).</summary>
    Task<RestoreResult> RestoreAsync(RestoreRun run, CancellationToken ct);
}

/// <summary>Validates the chain of a restore point and hands it to the strategy that wrote it.</summary>
public sealed class RestoreEngine
{
    private readonly IReadOnlyDictionary<BackupStrategy, IRestoreStrategy> _strategies;

    public RestoreEngine(params IRestoreStrategy[] strategies) => _strategies = strategies.ToDictionary(s => s.Kind);

    public async Task<RestoreResult> RestoreAsync(XapiSession session, BackupRepository repository, BackupManifest point,
        RestoreOptions options, IBackupObserver observer, CancellationToken ct)
    {
        if (!_strategies.TryGetValue(point.Strategy, out var strategy))
            throw new NotSupportedException($"Backups of the {point.Strategy} strategy cannot be restored by this build.");
        var chain = repository.GetChain(point); // throws a clear error on a broken chain, before the pool is touched
        var started = DateTime.UtcNow;
        var result = await strategy.RestoreAsync(new RestoreRun(session, repository, point, chain, options, observer), ct).ConfigureAwait(false);
        return result with { Duration = DateTime.UtcNow - started };
    }
}
