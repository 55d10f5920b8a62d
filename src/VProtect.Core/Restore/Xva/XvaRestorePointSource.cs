using System.Buffers;
using System.IO.Hashing;
using System.Runtime.CompilerServices;
using System.Text;
using Microsoft.Win32.SafeHandles;
using VProtect.Core.Backup.Xva;
using VProtect.Core.Formats;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.Formats.Xva;
using VProtect.Core.IO;
using VProtect.Core.Repository;

namespace VProtect.Core.Restore.Xva;

/// <summary>Where <see cref="XvaRestorePointSource"/> may put what it cannot read in place, and how it reports the index pass.</summary>
public sealed class XvaRestorePointOptions
{
    /// <summary>
    /// Folder for the temporary copy of a compressed (gzip/zstd) XVA's disk data (deleted on dispose); the system
    /// temporary folder when null. An uncompressed XVA is read in place and needs nothing here.
    /// </summary>
    public string? SpillDirectory { get; init; }

    /// <summary>Progress of the index pass over the stored XVA (bytes of the file read).</summary>
    public IProgress<TransferProgress>? Progress { get; init; }
}

/// <summary>
/// One disk of an XVA-strategy restore point as a read-only, random-access <see cref="IBlockSource"/>: the full's stored
/// XVA (1 MiB chunks with checksums; omitted chunks read as zeros) overlaid with the chosen cumulative incremental's VHD
/// delta for that disk (sectors the delta holds win). Opening reads the XVA once, front to back: it checks the file's
/// length and SHA-256 against the manifest and every chunk checksum, and keeps an index of where each chunk of the wanted
/// disks lies in the file (about 24 bytes per MiB of disk data), not the data. The delta is checked (SHA-256, structure)
/// and then read through its block table. A compressed XVA cannot be read at random, so the wanted disks' chunks are
/// copied once into a temporary file (<see cref="XvaRestorePointOptions.SpillDirectory"/>).
/// Every later read of a chunk re-checks it against the checksum taken during the pass, so a file changed after opening
/// is an error, never wrong data. Memory: the index plus a cache of at most <see cref="CachedChunks"/> chunks.
/// </summary>
public sealed class XvaRestorePointSource : IBlockSource, IDisposable
{
    /// <summary>Verified chunks kept for small reads that come back to the same chunk.</summary>
    public const int CachedChunks = 4;

    private readonly ChunkIndex _index;
    private readonly SafeFileHandle _data;
    private readonly string _dataName;
    private readonly VhdFile? _delta;
    private readonly SemaphoreSlim _cacheGate = new(1, 1);
    private readonly (int Chunk, byte[] Data, long Stamp)[] _cache = new (int, byte[], long)[CachedChunks];
    private long _stamp;
    private int _disposed;

    private XvaRestorePointSource(string diskKey, long length, BackupManifest full, BackupManifest point, ChunkIndex index,
        SafeFileHandle data, string dataName, VhdFile? delta)
    {
        DiskKey = diskKey; Length = length; Full = full; Point = point;
        _index = index; _data = data; _dataName = dataName; _delta = delta;
        for (int i = 0; i < _cache.Length; i++) _cache[i] = (-1, Array.Empty<byte>(), 0);
    }

    /// <summary>The disk's key (the source VDI uuid), as in the manifest.</summary>
    public string DiskKey { get; }
    public long Length { get; }
    /// <summary>The full backup whose XVA is the base.</summary>
    public BackupManifest Full { get; }
    /// <summary>The restore point (the full itself, or a cumulative incremental).</summary>
    public BackupManifest Point { get; }
    /// <summary>Chunks of this disk present in the XVA.</summary>
    public int ChunkCount => _index.Count;
    /// <summary>Bytes of this disk the XVA holds.</summary>
    public long XvaDataBytes => _index.TotalBytes;
    /// <summary>True when an incremental's VHD delta overlays the XVA.</summary>
    public bool HasDelta => _delta is not null;

    /// <summary>Opens one disk; see <see cref="OpenAsync(BackupRepository, BackupManifest, IReadOnlyCollection{string}?, XvaRestorePointOptions?, CancellationToken)"/>.</summary>
    public static async Task<XvaRestorePointSource> OpenDiskAsync(BackupRepository repository, BackupManifest point, string diskKey,
        XvaRestorePointOptions? options, CancellationToken ct)
    {
        var opened = await OpenAsync(repository, point, new[] { diskKey }, options, ct).ConfigureAwait(false);
        return opened[diskKey];
    }

