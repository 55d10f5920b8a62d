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
    /// <summary>Plain backups: every disk is one data file and one index (what every reader of this format reads).</summary>
    public const int PlainFormatVersion = 1;
    /// <summary>Layered backups: a disk may keep lower layers (<see cref="DiskManifest.BaseLayers"/>), written by merges.</summary>
    public const int LayeredFormatVersion = 2;
    /// <summary>The newest manifest version this module reads; a newer one is refused, never misread.</summary>
    public const int CurrentFormatVersion = LayeredFormatVersion;

    /// <summary>
    /// 1 for a plain backup, 2 when a disk has <see cref="DiskManifest.BaseLayers"/>: a version-1 reader ignores
    /// unknown fields, so it would read only the top layer; the version makes it refuse the backup instead.
    /// </summary>
    public int FormatVersion { get; set; } = PlainFormatVersion;
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

    /// <summary>
    /// Format version 2: lower layers of this disk, oldest first, each a data file and an index in this backup's
    /// folder (hard links to the files of the backups a merge absorbed). <see cref="DataFile"/> and
    /// <see cref="IndexFile"/> are the top layer; a range is read from the newest layer that has it. Null: one layer.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public List<LayerManifest>? BaseLayers { get; set; }

    /// <summary>
    /// Bytes of this disk's data files that no read of this backup uses any more: records (or the parts of records)
    /// that newer layers overwrite, and bytes a version-1 merge left unreferenced. Compaction gives them back.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingDefault)]
    public long DeadBytes { get; set; }

    /// <summary>Every layer of the disk, oldest first, the top layer (<see cref="DataFile"/>) last.</summary>
    public IReadOnlyList<LayerManifest> Layers()
    {
        var top = new LayerManifest { DataFile = DataFile, IndexFile = IndexFile, VirtualSize = VirtualSize, RecordCount = RecordCount };
        return BaseLayers is { Count: > 0 } b ? [.. b, top] : [top];
    }
}

/// <summary>One lower layer of a disk (format version 2): a data file and its index, as written by an earlier backup.</summary>
public sealed class LayerManifest
{
    /// <summary>Data file (zstd frames) relative to the backup folder.</summary>
    public string DataFile { get; set; } = "";
    /// <summary>Index file relative to the backup folder (see <see cref="BlockIndex"/>).</summary>
    public string IndexFile { get; set; } = "";
    /// <summary>The disk size the layer was written with (its index is checked against it).</summary>
    public long VirtualSize { get; set; }
    public int RecordCount { get; set; }
    /// <summary>The backup that wrote these records (for reports; the files are in this backup's folder).</summary>
    public string? Origin { get; set; }
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
