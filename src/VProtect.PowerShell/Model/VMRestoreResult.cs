using VProtect.Core.Repository;
using VProtect.Core.Restore;

namespace VProtect.PowerShell;

/// <summary>What Restore-VMBackup wrote: the restored VM (or only disks) and where each disk went.</summary>
public sealed class VMRestoreResult
{
    internal VMRestoreResult(BackupManifest point, RestoreResult result)
    {
        BackupId = point.Id;
        SourceVmUuid = point.VmUuid;
        VmUuid = result.VmUuid;
        VM = result.VmName;
        NewMacAddresses = result.NewMacAddresses;
        Duration = result.Duration;
        Disks = result.Disks.Select(d => new VMRestoredDisk(d.SourceKey, d.Device ?? "", d.VdiUuid, d.BytesWritten)).ToList();
    }

    public string? VM { get; }
    public string? VmUuid { get; }
    public string BackupId { get; }
    public string SourceVmUuid { get; }
    public bool NewMacAddresses { get; }
    public IReadOnlyList<VMRestoredDisk> Disks { get; }
    public TimeSpan Duration { get; }
    public override string ToString() => VM ?? string.Join(", ", Disks.Select(d => d.VdiUuid));
}

public sealed record VMRestoredDisk(string SourceVdiUuid, string Device, string VdiUuid, long BytesWritten);
