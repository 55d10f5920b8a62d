using System.Buffers;
using System.IO.Hashing;
using System.Runtime.CompilerServices;
using Microsoft.Win32.SafeHandles;
using VProtect.Core.Formats;
using VProtect.Core.IO;
using ZstdSharp;

namespace VProtect.Core.Repository;

/// <summary>
/// A restore point's disk as an <see cref="IBlockSource"/>: the records of the full and its incrementals (and of each
/// one's lower layers, format version 2) overlaid, newest first, into one map of non-overlapping segments. Memory is proportional to the number of records, never
/// to the disk size. Every record is checked against its XXH128 hash when it is decompressed.
/// </summary>
public sealed class ChainBlockSource : IBlockSource, IDisposable
{
    /// <summary>One data file and its index; <paramref name="BackupId"/> is the backup whose folder holds them.</summary>
    public sealed record Layer(string BackupId, string DataPath, string IndexPath, long VirtualSize);

    private readonly Layer[] _layers;
    private readonly BlockRecord[][] _records;
    private readonly SafeFileHandle?[] _handles;
    private readonly OverlaySegment[] _segments;
    private readonly object _cacheGate = new();
    // The last few decompressed records, least recently used replaced: reads are mostly sequential, and a record of an
    // older layer cut by newer ones is read in pieces with the newer records in between. A record being copied out is
    // pinned; an evicted, unpinned one's buffer is reused for the next record, so a restore does not fill the heap with
    // a dead 1 MiB array per record (measured: managed heap up to 332 MiB of garbage at 8 GiB, docs/performance.cbt.md).
    private const int CacheSlots = 4;
    private const int MaxFreeBuffers = 8;
    private readonly CachedRecord?[] _cache = new CachedRecord?[CacheSlots];
    private readonly Stack<byte[]> _freeBuffers = new();
    private readonly Stack<Decompressor> _decompressors = new();
    private long _cacheClock;

    private sealed class CachedRecord(int layer, int record, byte[] data)
    {
        public int Layer { get; } = layer;
        public int Record { get; } = record;
        public byte[] Data { get; } = data;
        public long Used;
        public int Pins;
        public bool Evicted;
    }

    internal ChainBlockSource(IReadOnlyList<Layer> layers, long length)
    {
        Length = length;
        _layers = layers.ToArray();
        _records = new BlockRecord[_layers.Length][];
        _handles = new SafeFileHandle?[_layers.Length];
        try
        {
            for (int i = 0; i < _layers.Length; i++)
            {
                var l = _layers[i];
                long dataLength = File.Exists(l.DataPath) ? new FileInfo(l.DataPath).Length
                    : throw new BackupFormatException(l.DataPath, 0, "the data file is missing.");
                _records[i] = BlockIndex.Read(l.IndexPath, l.VirtualSize, dataLength);
                _handles[i] = File.OpenHandle(l.DataPath, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.Asynchronous);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
        _segments = BlockOverlay.Compute(_records, length);
    }

    public long Length { get; }

    /// <summary>Bytes of disk content the restore point takes from each backup of the chain (for reports and tests).</summary>
    public IReadOnlyDictionary<string, long> BytesByBackup =>
        _segments.GroupBy(s => _layers[s.Layer].BackupId).ToDictionary(g => g.Key, g => g.Sum(s => s.End - s.Start));

    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        if (offset < 0 || offset + buffer.Length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Range {offset}+{buffer.Length} is outside the disk of {Length} bytes.");
        long end = offset + buffer.Length;
        int s = FindSegment(offset);
        long pos = offset;
        while (pos < end)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (s >= _segments.Length || _segments[s].Start >= end)
            {
                buffer.Span[(int)(pos - offset)..].Clear();
                break;
            }
            var seg = _segments[s];
            if (seg.Start > pos)
            {
                int gap = (int)(Math.Min(seg.Start, end) - pos);
                buffer.Span.Slice((int)(pos - offset), gap).Clear();
                pos += gap;
                continue;
            }
            int n = (int)(Math.Min(seg.End, end) - pos);
            var rec = _records[seg.Layer][seg.Record];
            var target = buffer.Slice((int)(pos - offset), n);
            if (rec.IsZero) target.Span.Clear();
            else
            {
                var cached = await GetRecordAsync(seg.Layer, seg.Record, cancellationToken).ConfigureAwait(false);
                try { cached.Data.AsSpan((int)(pos - rec.DiskOffset), n).CopyTo(target.Span); }
                finally { Unpin(cached); }
            }
            pos += n;
            s++;
        }
    }

    /// <summary>Index of the first segment ending after <paramref name="offset"/>.</summary>
    private int FindSegment(long offset)
    {
        int lo = 0, hi = _segments.Length;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (_segments[mid].End <= offset) lo = mid + 1; else hi = mid;
        }
        return lo;
    }

