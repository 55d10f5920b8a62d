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

    /// <summary>
    /// What a chunk whose data does not match its checksum file does. <see cref="XvaChecksumMode.Strict"/> (the default)
    /// throws before the chunk reaches a target; <see cref="XvaChecksumMode.ReportAndContinue"/> is xapi's
    /// <c>PUT /import?force=true</c>: the chunk is written as it arrived and the failure is reported.
    /// Structural damage (truncation, bad headers, bad ova.xml, a missing checksum file) throws in either mode.
    /// </summary>
    public XvaChecksumMode Checksums { get; init; } = XvaChecksumMode.Strict;

    /// <summary>Called for every checksum failure in <see cref="XvaChecksumMode.ReportAndContinue"/> mode, in stream order.</summary>
    public Func<XvaChecksumFailure, CancellationToken, ValueTask>? OnChecksumFailure { get; init; }

    /// <summary>
    /// How many checksum failures <see cref="XvaReadResult.ChecksumFailures"/> keeps (the first ones); the count is always
    /// exact. Bounds memory when a whole disk is corrupt; <see cref="OnChecksumFailure"/> still sees every one.
    /// </summary>
    public int MaxRecordedChecksumFailures { get; init; } = 100;
}

/// <summary>How <see cref="XvaReader"/> treats a chunk whose data does not match its checksum file.</summary>
public enum XvaChecksumMode
{
    /// <summary>Throw a <see cref="BackupFormatException"/> (kind <see cref="XvaErrorKind.ChecksumMismatch"/>) before the chunk is written.</summary>
    Strict,
    /// <summary>Write the chunk as it arrived, report the failure (<see cref="XvaReadOptions.OnChecksumFailure"/>, <see cref="XvaReadResult.ChecksumFailures"/>) and go on.</summary>
    ReportAndContinue,
}

/// <summary>
/// One chunk whose data does not match its checksum file: the chunk entry (e.g. <c>Ref:12/00000003</c>), where its data
/// lands on the disk, the checksum stored in the stream (<paramref name="Expected"/>) and the one computed from the data
/// (<paramref name="Actual"/>), and the chunk's header offset in the (decompressed) tar.
/// </summary>
public sealed record XvaChecksumFailure(
    string VdiId,
    string ChunkName,
    long Counter,
    long DiskOffset,
    int Length,
    XvaChecksumKind ChecksumKind,
    string Expected,
    string Actual,
    long TarOffset);

/// <summary>What one disk's data looked like in the stream.</summary>
public sealed record XvaDiskReadSummary(
    string VdiId,
    long VirtualSize,
    long ChunksPresent,
    long ChunksOmitted,
    long KeepAliveChunks,
    long DataBytes,
    XvaChecksumKind? ChecksumKind)
{
    /// <summary>Chunks of this disk that failed their checksum (only ever non-zero in <see cref="XvaChecksumMode.ReportAndContinue"/> mode).</summary>
    public long ChecksumFailures { get; init; }
}

/// <summary>
/// The outcome of a successful read. In <see cref="XvaChecksumMode.Strict"/> mode every chunk present was verified
/// against its checksum; in <see cref="XvaChecksumMode.ReportAndContinue"/> mode the failures are listed here.
/// </summary>
public sealed record XvaReadResult(
    XvaMetadata Metadata,
    XvaCompression Compression,
    IReadOnlyList<XvaDiskReadSummary> Disks,
    long TarBytes)
{
    /// <summary>The first <see cref="XvaReadOptions.MaxRecordedChecksumFailures"/> checksum failures, in stream order.</summary>
    public IReadOnlyList<XvaChecksumFailure> ChecksumFailures { get; init; } = [];

    /// <summary>How many chunks failed their checksum in all (may exceed <see cref="ChecksumFailures"/>' length).</summary>
    public long ChecksumFailureCount { get; init; }
}

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
