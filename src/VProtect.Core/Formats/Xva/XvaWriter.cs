using System.Buffers;
using System.Diagnostics;
using System.Formats.Tar;
using System.Text;
using VProtect.Core.IO;

namespace VProtect.Core.Formats.Xva;

/// <summary>
/// Writes an XVA the way xapi's /export does: V7 tar headers, ova.xml first, then each VDI (in id order) as
/// <c>Ref:n/%08d</c> 1 MiB chunks, each followed by its checksum file; all-zero chunks are omitted (the first and
/// last chunk of a disk are always written). Streams with two chunk buffers (one being read from the source while the
/// other is written); the output may be forward-only.
/// </summary>
public static class XvaWriter
{
    private const int TarBlock = 512;

    /// <summary>Writes an XVA of <paramref name="metadata"/> and <paramref name="disks"/> to <paramref name="output"/> (left open).</summary>
    /// <exception cref="ArgumentException">A disk is not a VDI in the metadata, appears twice, or is larger than its VDI's virtual_size.</exception>
    public static async Task<XvaWriteResult> WriteAsync(Stream output, XvaMetadata metadata, IReadOnlyList<XvaDiskSource> disks,
        XvaWriteOptions? options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(output);
        options ??= new XvaWriteOptions();
        var ordered = Validate(metadata, disks);
        long total = ordered.Sum(d => d.Source.Length), doneOfFinished = 0;
        var counting = new CountingWriteStream(output);
        var compressed = XvaCompressionStreams.OpenForWrite(counting, options.Compression, options.ZstdLevel, options.GzipLevel);
        var tarBytes = new CountingWriteStream(compressed);
        var summaries = new List<XvaDiskWriteSummary>();
        byte[][] buffers = [ArrayPool<byte>.Shared.Rent(XvaFormat.ChunkSize), ArrayPool<byte>.Shared.Rent(XvaFormat.ChunkSize)];
        try
        {
            await using (compressed.ConfigureAwait(false))
            {
                var tar = new TarWriter(tarBytes, TarEntryFormat.V7, leaveOpen: true);
                await using (tar.ConfigureAwait(false))
                {
                    byte[] ova = Encoding.UTF8.GetBytes(XvaMetadataXml.Encode(metadata));
                    await WriteMemberAsync(tar, XvaFormat.MetadataEntryName, ova, ova.Length, options.ExportTime ?? DateTimeOffset.UtcNow, cancellationToken).ConfigureAwait(false);
                    var sinceLastMember = Stopwatch.StartNew();
                    foreach (var disk in ordered)
                    {
                        var summary = await WriteDiskAsync(tar, disk, buffers, options, sinceLastMember,
                            done => options.Progress?.Report(new TransferProgress(doneOfFinished + done, total)), cancellationToken).ConfigureAwait(false);
                        summaries.Add(summary);
                        doneOfFinished += disk.Source.Length;
                    }
                }
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffers[0]);
            ArrayPool<byte>.Shared.Return(buffers[1]);
        }
        await output.FlushAsync(cancellationToken).ConfigureAwait(false);
        return new XvaWriteResult(summaries, tarBytes.BytesWritten);
    }

