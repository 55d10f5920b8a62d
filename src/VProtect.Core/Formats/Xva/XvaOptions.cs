using System.IO.Compression;
using VProtect.Core.IO;

namespace VProtect.Core.Formats.Xva;

/// <summary>An exported disk as the reader announces it: its export id, record and virtual size.</summary>
public sealed record XvaDisk(string VdiId, long VirtualSize, XvaObject Record)
{
    public string? Uuid => Record.GetString("uuid");
    public string? NameLabel => Record.GetString("name_label");
}

/// <summary>What to do with an XVA being read. With no <see cref="OpenTarget"/> the read only verifies.</summary>
public sealed class XvaReadOptions
{
    /// <summary>Called once, right after ova.xml is parsed and before any disk data.</summary>
    public Func<XvaMetadata, CancellationToken, ValueTask>? OnMetadata { get; init; }

    /// <summary>
    /// Called when a disk's first chunk arrives; returns where its data goes, or null to verify and discard it.
    /// The target must be at least <see cref="XvaDisk.VirtualSize"/> long. The reader flushes it but does not dispose it.
    /// </summary>
    public Func<XvaDisk, CancellationToken, ValueTask<IBlockTarget?>>? OpenTarget { get; init; }

    /// <summary>
    /// Write zeros over omitted (all-zero) chunks and any tail after the last chunk, so the target ends up equal
    /// to the exported disk. Turn off only when targets are known to be freshly zeroed.
    /// </summary>
    public bool ZeroOmittedChunks { get; init; } = true;

    /// <summary>Upper bound on ova.xml's size; a larger declared size is treated as damage.</summary>
    public int MaxMetadataBytes { get; init; } = 64 * 1024 * 1024;

    /// <summary>Disk bytes covered so far (data and omitted chunks) against the sum of the disks' virtual sizes.</summary>
    public IProgress<TransferProgress>? Progress { get; init; }
}

/// <summary>What one disk's data looked like in the stream.</summary>
public sealed record XvaDiskReadSummary(
    string VdiId,
    long VirtualSize,
    long ChunksPresent,
    long ChunksOmitted,
    long KeepAliveChunks,
    long DataBytes,
    XvaChecksumKind? ChecksumKind);

/// <summary>The outcome of a successful read: every chunk present was verified against its checksum.</summary>
public sealed record XvaReadResult(
    XvaMetadata Metadata,
    XvaCompression Compression,
    IReadOnlyList<XvaDiskReadSummary> Disks,
    long TarBytes);

/// <summary>One disk to export: the VDI's export id in the metadata and where its data comes from.</summary>
public sealed record XvaDiskSource(string VdiId, IBlockSource Source);

/// <summary>How all-zero chunks are found and left out of an XVA being written.</summary>
public enum XvaZeroChunkDetection
{
    /// <summary>Chunks outside the source's allocated extents are omitted; allocated chunks are written even if zero. The output length is then known up front.</summary>
    ExtentsOnly,
    /// <summary>Also reads allocated chunks and omits those that are all zero (what xapi's raw path does).</summary>
    ExtentsAndContent,
}

/// <summary>How to write an XVA.</summary>
public sealed class XvaWriteOptions
{
    public XvaCompression Compression { get; init; } = XvaCompression.None;
    public int ZstdLevel { get; init; } = 3;
    public CompressionLevel GzipLevel { get; init; } = CompressionLevel.Fastest;
    public XvaChecksumKind Checksum { get; init; } = XvaChecksumKind.XxHash64;
    public XvaZeroChunkDetection ZeroChunks { get; init; } = XvaZeroChunkDetection.ExtentsAndContent;

    /// <summary>
    /// Like xapi, write a zero-length keep-alive chunk when this long has passed without a member being written
    /// (so a slow consumer's connection does not time out over long runs of omitted chunks). Null: never.
    /// </summary>
    public TimeSpan? KeepAliveInterval { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>ova.xml's tar mtime (xapi uses the export time); chunks get mtime 0 as xapi writes them.</summary>
    public DateTimeOffset? ExportTime { get; init; }

    /// <summary>Disk bytes covered so far against the sum of the sources' lengths.</summary>
    public IProgress<TransferProgress>? Progress { get; init; }
}

/// <summary>What was written for one disk.</summary>
public sealed record XvaDiskWriteSummary(string VdiId, long Length, long ChunksWritten, long ChunksOmitted, long KeepAliveChunks, long DataBytes);

/// <summary>The outcome of a write. <see cref="TarBytes"/> is before compression.</summary>
public sealed record XvaWriteResult(IReadOnlyList<XvaDiskWriteSummary> Disks, long TarBytes);