    /// <summary>The record decompressed and hash-checked, pinned: the caller must <see cref="Unpin"/> it after copying.</summary>
    private async ValueTask<CachedRecord> GetRecordAsync(int layer, int record, CancellationToken ct)
    {
        lock (_cacheGate)
            foreach (var c in _cache)
                if (c is not null && c.Layer == layer && c.Record == record)
                {
                    c.Used = ++_cacheClock;
                    c.Pins++;
                    return c;
                }
        var rec = _records[layer][record];
        byte[] stored = ArrayPool<byte>.Shared.Rent(rec.StoredLength);
        byte[] plain = TakeBuffer(rec.Length);
        try
        {
            int read = 0;
            while (read < rec.StoredLength)
            {
                int n = await RandomAccess.ReadAsync(_handles[layer]!, stored.AsMemory(read, rec.StoredLength - read), rec.FileOffset + read, ct).ConfigureAwait(false);
                if (n == 0) throw new BackupFormatException(_layers[layer].DataPath, rec.FileOffset + read, "the data file ends inside a record.");
                read += n;
            }
            var output = plain.AsSpan(0, rec.Length);
            if ((rec.Flags & BlockRecordFlags.Raw) != 0)
            {
                if (rec.StoredLength != rec.Length) throw new BackupFormatException(_layers[layer].DataPath, rec.FileOffset, "a raw record's stored length differs from its length.");
                stored.AsSpan(0, rec.Length).CopyTo(output);
            }
            else
            {
                int produced;
                Decompressor? d = null;
                try
                {
                    lock (_cacheGate) _decompressors.TryPop(out d);
                    d ??= new Decompressor();
                    produced = d.Unwrap(stored.AsSpan(0, rec.StoredLength), output);
                }
                catch (Exception ex) when (ex is ZstdException or ArgumentException or InvalidOperationException)
                {
                    d?.Dispose(); // its state after a failure is not worth trusting
                    d = null;
                    throw new BackupFormatException(_layers[layer].DataPath, rec.FileOffset, $"the record for disk range {rec.DiskOffset}+{rec.Length} does not decompress: {ex.Message}", ex);
                }
                finally
                {
                    if (d is not null) lock (_cacheGate) _decompressors.Push(d);
                }
                if (produced != rec.Length)
                    throw new BackupFormatException(_layers[layer].DataPath, rec.FileOffset, $"the record for disk range {rec.DiskOffset}+{rec.Length} decompresses to {produced} bytes.");
            }
            if (XxHash128.HashToUInt128(output) != rec.Hash)
                throw new BackupFormatException(_layers[layer].DataPath, rec.FileOffset, $"the record for disk range {rec.DiskOffset}+{rec.Length} of backup {_layers[layer].BackupId} fails its hash check: the stored data is damaged.");
            var entry = new CachedRecord(layer, record, plain) { Pins = 1 };
            lock (_cacheGate)
            {
                entry.Used = ++_cacheClock;
                // An empty slot, else the least recently used unpinned one; with every slot pinned the record is not cached.
                int slot = -1;
                for (int i = 0; i < _cache.Length; i++)
                {
                    if (_cache[i] is null) { slot = i; break; }
                    if (_cache[i]!.Pins == 0 && (slot < 0 || _cache[i]!.Used < _cache[slot]!.Used)) slot = i;
                }
                if (slot >= 0)
                {
                    if (_cache[slot] is { } old) Release(old);
                    _cache[slot] = entry;
                }
                else entry.Evicted = true;
            }
            plain = null!; // owned by the entry now
            return entry;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(stored);
            if (plain is not null) lock (_cacheGate) GiveBack(plain);
        }
    }

    private void Unpin(CachedRecord entry)
    {
        lock (_cacheGate)
        {
            entry.Pins--;
            if (entry.Evicted && entry.Pins == 0) GiveBack(entry.Data);
        }
    }

    /// <summary>Under the lock: an entry leaves the cache; its buffer is reused once nobody copies from it.</summary>
    private void Release(CachedRecord entry)
    {
        entry.Evicted = true;
        if (entry.Pins == 0) GiveBack(entry.Data);
    }

    private void GiveBack(byte[] buffer)
    {
        if (_freeBuffers.Count < MaxFreeBuffers) _freeBuffers.Push(buffer);
    }

    private byte[] TakeBuffer(int length)
    {
        lock (_cacheGate)
            if (_freeBuffers.TryPeek(out var b) && b.Length >= length) return _freeBuffers.Pop();
        return new byte[Math.Max(length, DiskWriter.MaxRecordSize)];
    }

    public async IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        long end = offset + length;
        long? runStart = null; long runEnd = 0;
        for (int s = FindSegment(offset); s < _segments.Length && _segments[s].Start < end; s++)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var seg = _segments[s];
            if (_records[seg.Layer][seg.Record].IsZero) continue;
            long a = Math.Max(seg.Start, offset), b = Math.Min(seg.End, end);
            if (runStart is not null && a == runEnd) { runEnd = b; continue; }
            if (runStart is not null) yield return new Extent(runStart.Value, runEnd - runStart.Value);
            runStart = a; runEnd = b;
        }
        if (runStart is not null) yield return new Extent(runStart.Value, runEnd - runStart.Value);
        await Task.CompletedTask.ConfigureAwait(false);
    }

    public void Dispose()
    {
        foreach (var h in _handles) h?.Dispose();
        lock (_cacheGate) while (_decompressors.TryPop(out var d)) d.Dispose();
    }
}
