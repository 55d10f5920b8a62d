using System.Buffers;
using System.IO.Hashing;
using ZstdSharp;

namespace VProtect.Core.Repository;

/// <summary>
/// Writes one disk of a backup: ranges arrive in ascending disk order, are cut into records of at most
/// <see cref="MaxRecordSize"/>, hashed (XXH128 of the plain bytes), compressed with zstd and appended to the data file;
/// all-zero ranges become zero records with no data. Nothing is visible until the backup commits.
/// </summary>
public sealed class DiskWriter : IAsyncDisposable
{
    public const int MaxRecordSize = 1024 * 1024;
    private const int CompressionLevel = 1; // fast: the host link, not the CPU, should be the limit

    private readonly DiskManifest _disk;
    private readonly string _dataPath, _indexPath;
    private readonly FileStream _data;
    private readonly FileStream _index;
    private readonly Compressor _compressor = new(CompressionLevel);
    private readonly XxHash64 _indexHash = new();
    private readonly byte[] _entry = new byte[BlockIndex.EntrySize];
    private long _lastEnd;
    private long _dataBytes;
    private int _count;
    private bool _completed;

    internal DiskWriter(string folder, DiskManifest disk)
    {
        _disk = disk;
        Directory.CreateDirectory(Path.Combine(folder, "disks"));
        disk.DataFile = $"disks/{disk.Key}.data";
        disk.IndexFile = $"disks/{disk.Key}.index";
        _dataPath = Path.Combine(folder, disk.DataFile);
        _indexPath = Path.Combine(folder, disk.IndexFile);
        _data = new FileStream(_dataPath, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous);
        _index = new FileStream(_indexPath, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous);
        var header = new byte[BlockIndex.HeaderSize];
        BlockIndex.WriteHeader(header);
        _index.Write(header);
        _indexHash.Append(header);
    }

    public DiskManifest Disk => _disk;
    public bool IsCompleted => _completed;

    /// <summary>Stores <paramref name="data"/> at <paramref name="diskOffset"/>. Calls must come in ascending, non-overlapping order.</summary>
    public async ValueTask WriteAsync(long diskOffset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        if (_completed) throw new InvalidOperationException("The disk writer is already completed.");
        if (diskOffset < _lastEnd)
            throw new ArgumentException($"Ranges must come in ascending order: {diskOffset} is before the end of the previous range ({_lastEnd}).", nameof(diskOffset));
        if (diskOffset + data.Length > _disk.VirtualSize)
            throw new ArgumentException($"Range {diskOffset}+{data.Length} lies past the disk end ({_disk.VirtualSize}).", nameof(data));
        while (!data.IsEmpty)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int n = Math.Min(MaxRecordSize, data.Length);
            await WriteRecordAsync(diskOffset, data[..n], cancellationToken).ConfigureAwait(false);
            diskOffset += n;
            data = data[n..];
        }
        _lastEnd = diskOffset;
    }

    /// <summary>Records that the range reads as zeros in this backup (an incremental where the guest wrote zeros).</summary>
    public async ValueTask WriteZeroesAsync(long diskOffset, long length, CancellationToken cancellationToken)
    {
        if (diskOffset < _lastEnd) throw new ArgumentException("Ranges must come in ascending order.", nameof(diskOffset));
        if (diskOffset + length > _disk.VirtualSize) throw new ArgumentException("Range lies past the disk end.", nameof(length));
        while (length > 0)
        {
            int n = (int)Math.Min(MaxRecordSize, length);
            await AppendEntryAsync(new BlockRecord(diskOffset, n, BlockRecordFlags.Zero, 0, 0, default), cancellationToken).ConfigureAwait(false);
            diskOffset += n; length -= n;
        }
        _lastEnd = diskOffset;
    }

    private async ValueTask WriteRecordAsync(long diskOffset, ReadOnlyMemory<byte> plain, CancellationToken ct)
    {
        _dataBytes += plain.Length;
        if (!plain.Span.ContainsAnyExcept((byte)0))
        {
            await AppendEntryAsync(new BlockRecord(diskOffset, plain.Length, BlockRecordFlags.Zero, 0, 0, default), ct).ConfigureAwait(false);
            return;
        }
        UInt128 hash = XxHash128.HashToUInt128(plain.Span);
        int bound = Compressor.GetCompressBound(plain.Length);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(bound);
        try
        {
            int compressed = _compressor.Wrap(plain.Span, buffer);
            long at = _data.Position;
            BlockRecordFlags flags;
            int stored;
            if (compressed < plain.Length)
            {
                await _data.WriteAsync(buffer.AsMemory(0, compressed), ct).ConfigureAwait(false);
                flags = BlockRecordFlags.None; stored = compressed;
            }
            else
            {
                await _data.WriteAsync(plain, ct).ConfigureAwait(false);
                flags = BlockRecordFlags.Raw; stored = plain.Length;
            }
            await AppendEntryAsync(new BlockRecord(diskOffset, plain.Length, flags, at, stored, hash), ct).ConfigureAwait(false);
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }

    private async ValueTask AppendEntryAsync(BlockRecord record, CancellationToken ct)
    {
        BlockIndex.WriteEntry(_entry, record);
        _indexHash.Append(_entry);
        await _index.WriteAsync(_entry, ct).ConfigureAwait(false);
        _count++;
    }

    /// <summary>Finishes both files and flushes them to stable storage; fills the disk's manifest entry.</summary>
    public async ValueTask CompleteAsync(CancellationToken cancellationToken)
    {
        if (_completed) return;
        var trailer = new byte[BlockIndex.TrailerSize];
        BlockIndex.WriteTrailer(trailer, _count, _indexHash.GetCurrentHashAsUInt64());
        await _index.WriteAsync(trailer, cancellationToken).ConfigureAwait(false);
        await _data.FlushAsync(cancellationToken).ConfigureAwait(false);
        await _index.FlushAsync(cancellationToken).ConfigureAwait(false);
        _data.Flush(flushToDisk: true);
        _index.Flush(flushToDisk: true);
        _disk.RecordCount = _count;
        _disk.DataBytes = _dataBytes;
        _disk.StoredBytes = _data.Length + _index.Length;
        _completed = true;
        await DisposeAsync().ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        _compressor.Dispose();
        await _data.DisposeAsync().ConfigureAwait(false);
        await _index.DisposeAsync().ConfigureAwait(false);
    }
}
