using System.Buffers;
using System.Text;
using VProtect.Core.IO;

namespace VProtect.Core.Formats.Xva;

/// <summary>
/// Reads an XVA as it arrives (forward-only; plain, gzip or zstd), verifying every chunk's checksum before its
/// data reaches a target (or, with <see cref="XvaChecksumMode.ReportAndContinue"/>, reporting failures and writing the
/// data anyway, as xapi's import does with force=true). Memory is two chunk buffers plus ova.xml, whatever the disk sizes.
/// Every problem in the stream is a <see cref="BackupFormatException"/> naming the stream and the (decompressed) tar offset.
/// </summary>
public static class XvaReader
{
    /// <summary>Reads <paramref name="input"/> (not disposed), delivering metadata and disks as <paramref name="options"/> say.</summary>
    public static async Task<XvaReadResult> ReadAsync(Stream input, string sourceName, XvaReadOptions? options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(input);
        options ??= new XvaReadOptions();
        if (!Enum.IsDefined(options.Checksums))
            throw new ArgumentOutOfRangeException(nameof(options), options.Checksums, "XvaReadOptions.Checksums must be Strict or ReportAndContinue.");
        ArgumentOutOfRangeException.ThrowIfNegative(options.MaxRecordedChecksumFailures, "options.MaxRecordedChecksumFailures");
        var (tarStream, compression) = await XvaCompressionStreams.OpenForReadAsync(input, cancellationToken).ConfigureAwait(false);
        await using (tarStream.ConfigureAwait(false))
        {
            string source = compression == XvaCompression.None ? sourceName : $"{sourceName} ({compression} stream, offsets in the decompressed tar)";
            var tar = new XvaTarReader(tarStream, source);
            var session = new ReadSession(tar, options);
            return await session.RunAsync(compression, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Reads and checks the whole stream (structure and every checksum) and discards the disk data.</summary>
    public static Task<XvaReadResult> VerifyAsync(Stream input, string sourceName, CancellationToken cancellationToken) =>
        ReadAsync(input, sourceName, new XvaReadOptions(), cancellationToken);

    /// <summary>Reads and verifies an XVA file; see <see cref="ReadAsync(Stream, string, XvaReadOptions?, CancellationToken)"/>.</summary>
    public static async Task<XvaReadResult> ReadFileAsync(string path, XvaReadOptions? options, CancellationToken cancellationToken)
    {
        var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);
        await using (file.ConfigureAwait(false))
            return await ReadAsync(file, path, options, cancellationToken).ConfigureAwait(false);
    }

    private sealed class ReadSession(XvaTarReader tar, XvaReadOptions options)
    {
        private XvaMetadata _metadata = null!;
        private Dictionary<string, XvaObject> _vdis = null!;
        private long _totalBytes;
        private long _doneBytesOfFinishedDisks;
        private readonly List<XvaDiskReadSummary> _summaries = new();
        private readonly List<XvaChecksumFailure> _checksumFailures = new();
        private long _checksumFailureCount;
        private DiskState? _disk;
        private PendingChunk? _pending;
        private readonly byte[][] _buffers = new byte[2][];
        private int _current;
        private Task? _inflight;

        public async Task<XvaReadResult> RunAsync(XvaCompression compression, CancellationToken ct)
        {
            await ReadMetadataAsync(ct).ConfigureAwait(false);
            // Two chunk buffers: the next chunk downloads into one while the other is being written to its target.
            _buffers[0] = ArrayPool<byte>.Shared.Rent(XvaFormat.ChunkSize);
            _buffers[1] = ArrayPool<byte>.Shared.Rent(XvaFormat.ChunkSize);
            try
            {
                while (await tar.NextAsync(ct).ConfigureAwait(false) is { } member)
                {
                    CheckMemberIsSafe(member);
                    if (member.Kind == TarMemberKind.Directory) continue; // e.g. "Ref:5/" from some tar writers
                    if (XvaFormat.TryParseChunkName(member.Name, out var vdiId, out long counter))
                        await OnChunkAsync(member, vdiId, counter, _buffers[_current], ct).ConfigureAwait(false);
                    else if (member.Name.EndsWith(XvaFormat.XxHashExtension, StringComparison.Ordinal))
                        await OnChecksumAsync(member, XvaChecksumKind.XxHash64, _buffers[_current], ct).ConfigureAwait(false);
                    else if (member.Name.EndsWith(XvaFormat.Sha1Extension, StringComparison.Ordinal))
                        await OnChecksumAsync(member, XvaChecksumKind.Sha1, _buffers[_current], ct).ConfigureAwait(false);
                    else if (member.Name == XvaFormat.MetadataEntryName)
                        throw tar.Error(member.HeaderOffset, "A second ova.xml follows the disk data. The file is damaged or two XVAs were concatenated.", kind: XvaErrorKind.UnexpectedMember);
                    else
                        throw tar.Error(member.HeaderOffset, $"Unexpected member '{member.Name}': an XVA holds only ova.xml, Ref:n/%08d chunks and their .xxhash/.checksum files.", kind: XvaErrorKind.UnexpectedMember);
                }
                if (_pending is { } p)
                    throw tar.Error(tar.Position, $"Chunk {p.Name} has no checksum file after it (expected {p.Name}.xxhash or {p.Name}.checksum). The backup is incomplete or damaged.", kind: XvaErrorKind.UnexpectedMember);
                await FinishDiskAsync(ct).ConfigureAwait(false);
            }
            finally
            {
                // A buffer must not go back to the pool while a target write still reads it.
                if (_inflight is { } inflight)
                    try { await inflight.ConfigureAwait(false); } catch { /* the error that got us here matters more */ }
                ArrayPool<byte>.Shared.Return(_buffers[0]);
                ArrayPool<byte>.Shared.Return(_buffers[1]);
            }
            return new XvaReadResult(_metadata, compression, _summaries, tar.Position)
            {
                ChecksumFailures = _checksumFailures,
                ChecksumFailureCount = _checksumFailureCount,
            };
        }

        private async Task ReadMetadataAsync(CancellationToken ct)
        {
            var first = await tar.NextAsync(ct).ConfigureAwait(false)
                ?? throw tar.Error(0, "The tar archive is empty: no ova.xml. This is not an XVA.", kind: XvaErrorKind.UnexpectedMember);
            CheckMemberIsSafe(first);
            if (first.Name != XvaFormat.MetadataEntryName || first.Kind != TarMemberKind.File)
                throw tar.Error(first.HeaderOffset, $"The first member is '{first.Name}', but an XVA starts with ova.xml. This is not an XVA (or it was re-packed in the wrong order).", kind: XvaErrorKind.UnexpectedMember)
                    .WithMembers(XvaFormat.MetadataEntryName, first.Name);
            if (first.Size > options.MaxMetadataBytes)
                throw tar.Error(first.HeaderOffset, $"ova.xml declares {first.Size} bytes, more than the {options.MaxMetadataBytes}-byte limit. The file is damaged; if the VM really has that much metadata, raise MaxMetadataBytes.");
            var bytes = new byte[first.Size];
            await tar.ReadDataAsync(bytes, ct).ConfigureAwait(false);
            string xml;
            try { xml = new UTF8Encoding(false, true).GetString(bytes); }
            catch (DecoderFallbackException ex) { throw tar.Error(first.DataOffset, "ova.xml is not valid UTF-8. The backup's metadata is damaged.", ex); }
            _metadata = XvaMetadataXml.Decode(xml, tar.Source, first.DataOffset);
            _vdis = _metadata.OfClass("VDI").ToDictionary(o => o.Id, StringComparer.Ordinal);
            foreach (var vdi in _vdis.Values) _totalBytes += Math.Max(0, vdi.GetInt64("virtual_size") ?? 0);
            if (options.OnMetadata is { } onMetadata) await onMetadata(_metadata, ct).ConfigureAwait(false);
        }

        private void CheckMemberIsSafe(TarMemberHeader m)
        {
            string n = m.Name;
            if (n.Length == 0) throw tar.Error(m.HeaderOffset, "A tar member has an empty name. The file is damaged.");
            if (n[0] == '/' || n[0] == '\\' || (n.Length > 1 && n[1] == ':' && char.IsAsciiLetter(n[0])))
                throw tar.Error(m.HeaderOffset, $"Tar member '{n}' has an absolute path, which no XVA has. Refusing a hostile or damaged file.");
            if (n.Split('/', '\\').Any(s => s == ".."))
                throw tar.Error(m.HeaderOffset, $"Tar member '{n}' contains '..', which no XVA has. Refusing a hostile or damaged file.");
            if (m.Kind == TarMemberKind.Link)
                throw tar.Error(m.HeaderOffset, $"Tar member '{n}' is a link, which no XVA has. Refusing a hostile or damaged file.");
            if (m.Kind == TarMemberKind.Other)
                throw tar.Error(m.HeaderOffset, $"Tar member '{n}' has type '{m.TypeFlag}' (device, FIFO or unknown); an XVA holds only regular files.");
            if (m.Kind == TarMemberKind.Directory && !XvaFormat.IsExportId(n.TrimEnd('/')))
                throw tar.Error(m.HeaderOffset, $"Unexpected directory '{n}' in an XVA.");
        }

        private async Task OnChunkAsync(TarMemberHeader m, string vdiId, long counter, byte[] buffer, CancellationToken ct)
        {
            if (_pending is { } p)
                throw tar.Error(m.HeaderOffset, $"Chunk {p.Name} has no checksum file after it (found '{m.Name}' instead of {p.Name}.xxhash). The backup is damaged.", kind: XvaErrorKind.UnexpectedMember);
            if (_disk is null || _disk.VdiId != vdiId)
                await StartDiskAsync(m, vdiId, ct).ConfigureAwait(false);
            var d = _disk!;
            if (counter <= d.LastCounter)
                throw tar.Error(m.HeaderOffset, $"Chunk {m.Name} comes after chunk {XvaFormat.ChunkEntryName(vdiId, d.LastCounter)}; counters must strictly increase. The backup is damaged.");
            if (m.Size > XvaFormat.ChunkSize)
                throw tar.Error(m.HeaderOffset, $"Chunk {m.Name} declares {m.Size} bytes, more than the {XvaFormat.ChunkSize}-byte chunk size. The file is damaged or not an XVA.");
            if (d.ChunkSize > 0 && m.Size > d.ChunkSize)
                throw tar.Error(m.HeaderOffset, $"Chunk {m.Name} has {m.Size} bytes, more than this disk's chunk size of {d.ChunkSize} (the first chunk's length). The file is damaged.");

            // Readers take the chunk size from the first chunk; a gap of k counters is k omitted all-zero chunks.
            long gapChunks = counter - d.LastCounter - 1;
            long chunkSize = d.ChunkSize > 0 ? d.ChunkSize : XvaFormat.ChunkSize;
            if (gapChunks > 0 && gapChunks > (d.VirtualSize - d.Offset) / chunkSize + 1)
                throw tar.Error(m.HeaderOffset, $"Chunk {m.Name} skips {gapChunks} chunks, past the end of the {d.VirtualSize}-byte disk {vdiId}. The file is damaged.");
            long gapBytes = gapChunks * chunkSize;
            long offset = d.Offset + gapBytes;
            if (offset + m.Size > d.VirtualSize || (gapBytes > 0 && offset > d.VirtualSize))
                throw tar.Error(m.HeaderOffset, $"Chunk {m.Name} would put data at [{offset}, {offset + m.Size}), beyond the end of disk {vdiId} ({d.VirtualSize} bytes). The file is damaged or its ova.xml does not match its data.");
            if (d.ChunkSize == 0 && m.Size > 0) d.ChunkSize = (int)m.Size;

            await tar.ReadDataAsync(buffer.AsMemory(0, (int)m.Size), ct).ConfigureAwait(false);
            _pending = new PendingChunk(m.Name, counter, offset, (int)m.Size, gapChunks, m.HeaderOffset);
        }

        private async Task OnChecksumAsync(TarMemberHeader m, XvaChecksumKind kind, byte[] buffer, CancellationToken ct)
        {
            string ext = kind == XvaChecksumKind.XxHash64 ? XvaFormat.XxHashExtension : XvaFormat.Sha1Extension;
            string chunkName = m.Name[..^ext.Length];
            if (_pending is not { } p || p.Name != chunkName)
                throw tar.Error(m.HeaderOffset, $"Checksum file '{m.Name}' does not follow its chunk {chunkName}. The backup is damaged.", kind: XvaErrorKind.UnexpectedMember);
            if (m.Size > 128)
                throw tar.Error(m.HeaderOffset, $"Checksum file '{m.Name}' declares {m.Size} bytes; a checksum is {XvaFormat.ChecksumTextLength(kind)}. The file is damaged.");
            var text = new byte[m.Size];
            await tar.ReadDataAsync(text, ct).ConfigureAwait(false);
            string stored = Encoding.ASCII.GetString(text).Trim();
            var data = buffer.AsMemory(0, p.Length);
            string computed = XvaFormat.FormatChecksum(data.Span, kind);
            var d = _disk!;
            if (!string.Equals(stored, computed, StringComparison.OrdinalIgnoreCase))
            {
                if (options.Checksums == XvaChecksumMode.Strict)
                    throw tar.Error(p.HeaderOffset, $"Chunk {p.Name} (disk bytes [{p.DiskOffset}, {p.DiskOffset + p.Length})) fails its {ext[1..]} checksum: stored '{stored}', computed '{computed}'. The backup is corrupt; restore from another backup.", kind: XvaErrorKind.ChecksumMismatch);
                // xapi with force=true (stream_vdi.ml recv_all_vdi): the chunk was already written; the failure is logged and ignored.
                var failure = new XvaChecksumFailure(d.VdiId, p.Name, p.Counter, p.DiskOffset, p.Length, kind, stored, computed, p.HeaderOffset);
                d.ChecksumFailures++;
                _checksumFailureCount++;
                if (_checksumFailures.Count < options.MaxRecordedChecksumFailures) _checksumFailures.Add(failure);
                if (options.OnChecksumFailure is { } onFailure) await onFailure(failure, ct).ConfigureAwait(false);
            }

            if (d.Target is { } target && (p.Length > 0 || (p.GapChunks > 0 && options.ZeroOmittedChunks)))
            {
                await AwaitInflightAsync().ConfigureAwait(false);
                long zeroFrom = d.Offset, zeroLength = options.ZeroOmittedChunks ? p.DiskOffset - d.Offset : 0;
                _inflight = WriteToTargetAsync(target, zeroFrom, zeroLength, p.DiskOffset, data, ct);
                _current ^= 1; // the next chunk goes into the other buffer while this one is written
            }
            d.ChecksumKind ??= kind;
            d.Offset = p.DiskOffset + p.Length;
            d.LastCounter = p.Counter;
            d.ChunksOmitted += p.GapChunks;
            if (p.Length == 0) d.KeepAlives++; else d.ChunksPresent++;
            d.DataBytes += p.Length;
            _pending = null;
            options.Progress?.Report(new TransferProgress(_doneBytesOfFinishedDisks + d.Offset, _totalBytes));
        }

        private static async Task WriteToTargetAsync(IBlockTarget target, long zeroFrom, long zeroLength, long offset, ReadOnlyMemory<byte> data, CancellationToken ct)
        {
            if (zeroLength > 0) await target.WriteZeroesAsync(zeroFrom, zeroLength, ct).ConfigureAwait(false);
            if (data.Length > 0) await target.WriteAsync(offset, data, ct).ConfigureAwait(false);
        }

        private async Task AwaitInflightAsync()
        {
            if (_inflight is not { } inflight) return;
            _inflight = null;
            await inflight.ConfigureAwait(false);
        }

        private async Task StartDiskAsync(TarMemberHeader m, string vdiId, CancellationToken ct)
        {
            if (!_vdis.TryGetValue(vdiId, out var record))
                throw tar.Error(m.HeaderOffset, $"Chunk {m.Name} belongs to '{vdiId}', which ova.xml does not list as a VDI. The file is damaged or its parts were mixed up.", kind: XvaErrorKind.UnknownObject);
            if (_disk is { } previous && string.CompareOrdinal(vdiId, previous.VdiId) <= 0)
                throw tar.Error(m.HeaderOffset, $"Disk {vdiId} comes after disk {previous.VdiId}; xapi orders disks by id and each disk's chunks are contiguous. The backup is damaged.");
            await FinishDiskAsync(ct).ConfigureAwait(false);
            long size = record.GetInt64("virtual_size") ?? -1;
            if (size < 0)
                throw tar.Error(m.HeaderOffset, $"VDI {vdiId} in ova.xml has no valid virtual_size, so its data cannot be placed. The backup's metadata is damaged.");
            var disk = new XvaDisk(vdiId, size, record);
            IBlockTarget? target = options.OpenTarget is { } open ? await open(disk, ct).ConfigureAwait(false) : null;
            if (target is not null && target.Length < size)
                throw new InvalidOperationException($"The target for disk {vdiId} holds {target.Length} bytes but the disk is {size} bytes. Provide a target at least as large as the VDI's virtual_size.");
            _disk = new DiskState(vdiId, size, target);
        }

        private async Task FinishDiskAsync(CancellationToken ct)
        {
            if (_disk is not { } d) return;
            await AwaitInflightAsync().ConfigureAwait(false);
            if (d.Target is { } target)
            {
                if (options.ZeroOmittedChunks && d.Offset < d.VirtualSize)
                    await target.WriteZeroesAsync(d.Offset, d.VirtualSize - d.Offset, ct).ConfigureAwait(false);
                await target.FlushAsync(ct).ConfigureAwait(false);
            }
            _summaries.Add(new XvaDiskReadSummary(d.VdiId, d.VirtualSize, d.ChunksPresent, d.ChunksOmitted, d.KeepAlives, d.DataBytes, d.ChecksumKind)
            {
                ChecksumFailures = d.ChecksumFailures,
            });
            _doneBytesOfFinishedDisks += d.VirtualSize;
            options.Progress?.Report(new TransferProgress(_doneBytesOfFinishedDisks, _totalBytes));
            _disk = null;
        }
    }

    private sealed class DiskState(string vdiId, long virtualSize, IBlockTarget? target)
    {
        public string VdiId { get; } = vdiId;
        public long VirtualSize { get; } = virtualSize;
        public IBlockTarget? Target { get; } = target;
        public long LastCounter { get; set; } = -1;
        public long Offset { get; set; }
        public int ChunkSize { get; set; }
        public long ChunksPresent { get; set; }
        public long ChunksOmitted { get; set; }
        public long KeepAlives { get; set; }
        public long DataBytes { get; set; }
        public XvaChecksumKind? ChecksumKind { get; set; }
        public long ChecksumFailures { get; set; }
    }

    private readonly record struct PendingChunk(string Name, long Counter, long DiskOffset, int Length, long GapChunks, long HeaderOffset);
}