    /// <summary>
    /// Opens the disks <paramref name="diskKeys"/> (all when null or empty) of the XVA-strategy restore point
    /// <paramref name="point"/> with one pass over the full's XVA. Throws <see cref="RepositoryException"/> for a
    /// point that is not an XVA-strategy backup or an unknown disk, <see cref="BackupFormatException"/> for damage.
    /// </summary>
    public static async Task<IReadOnlyDictionary<string, XvaRestorePointSource>> OpenAsync(BackupRepository repository, BackupManifest point,
        IReadOnlyCollection<string>? diskKeys, XvaRestorePointOptions? options, CancellationToken ct)
    {
        ArgumentNullException.ThrowIfNull(repository);
        ArgumentNullException.ThrowIfNull(point);
        options ??= new XvaRestorePointOptions();
        if (point.Strategy != BackupStrategy.Xva)
            throw new RepositoryException($"Backup {point.Id} is not an XVA-strategy backup; open its disks with the repository's block reader.");
        var chain = repository.GetChain(point);
        var full = chain[0];
        var xvaEntry = full.Files.FirstOrDefault(f => f.Kind == XvaStrategy.XvaFileKind)
            ?? throw new RepositoryException($"Backup {full.Id} holds no XVA file; it is not a full XVA-strategy backup.");
        var fullDisks = XvaKeys.ReadDisks(full);
        var keys = diskKeys is { Count: > 0 } ? diskKeys.Distinct().ToList() : fullDisks.Keys.OrderBy(k => fullDisks[k].UserDevice, StringComparer.Ordinal).ToList();
        foreach (var key in keys)
            if (!fullDisks.ContainsKey(key))
                throw new RepositoryException($"Backup {point.Id} has no disk '{key}'. Its disks are: {string.Join(", ", fullDisks.Keys)}.");

        var deltas = new Dictionary<string, VhdFile>(StringComparer.Ordinal);
        var result = new Dictionary<string, XvaRestorePointSource>(StringComparer.Ordinal);
        IndexPass? pass = null;
        try
        {
            if (point.Type == BackupType.Incremental)
            {
                foreach (var key in keys)
                {
                    var entry = point.Files.FirstOrDefault(f => f.Kind == XvaStrategy.VhdFileKind && f.DiskKey == key)
                        ?? throw new RepositoryException($"The incremental backup {point.Id} holds no VHD delta for disk {key}; it is incomplete.");
                    string path = repository.GetFilePath(point, entry);
                    await XvaBackupVerifier.VerifyVhdAsync(path, entry, fullDisks[key].VirtualSize, ct).ConfigureAwait(false);
                    var vhd = await VhdFile.OpenAsync(path, ct).ConfigureAwait(false);
                    deltas[key] = vhd;
                    if (vhd.Length != fullDisks[key].VirtualSize)
                        throw new BackupFormatException(path, 0, $"the VHD delta is for a {vhd.Length}-byte disk, but disk {key} of the full backup {full.Id} has {fullDisks[key].VirtualSize} bytes.");
                }
            }

            string xvaPath = repository.GetFilePath(full, xvaEntry);
            pass = new IndexPass(xvaPath, xvaEntry, keys.Select(k => fullDisks[k]).ToList(), options);
            await pass.RunAsync(ct).ConfigureAwait(false);

            foreach (var key in keys)
            {
                var (index, handle, name) = pass.Take(key);
                result[key] = new XvaRestorePointSource(key, fullDisks[key].VirtualSize, full, point, index, handle, name, deltas.GetValueOrDefault(key));
                deltas.Remove(key);
            }
            return result;
        }
        catch
        {
            foreach (var s in result.Values) s.Dispose();
            foreach (var d in deltas.Values) d.Dispose();
            pass?.DisposeUntaken();
            throw;
        }
    }

    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        if (offset < 0 || offset + buffer.Length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Range {offset}+{buffer.Length} is outside the {Length}-byte disk {DiskKey}.");
        while (buffer.Length > 0)
        {
            int bytes = buffer.Length;
            if (_delta is not null)
            {
                var (run, present) = await _delta.GetRunAsync(offset, buffer.Length, cancellationToken).ConfigureAwait(false);
                if (present)
                {
                    await _delta.ReadPresentAsync(offset, buffer[..run], cancellationToken).ConfigureAwait(false);
                    offset += run; buffer = buffer[run..];
                    continue;
                }
                bytes = run;
            }
            await ReadBaseAsync(offset, buffer[..bytes], cancellationToken).ConfigureAwait(false);
            offset += bytes; buffer = buffer[bytes..];
        }
    }

