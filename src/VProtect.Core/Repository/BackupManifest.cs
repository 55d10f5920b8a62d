using System.Text.Json;
using System.Text.Json.Serialization;

namespace VProtect.Core.Repository;

public enum BackupStrategy { Cbt, Xva }

public enum BackupType { Full, Incremental }

/// <summary>
/// What one committed backup holds: written last, as <c>backup.json</c>, inside the backup's folder.
/// A backup is listed only when this file parses and its folder has its final (non-partial) name.
/// </summary>
public sealed class BackupManifest
{
    public const int CurrentFormatVersion = 1;

    public int FormatVersion { get; set; } = CurrentFormatVersion;
    public string Id { get; set; } = "";
    public string VmUuid { get; set; } = "";
    public string VmName { get; set; } = "";
    public BackupStrategy Strategy { get; set; }
    public BackupType Type { get; set; }
    /// <summary>The backup this one is relative to (null for a full). For cumulative XVA incrementals, the full.</summary>
    public string? BaseId { get; set; }
    public DateTimeOffset CreatedUtc { get; set; }
    /// <summary>UUID of the VM snapshot the data was read from (kept on the host for the next incremental).</summary>
    public string? SnapshotUuid { get; set; }
    public DateTimeOffset? SnapshotTime { get; set; }
    /// <summary>Why a full was taken when an incremental was asked for (never a silent full).</summary>
    public string? FullReason { get; set; }
    public List<DiskManifest> Disks { get; set; } = new();
    /// <summary>Whole files stored as they came (an XVA, VHD deltas, the VM metadata), each with its length and hash.</summary>
    public List<FileManifest> Files { get; set; } = new();
    /// <summary>Free-form facts a strategy needs later (e.g. the snapshot VDI uuid per disk).</summary>
    public Dictionary<string, string> Properties { get; set; } = new();

    public long StoredBytes => Disks.Sum(d => d.StoredBytes) + Files.Sum(f => f.Length);

    internal static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        Converters = { new JsonStringEnumConverter() },
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
    };
}

/// <summary>One disk of a backup in block form: the extents stored, their data file and index.</summary>
public sealed class DiskManifest
{
    /// <summary>Stable key of the disk across a chain: the source VDI uuid.</summary>
    public string Key { get; set; } = "";
    public string? Device { get; set; }
    public string? Name { get; set; }
    public long VirtualSize { get; set; }
    /// <summary>Data file (zstd frames) relative to the backup folder.</summary>
    public string DataFile { get; set; } = "";
    /// <summary>Index file relative to the backup folder (see <see cref="BlockIndex"/>).</summary>
    public string IndexFile { get; set; } = "";
    public int RecordCount { get; set; }
    /// <summary>Bytes of disk content this backup holds (changed bytes for an incremental).</summary>
    public long DataBytes { get; set; }
    /// <summary>Bytes the data and index files take in the repository.</summary>
    public long StoredBytes { get; set; }
    public Dictionary<string, string> Properties { get; set; } = new();
}

/// <summary>A whole file kept in a backup (XVA, VHD delta, VM metadata) with its SHA-256.</summary>
public sealed class FileManifest
{
    public string Name { get; set; } = "";
    public long Length { get; set; }
    public string Sha256 { get; set; } = "";
    /// <summary>What the file is: "xva", "vhd", "vm-metadata", …</summary>
    public string Kind { get; set; } = "";
    /// <summary>For per-disk files: the disk key.</summary>
    public string? DiskKey { get; set; }
}
