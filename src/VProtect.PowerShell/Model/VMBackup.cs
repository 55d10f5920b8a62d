using VProtect.Core.Repository;

namespace VProtect.PowerShell;

/// <summary>One committed backup in a repository, as Start-VMBackup and Get-VMBackup write it and Restore-VMBackup takes it.</summary>
public sealed class VMBackup
{
    internal VMBackup(BackupRepository repository, BackupManifest manifest, int chainLength, string status)
    {
        Manifest = manifest;
        RepositoryPath = repository.RootPath;
        Path = repository.GetBackupFolder(manifest);
        ChainLength = chainLength;
        Status = status;
    }

    public string Id => Manifest.Id;
    public string VM => Manifest.VmName;
    public string VmUuid => Manifest.VmUuid;
    public string Strategy => Manifest.Strategy.ToString();
    public string Type => Manifest.Type.ToString();
    public DateTimeOffset Time => Manifest.SnapshotTime ?? Manifest.CreatedUtc;
    public DateTimeOffset CreatedUtc => Manifest.CreatedUtc;
    /// <summary>Bytes the backup takes in the repository.</summary>
    public long Size => Manifest.StoredBytes;
    /// <summary>Bytes of disk content this backup holds (the changed bytes for an incremental).</summary>
    public long Changed => Manifest.Disks.Sum(d => d.DataBytes);
    /// <summary>Backups a restore of this point reads: 1 for a full, 1 + incrementals since the full otherwise.</summary>
    public int ChainLength { get; }
    public string Status { get; }
    public string? BaseId => Manifest.BaseId;
    public string? FullReason => Manifest.FullReason;
    public string? SnapshotUuid => Manifest.SnapshotUuid;
    public IReadOnlyList<VMBackupDisk> Disks => Manifest.Disks.Select(d => new VMBackupDisk(d)).ToList();
    public string RepositoryPath { get; }
    public string Path { get; }
    /// <summary>Duration of the run that wrote it (Start-VMBackup only).</summary>
    public TimeSpan? Duration { get; internal set; }
    internal BackupManifest Manifest { get; }

    internal static VMBackup From(BackupRepository repository, BackupManifest manifest)
    {
        try
        {
            var chain = repository.GetChain(manifest);
            return new VMBackup(repository, manifest, chain.Count, "Complete");
        }
        catch (Exception ex) when (ex is RepositoryException or Core.Formats.BackupFormatException or IOException)
        {
            return new VMBackup(repository, manifest, 0, "BrokenChain");
        }
    }

    public override string ToString() => $"{VM} {Type} {Time:u} ({Id})";
}

public sealed class VMBackupDisk
{
    internal VMBackupDisk(DiskManifest d)
    {
        Key = d.Key; Device = d.Device ?? ""; Name = d.Name ?? ""; VirtualSize = d.VirtualSize; DataBytes = d.DataBytes; StoredBytes = d.StoredBytes;
        Layers = d.Layers().Count; DeadBytes = d.DeadBytes;
        SnapshotVdi = d.Properties.TryGetValue("snapshotVdi", out var s) ? s : null;
        Transport = d.Properties.TryGetValue("transport", out var t) ? t : null;
    }

    /// <summary>The source VDI uuid.</summary>
    public string Key { get; }
    public string Device { get; }
    public string Name { get; }
    public long VirtualSize { get; }
    public long DataBytes { get; }
    public long StoredBytes { get; }
    /// <summary>Data files the disk is read from (more than 1 after merges: repository format version 2).</summary>
    public int Layers { get; }
    /// <summary>Bytes of StoredBytes that newer layers overwrote; a compaction (a later merge) gives them back.</summary>
    public long DeadBytes { get; }
    public string? SnapshotVdi { get; }
    public string? Transport { get; }
    public override string ToString() => $"{Device}: {DataBytes} of {VirtualSize} bytes";
}