    /// <summary>Chunks of the XVA (coalesced) merged with the delta's allocated sectors.</summary>
    public async IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Range {offset}+{length} is outside the {Length}-byte disk {DiskKey}.");
        using var xva = BaseExtents(offset, offset + length).GetEnumerator();
        bool hasA = xva.MoveNext();
        var deltaExtents = _delta is null ? EmptyAsync() : _delta.GetAllocatedExtentsAsync(offset, length, cancellationToken);
        await using var delta = deltaExtents.GetAsyncEnumerator(cancellationToken);
        bool hasB = await delta.MoveNextAsync().ConfigureAwait(false);
        long runStart = -1, runEnd = -1;
        while (hasA || hasB)
        {
            Extent next;
            if (hasA && (!hasB || xva.Current.Offset <= delta.Current.Offset)) { next = xva.Current; hasA = xva.MoveNext(); }
            else { next = delta.Current; hasB = await delta.MoveNextAsync().ConfigureAwait(false); }
            if (runStart >= 0 && next.Offset <= runEnd) runEnd = Math.Max(runEnd, next.End);
            else
            {
                if (runStart >= 0) yield return new Extent(runStart, runEnd - runStart);
                runStart = next.Offset; runEnd = next.End;
            }
        }
        if (runStart >= 0) yield return new Extent(runStart, runEnd - runStart);
    }

    private static async IAsyncEnumerable<Extent> EmptyAsync()
    {
        await Task.CompletedTask.ConfigureAwait(false);
        yield break;
    }

    /// <summary>XVA chunks within [from, to), clipped, adjacent chunks coalesced.</summary>
    private IEnumerable<Extent> BaseExtents(long from, long to)
    {
        long runStart = -1, runEnd = -1;
        for (int i = Math.Max(0, _index.Find(from)); i < _index.Count; i++)
        {
            long s = Math.Max(from, _index.DiskOffset(i)), e = Math.Min(to, _index.DiskOffset(i) + _index.Length(i));
            if (_index.DiskOffset(i) >= to) break;
            if (e <= s) continue;
            if (runStart >= 0 && s == runEnd) runEnd = e;
            else
            {
                if (runStart >= 0) yield return new Extent(runStart, runEnd - runStart);
                runStart = s; runEnd = e;
            }
        }
        if (runStart >= 0) yield return new Extent(runStart, runEnd - runStart);
    }

    private async ValueTask ReadBaseAsync(long offset, Memory<byte> buffer, CancellationToken ct)
    {
        while (buffer.Length > 0)
        {
            int i = _index.Find(offset);
            if (i < 0 || offset >= _index.DiskOffset(i) + _index.Length(i))
            {
                // Not in a chunk: zeros up to the next chunk (or the end of the request).
                long next = i + 1 < _index.Count ? _index.DiskOffset(i + 1) : long.MaxValue;
                int zeros = (int)Math.Min(buffer.Length, next - offset);
                buffer.Span[..zeros].Clear();
                offset += zeros; buffer = buffer[zeros..];
                continue;
            }
            long inChunk = offset - _index.DiskOffset(i);
            int n = (int)Math.Min(buffer.Length, _index.Length(i) - inChunk);
            await _cacheGate.WaitAsync(ct).ConfigureAwait(false);
            try
            {
                var chunk = await GetChunkAsync(i, ct).ConfigureAwait(false);
                chunk.AsSpan((int)inChunk, n).CopyTo(buffer.Span);
            }
            finally { _cacheGate.Release(); }
            offset += n; buffer = buffer[n..];
        }
    }

    /// <summary>Chunk <paramref name="i"/>, read and checked against the pass's checksum. Caller holds the gate.</summary>
    private async ValueTask<byte[]> GetChunkAsync(int i, CancellationToken ct)
    {
        int victim = 0;
        for (int s = 0; s < _cache.Length; s++)
        {
            if (_cache[s].Chunk == i) { _cache[s].Stamp = ++_stamp; return _cache[s].Data; }
            if (_cache[s].Stamp < _cache[victim].Stamp) victim = s;
        }
        int length = _index.Length(i);
        var data = _cache[victim].Data.Length >= length ? _cache[victim].Data : new byte[XvaFormat.ChunkSize];
        _cache[victim] = (-1, data, 0);
        long at = _index.FileOffset(i);
        for (int done = 0; done < length;)
        {
            int got = await RandomAccess.ReadAsync(_data, data.AsMemory(done, length - done), at + done, ct).ConfigureAwait(false);
            if (got == 0) throw new BackupFormatException(_dataName, at + done, $"the file ends inside the chunk for disk bytes [{_index.DiskOffset(i)}, +{length}) of disk {DiskKey}; it was truncated after it was opened.");
            done += got;
        }
        if (XxHash64.HashToUInt64(data.AsSpan(0, length)) != _index.Hash(i))
            throw new BackupFormatException(_dataName, at, $"the chunk for disk bytes [{_index.DiskOffset(i)}, +{length}) of disk {DiskKey} no longer matches the checksum verified when it was opened; the file was changed. Run Test-VMBackup.");
        _cache[victim] = (i, data, ++_stamp);
        return data;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _data.Dispose();
        _delta?.Dispose();
        _cacheGate.Dispose();
    }

    public override string ToString() => $"{Point.VmName} {Point.Id} disk {DiskKey} (XVA of {Full.Id}{(HasDelta ? " + VHD delta" : "")}, {Length} bytes)";

    /// <summary>Where each present chunk of one disk lies: sorted by disk offset, four parallel growable arrays.</summary>
    private sealed class ChunkIndex
    {
        private long[] _disk = new long[64], _file = new long[64];
        private ulong[] _hash = new ulong[64];
        private int[] _length = new int[64];

        public int Count { get; private set; }
        public long TotalBytes { get; private set; }
        public long DiskOffset(int i) => _disk[i];
        public long FileOffset(int i) => _file[i];
        public int Length(int i) => _length[i];
        public ulong Hash(int i) => _hash[i];

        public void Add(long diskOffset, long fileOffset, int length, ulong hash)
        {
            if (Count == _disk.Length)
            {
                int size = Count * 2;
                Array.Resize(ref _disk, size); Array.Resize(ref _file, size); Array.Resize(ref _hash, size); Array.Resize(ref _length, size);
            }
            _disk[Count] = diskOffset; _file[Count] = fileOffset; _length[Count] = length; _hash[Count] = hash;
            Count++;
            TotalBytes += length;
        }

        /// <summary>The last chunk starting at or before <paramref name="offset"/>, or -1.</summary>
        public int Find(long offset)
        {
            int i = Array.BinarySearch(_disk, 0, Count, offset);
            return i >= 0 ? i : ~i - 1;
        }
    }

    /// <summary>The one pass over the stored XVA: file length and SHA-256, tar structure, every chunk's checksum, the index.</summary>
    private sealed class IndexPass(string path, FileManifest entry, IReadOnlyList<XvaDiskInfo> disks, XvaRestorePointOptions options)
    {
        private const int MaxMetadataBytes = 64 << 20;
        private readonly Dictionary<string, Target> _byVdiId = new(StringComparer.Ordinal);
        private readonly Dictionary<string, Target> _byKey = new(StringComparer.Ordinal);
        private XvaCompression _compression;

        private sealed class Target(XvaDiskInfo disk)
        {
            public XvaDiskInfo Disk { get; } = disk;
            public string? VdiId { get; set; }
            public long VirtualSize { get; set; }
            public ChunkIndex Index { get; } = new();
            public SafeFileHandle? Spill { get; set; }
            public string? SpillPath { get; set; }
            public long SpillLength { get; set; }
            public bool Taken { get; set; }
            // Placement state of the chunk stream (as XvaReader does it).
            public long LastCounter { get; set; } = -1;
            public long Offset { get; set; }
            public int ChunkSize { get; set; }
        }

        public async Task RunAsync(CancellationToken ct)
        {
            var info = new FileInfo(path);
            if (!info.Exists) throw new BackupFormatException(path, 0, "the XVA file is missing from the repository; the backup cannot be read.");
            if (info.Length != entry.Length)
                throw new BackupFormatException(path, Math.Min(info.Length, entry.Length), $"the file has {info.Length} bytes but the manifest recorded {entry.Length}; it was truncated or replaced.");
            foreach (var d in disks) _byKey[d.Key] = new Target(d);

            byte[] buffer = ArrayPool<byte>.Shared.Rent(XvaFormat.ChunkSize);
            try
            {
                await using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);
                using var tee = new TeeReadStream(file, null, computeSha256: true);
                var (tarStream, compression) = await XvaCompressionStreams.OpenForReadAsync(tee, ct).ConfigureAwait(false);
                _compression = compression;
                await using (tarStream.ConfigureAwait(false))
                {
                    var tar = new XvaTarReader(tarStream, compression == XvaCompression.None ? path : $"{path} ({compression} stream, offsets in the decompressed tar)");
                    await ReadMetadataAsync(tar, ct).ConfigureAwait(false);
                    await ReadChunksAsync(tar, tee, buffer, ct).ConfigureAwait(false);
                }
                await tee.DrainAsync(ct).ConfigureAwait(false);
                string sha = tee.FinishSha256();
                if (!string.Equals(sha, entry.Sha256, StringComparison.OrdinalIgnoreCase))
                    throw new BackupFormatException(path, 0, $"SHA-256 {sha} differs from the {entry.Sha256} recorded at backup time; the file is damaged. Use another backup.");
                options.Progress?.Report(new TransferProgress(entry.Length, entry.Length));
            }
            finally { ArrayPool<byte>.Shared.Return(buffer); }
        }

        private async Task ReadMetadataAsync(XvaTarReader tar, CancellationToken ct)
        {
            var first = await tar.NextAsync(ct).ConfigureAwait(false)
                ?? throw tar.Error(0, "The tar archive is empty: no ova.xml. This is not an XVA.");
            if (first.Name != XvaFormat.MetadataEntryName || first.Kind != TarMemberKind.File)
                throw tar.Error(first.HeaderOffset, $"The first member is '{first.Name}', but an XVA starts with ova.xml.");
            if (first.Size > MaxMetadataBytes)
                throw tar.Error(first.HeaderOffset, $"ova.xml declares {first.Size} bytes, more than {MaxMetadataBytes}; the file is damaged.");
            var bytes = new byte[first.Size];
            await tar.ReadDataAsync(bytes, ct).ConfigureAwait(false);
            string xml;
            try { xml = new UTF8Encoding(false, true).GetString(bytes); }
            catch (DecoderFallbackException ex) { throw tar.Error(first.DataOffset, "ova.xml is not valid UTF-8; the backup's metadata is damaged.", ex); }
            var metadata = XvaMetadataXml.Decode(xml, tar.Source, first.DataOffset);

            // The manifest names each disk by the snapshot VDI it was exported from; ova.xml keeps that VDI's uuid.
            // Failing that (an XVA re-exported elsewhere), the VBD at the disk's userdevice points at it.
            var vdis = metadata.OfClass("VDI").ToList();
            foreach (var t in _byKey.Values)
            {
                var vdi = vdis.FirstOrDefault(v => string.Equals(v.GetString("uuid"), t.Disk.SnapshotVdiUuid, StringComparison.OrdinalIgnoreCase));
                if (vdi is null)
                {
                    var vbd = metadata.OfClass("VBD").FirstOrDefault(b => b.GetString("userdevice") == t.Disk.UserDevice && b.GetString("type") is null or "Disk");
                    if (vbd?.GetString("VDI") is { } vdiId) vdi = metadata.Find(vdiId);
                }
                if (vdi is null || vdi.Class != "VDI")
                    throw tar.Error(first.DataOffset, $"ova.xml has no VDI for disk {t.Disk.Key} (snapshot VDI {t.Disk.SnapshotVdiUuid}, position {t.Disk.UserDevice}); the XVA does not match its manifest.", kind: XvaErrorKind.UnknownObject);
                long size = vdi.GetInt64("virtual_size") ?? -1;
                if (size != t.Disk.VirtualSize)
                    throw tar.Error(first.DataOffset, $"VDI {vdi.Id} in ova.xml has virtual_size {size}, but the manifest recorded {t.Disk.VirtualSize} bytes for disk {t.Disk.Key}; the XVA does not match its manifest.");
                t.VdiId = vdi.Id;
                t.VirtualSize = size;
                _byVdiId[vdi.Id] = t;
            }
        }

        private async Task ReadChunksAsync(XvaTarReader tar, TeeReadStream tee, byte[] buffer, CancellationToken ct)
        {
            (string Name, Target? Target, long DiskOffset, int Length, long Counter, long DataOffset, long HeaderOffset)? pending = null;
            string? lastVdi = null;
            while (await tar.NextAsync(ct).ConfigureAwait(false) is { } m)
            {
                ct.ThrowIfCancellationRequested();
                if (m.Kind == TarMemberKind.Directory) continue;
                if (m.Kind != TarMemberKind.File)
                    throw tar.Error(m.HeaderOffset, $"Tar member '{m.Name}' is not a regular file; an XVA holds only regular files.", kind: XvaErrorKind.UnexpectedMember);
                if (XvaFormat.TryParseChunkName(m.Name, out var vdiId, out long counter))
                {
                    if (pending is { } p0)
                        throw tar.Error(m.HeaderOffset, $"Chunk {p0.Name} has no checksum file after it; the backup is damaged.", kind: XvaErrorKind.UnexpectedMember);
                    if (lastVdi is not null && vdiId != lastVdi && string.CompareOrdinal(vdiId, lastVdi) < 0)
                        throw tar.Error(m.HeaderOffset, $"Disk {vdiId} comes after disk {lastVdi}; the backup is damaged.");
                    lastVdi = vdiId;
                    if (m.Size > XvaFormat.ChunkSize)
                        throw tar.Error(m.HeaderOffset, $"Chunk {m.Name} declares {m.Size} bytes, more than the {XvaFormat.ChunkSize}-byte chunk size.");
                    _byVdiId.TryGetValue(vdiId, out var t);
                    long diskOffset = -1;
                    if (t is not null)
                    {
                        if (counter <= t.LastCounter)
                            throw tar.Error(m.HeaderOffset, $"Chunk {m.Name} comes after chunk {XvaFormat.ChunkEntryName(vdiId, t.LastCounter)}; counters must strictly increase.");
                        if (t.ChunkSize > 0 && m.Size > t.ChunkSize)
                            throw tar.Error(m.HeaderOffset, $"Chunk {m.Name} has {m.Size} bytes, more than this disk's chunk size of {t.ChunkSize}.");
                        long chunkSize = t.ChunkSize > 0 ? t.ChunkSize : XvaFormat.ChunkSize;
                        long gap = counter - t.LastCounter - 1;
                        if (gap > (t.VirtualSize - t.Offset) / chunkSize + 1)
                            throw tar.Error(m.HeaderOffset, $"Chunk {m.Name} skips {gap} chunks, past the end of disk {vdiId}.");
                        diskOffset = t.Offset + gap * chunkSize;
                        if (diskOffset + m.Size > t.VirtualSize)
                            throw tar.Error(m.HeaderOffset, $"Chunk {m.Name} would put data at [{diskOffset}, {diskOffset + m.Size}), beyond the end of disk {vdiId} ({t.VirtualSize} bytes).");
                        if (t.ChunkSize == 0 && m.Size > 0) t.ChunkSize = (int)m.Size;
                    }
                    await tar.ReadDataAsync(buffer.AsMemory(0, (int)m.Size), ct).ConfigureAwait(false);
                    pending = (m.Name, t, diskOffset, (int)m.Size, counter, m.DataOffset, m.HeaderOffset);
                }
                else if (m.Name.EndsWith(XvaFormat.XxHashExtension, StringComparison.Ordinal) || m.Name.EndsWith(XvaFormat.Sha1Extension, StringComparison.Ordinal))
                {
                    var kind = m.Name.EndsWith(XvaFormat.XxHashExtension, StringComparison.Ordinal) ? XvaChecksumKind.XxHash64 : XvaChecksumKind.Sha1;
                    string chunkName = m.Name[..m.Name.LastIndexOf('.')];
                    if (pending is not { } p || p.Name != chunkName)
                        throw tar.Error(m.HeaderOffset, $"Checksum file '{m.Name}' does not follow its chunk {chunkName}; the backup is damaged.", kind: XvaErrorKind.UnexpectedMember);
                    if (m.Size > 128) throw tar.Error(m.HeaderOffset, $"Checksum file '{m.Name}' declares {m.Size} bytes; the file is damaged.");
                    var text = new byte[m.Size];
                    await tar.ReadDataAsync(text, ct).ConfigureAwait(false);
                    var data = buffer.AsSpan(0, p.Length);
                    string stored = Encoding.ASCII.GetString(text).Trim();
                    string computed = XvaFormat.FormatChecksum(data, kind);
                    if (!string.Equals(stored, computed, StringComparison.OrdinalIgnoreCase))
                        throw tar.Error(p.HeaderOffset, $"Chunk {p.Name} fails its {(kind == XvaChecksumKind.XxHash64 ? "xxhash" : "checksum")}: stored '{stored}', computed '{computed}'. The backup is corrupt; use another backup.", kind: XvaErrorKind.ChecksumMismatch);
                    if (p.Target is { } t)
                    {
                        if (p.Length > 0) await AddAsync(t, p.DiskOffset, p.DataOffset, buffer.AsMemory(0, p.Length), ct).ConfigureAwait(false);
                        t.Offset = p.DiskOffset + p.Length;
                        t.LastCounter = p.Counter;
                    }
                    pending = null;
                    options.Progress?.Report(new TransferProgress(tee.BytesRead, entry.Length));
                }
                else
                    throw tar.Error(m.HeaderOffset, $"Unexpected member '{m.Name}': an XVA holds only ova.xml, Ref:n/%08d chunks and their checksum files.", kind: XvaErrorKind.UnexpectedMember);
            }
            if (pending is { } last)
                throw tar.Error(tar.Position, $"Chunk {last.Name} has no checksum file after it; the backup is incomplete.", kind: XvaErrorKind.UnexpectedMember);
        }

        private async Task AddAsync(Target t, long diskOffset, long tarDataOffset, ReadOnlyMemory<byte> data, CancellationToken ct)
        {
            ulong hash = XxHash64.HashToUInt64(data.Span);
            if (_compression == XvaCompression.None)
            {
                t.Index.Add(diskOffset, tarDataOffset, data.Length, hash);
                return;
            }
            if (t.Spill is null)
            {
                string dir = options.SpillDirectory ?? Path.GetTempPath();
                Directory.CreateDirectory(dir);
                t.SpillPath = Path.Combine(dir, $"vprotect-xva-{Guid.NewGuid():n}.chunks");
                t.Spill = File.OpenHandle(t.SpillPath, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None,
                    FileOptions.Asynchronous | FileOptions.DeleteOnClose);
            }
            await RandomAccess.WriteAsync(t.Spill, data, t.SpillLength, ct).ConfigureAwait(false);
            t.Index.Add(diskOffset, t.SpillLength, data.Length, hash);
            t.SpillLength += data.Length;
        }

        /// <summary>The index and the handle to read it from (the XVA itself, or the spill file); the caller owns the handle.</summary>
        public (ChunkIndex Index, SafeFileHandle Handle, string Name) Take(string key)
        {
            var t = _byKey[key];
            t.Taken = true;
            if (t.Spill is not null) return (t.Index, t.Spill, $"{t.SpillPath} (copy of disk {key} from {path})");
            // Uncompressed, or a compressed XVA with no data for this disk: read the XVA (nothing will be read from an empty index).
            if (_compression != XvaCompression.None && t.Index.Count > 0) throw new InvalidOperationException("spill missing");
            return (t.Index, File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.Asynchronous | FileOptions.RandomAccess), path);
        }

        public void DisposeUntaken()
        {
            foreach (var t in _byKey.Values)
                if (!t.Taken) t.Spill?.Dispose();
        }
    }
}