    /// <summary>Writes an XVA file (created or overwritten).</summary>
    public static async Task<XvaWriteResult> WriteFileAsync(string path, XvaMetadata metadata, IReadOnlyList<XvaDiskSource> disks,
        XvaWriteOptions? options, CancellationToken cancellationToken)
    {
        var file = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous);
        await using (file.ConfigureAwait(false))
            return await WriteAsync(file, metadata, disks, options, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// The exact byte length <see cref="WriteAsync"/> will produce, for a Content-Length (xapi's PUT /import needs one).
    /// Only when the output is predictable: no compression, <see cref="XvaZeroChunkDetection.ExtentsOnly"/>, no keep-alives.
    /// </summary>
    /// <exception cref="InvalidOperationException">The options make the length depend on the data or on timing.</exception>
    public static async Task<long> ComputeExactLengthAsync(XvaMetadata metadata, IReadOnlyList<XvaDiskSource> disks,
        XvaWriteOptions options, CancellationToken cancellationToken)
    {
        if (options.Compression != XvaCompression.None || options.ZeroChunks != XvaZeroChunkDetection.ExtentsOnly || options.KeepAliveInterval is not null)
            throw new InvalidOperationException("The exact length is only known without compression, with ZeroChunks = ExtentsOnly and KeepAliveInterval = null.");
        var ordered = Validate(metadata, disks);
        long length = TarBlock + Pad(Encoding.UTF8.GetByteCount(XvaMetadataXml.Encode(metadata)));
        long checksumMember = TarBlock + Pad(XvaFormat.ChecksumTextLength(options.Checksum));
        foreach (var disk in ordered)
        {
            await foreach (long chunk in CandidateChunksAsync(disk.Source, cancellationToken).ConfigureAwait(false))
                length += TarBlock + Pad(ChunkLength(disk.Source.Length, chunk)) + checksumMember;
        }
        return length + 2 * TarBlock;
    }

    private static async Task<XvaDiskWriteSummary> WriteDiskAsync(TarWriter tar, XvaDiskSource disk, byte[][] buffers, XvaWriteOptions options,
        Stopwatch sinceLastMember, Action<long> progress, CancellationToken ct)
    {
        var src = disk.Source;
        long chunkCount = (src.Length + XvaFormat.ChunkSize - 1) / XvaFormat.ChunkSize;
        long written = 0, keepAlives = 0, dataBytes = 0;
        long shift = 0;      // keep-alive chunks take a counter each, shifting all later counters (as xapi does)
        long nextIndex = 0;  // first chunk index not yet written or skipped
        bool KeepAliveDue() => options.KeepAliveInterval is { } interval && sinceLastMember.Elapsed >= interval;

        async Task SkipToAsync(long index)
        {
            // Chunks [nextIndex, index) are omitted; a keep-alive, if due, takes the first omitted counter.
            if (index > nextIndex && KeepAliveDue())
            {
                await WriteChunkAsync(tar, disk.VdiId, nextIndex + shift, ReadOnlyMemory<byte>.Empty, options.Checksum, ct).ConfigureAwait(false);
                shift++; keepAlives++;
                sinceLastMember.Restart();
            }
            nextIndex = index;
        }

        // Two buffers: the next candidate chunk is read from the source while this one is checked, hashed and written.
        var candidates = CandidateChunksAsync(src, ct).GetAsyncEnumerator(ct);
        int current = 0;
        Task<(long Index, int Length)?> fetch = FetchAsync(candidates, src, buffers[current], ct);
        try
        {
            while (await fetch.ConfigureAwait(false) is { } next)
            {
                var (index, length) = next;
                var data = buffers[current].AsMemory(0, length);
                current ^= 1;
                fetch = FetchAsync(candidates, src, buffers[current], ct);

                bool mustWrite = index == 0 || index == chunkCount - 1;
                if (!mustWrite && options.ZeroChunks == XvaZeroChunkDetection.ExtentsAndContent && !data.Span.ContainsAnyExcept((byte)0))
                {
                    progress(Math.Min(src.Length, (index + 1) * (long)XvaFormat.ChunkSize));
                    continue; // omitted: the gap before the next written chunk covers it
                }
                await SkipToAsync(index).ConfigureAwait(false);
                await WriteChunkAsync(tar, disk.VdiId, index + shift, data, options.Checksum, ct).ConfigureAwait(false);
                sinceLastMember.Restart();
                nextIndex = index + 1;
                written++;
                dataBytes += length;
                progress(index * (long)XvaFormat.ChunkSize + length);
            }
        }
        finally
        {
            // Never hand a buffer back to the pool while a read into it is still running.
            try { await fetch.ConfigureAwait(false); } catch { /* the error that got us here matters more */ }
            await candidates.DisposeAsync().ConfigureAwait(false);
        }
        progress(src.Length);
        return new XvaDiskWriteSummary(disk.VdiId, src.Length, written, chunkCount - written, keepAlives, dataBytes);
    }

    private static async Task<(long Index, int Length)?> FetchAsync(IAsyncEnumerator<long> candidates, IBlockSource src, byte[] buffer, CancellationToken ct)
    {
        if (!await candidates.MoveNextAsync().ConfigureAwait(false)) return null;
        long index = candidates.Current;
        int length = ChunkLength(src.Length, index);
        await src.ReadAsync(index * XvaFormat.ChunkSize, buffer.AsMemory(0, length), ct).ConfigureAwait(false);
        return (index, length);
    }

    /// <summary>Chunk indexes that may hold data (overlapping an allocated extent), plus the first and last chunk.</summary>
    private static async IAsyncEnumerable<long> CandidateChunksAsync(IBlockSource source,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        long chunkCount = (source.Length + XvaFormat.ChunkSize - 1) / XvaFormat.ChunkSize;
        if (chunkCount == 0) yield break;
        long next = 0; // lowest index not yet yielded
        await foreach (var extent in source.GetAllocatedExtentsAsync(0, source.Length, ct).ConfigureAwait(false))
        {
            if (extent.Length <= 0) continue;
            long first = extent.Offset / XvaFormat.ChunkSize, last = (extent.End - 1) / XvaFormat.ChunkSize;
            if (next == 0 && first > 0) { yield return 0; next = 1; }
            for (long i = Math.Max(first, next); i <= last; i++) yield return i;
            next = Math.Max(next, last + 1);
        }
        if (next == 0) { yield return 0; next = 1; }
        if (next <= chunkCount - 1) yield return chunkCount - 1;
    }

    private static async Task WriteChunkAsync(TarWriter tar, string vdiId, long counter, ReadOnlyMemory<byte> data, XvaChecksumKind kind, CancellationToken ct)
    {
        string name = XvaFormat.ChunkEntryName(vdiId, counter);
        byte[] array; int length;
        if (System.Runtime.InteropServices.MemoryMarshal.TryGetArray(data, out var segment) && segment.Offset == 0)
        { array = segment.Array!; length = segment.Count; }
        else { array = data.ToArray(); length = array.Length; }
        await WriteMemberAsync(tar, name, array, length, DateTimeOffset.UnixEpoch, ct).ConfigureAwait(false);
        byte[] sum = Encoding.ASCII.GetBytes(XvaFormat.FormatChecksum(data.Span, kind));
        await WriteMemberAsync(tar, XvaFormat.ChecksumEntryName(name, kind), sum, sum.Length, DateTimeOffset.UnixEpoch, ct).ConfigureAwait(false);
    }

    private static async Task WriteMemberAsync(TarWriter tar, string name, byte[] data, int length, DateTimeOffset mtime, CancellationToken ct)
    {
        // V7 headers, mode 0400, uid/gid 0: what xapi's ocaml-tar writes.
        var entry = new V7TarEntry(TarEntryType.V7RegularFile, name)
        {
            Mode = UnixFileMode.UserRead,
            ModificationTime = mtime,
            Uid = 0,
            Gid = 0,
            DataStream = length == 0 ? null : new MemoryStream(data, 0, length, writable: false),
        };
        await tar.WriteEntryAsync(entry, ct).ConfigureAwait(false);
    }

    private static List<XvaDiskSource> Validate(XvaMetadata metadata, IReadOnlyList<XvaDiskSource> disks)
    {
        ArgumentNullException.ThrowIfNull(metadata);
        ArgumentNullException.ThrowIfNull(disks);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var d in disks)
        {
            if (!XvaFormat.IsExportId(d.VdiId))
                throw new ArgumentException($"Disk id '{d.VdiId}' is not an export id like 'Ref:12'; xapi and our reader accept only those as chunk directories.", nameof(disks));
            var record = metadata.Find(d.VdiId);
            if (record is null || record.Class != "VDI")
                throw new ArgumentException($"Disk '{d.VdiId}' is not a VDI object in the metadata; give each disk the export id (Ref:n) of its VDI record.", nameof(disks));
            if (!seen.Add(d.VdiId))
                throw new ArgumentException($"Disk '{d.VdiId}' is listed twice.", nameof(disks));
            long size = record.GetInt64("virtual_size") ?? -1;
            if (size < d.Source.Length)
                throw new ArgumentException($"Disk '{d.VdiId}' is {d.Source.Length} bytes but its VDI record's virtual_size is {size}; set virtual_size to the disk length.", nameof(disks));
        }
        return disks.OrderBy(d => d.VdiId, StringComparer.Ordinal).ToList();
    }

    private static int ChunkLength(long diskLength, long index) =>
        (int)Math.Min(XvaFormat.ChunkSize, diskLength - index * XvaFormat.ChunkSize);

    private static long Pad(long size) => (size + TarBlock - 1) / TarBlock * TarBlock;

    /// <summary>Counts bytes written through it; leaves the inner stream open.</summary>
    private sealed class CountingWriteStream(Stream inner) : Stream
    {
        public long BytesWritten { get; private set; }
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => BytesWritten; set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
        public override void Write(ReadOnlySpan<byte> buffer) { inner.Write(buffer); BytesWritten += buffer.Length; }
        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            await inner.WriteAsync(buffer, cancellationToken).ConfigureAwait(false);
            BytesWritten += buffer.Length;
        }
        protected override void Dispose(bool disposing) { }
        public override ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
