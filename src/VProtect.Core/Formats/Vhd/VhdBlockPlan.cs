using VProtect.Core.IO;

namespace VProtect.Core.Formats.Vhd;

/// <summary>A block to emit: its index and which sectors it carries (null = every sector).</summary>
public readonly record struct VhdPlannedBlock(uint Index, byte[]? SectorBitmap)
{
    public bool IsFull => SectorBitmap is null;
}

/// <summary>
/// The ordered list of blocks a streaming VHD will contain. Known before writing so the exact output
/// length (an HTTP Content-Length) can be computed up front. Partial bitmaps exist only where an extent
/// starts or ends inside a block, so memory stays proportional to the number of blocks, not their bytes.
/// </summary>
public sealed class VhdBlockPlan
{
    private readonly VhdPlannedBlock[] _blocks;

    private VhdBlockPlan(long diskSize, int blockSize, VhdPlannedBlock[] blocks)
    {
        DiskSize = diskSize; BlockSize = blockSize; _blocks = blocks;
    }

    public long DiskSize { get; }
    public int BlockSize { get; }
    public IReadOnlyList<VhdPlannedBlock> Blocks => _blocks;
    public int SectorsPerBlock => BlockSize / VhdFormat.SectorSize;
    public uint TableEntries => (uint)((DiskSize + BlockSize - 1) / BlockSize);

    /// <summary>Plan from explicit blocks (ascending or not; duplicates are OR-ed together).</summary>
    public static VhdBlockPlan FromBlocks(long diskSize, IEnumerable<VhdPlannedBlock> blocks, int blockSize = VhdFormat.DefaultBlockSize)
    {
        ValidateGeometry(diskSize, blockSize);
        uint entries = (uint)((diskSize + blockSize - 1) / blockSize);
        int bitmapBytes = VhdFormat.BitmapBytes(blockSize);
        var byIndex = new SortedDictionary<uint, byte[]?>();
        foreach (var b in blocks)
        {
            if (b.Index >= entries)
                throw new ArgumentOutOfRangeException(nameof(blocks), $"Block {b.Index} is beyond the disk of {diskSize} bytes ({entries} blocks of {blockSize}).");
            if (b.SectorBitmap is not null && b.SectorBitmap.Length < (blockSize / VhdFormat.SectorSize + 7) / 8)
                throw new ArgumentException($"Sector bitmap of block {b.Index} has {b.SectorBitmap.Length} bytes; a {blockSize}-byte block needs {(blockSize / VhdFormat.SectorSize + 7) / 8}.", nameof(blocks));
            if (byIndex.TryGetValue(b.Index, out var existing))
            {
                if (existing is null) continue;
                if (b.SectorBitmap is null) { byIndex[b.Index] = null; continue; }
                for (int i = 0; i < b.SectorBitmap.Length && i < existing.Length; i++) existing[i] |= b.SectorBitmap[i];
            }
            else
            {
                byte[]? copy = null;
                if (b.SectorBitmap is not null)
                {
                    copy = new byte[bitmapBytes];
                    b.SectorBitmap.AsSpan(0, Math.Min(b.SectorBitmap.Length, bitmapBytes)).CopyTo(copy);
                }
                byIndex[b.Index] = copy;
            }
        }
        return new VhdBlockPlan(diskSize, blockSize, byIndex.Select(kv => Normalize(kv.Key, kv.Value, blockSize)).Where(b => b.Index != uint.MaxValue).ToArray());
    }

    /// <summary>
    /// Plan covering byte extents (any order, may overlap). Extents are widened to whole sectors; a block fully
    /// covered (up to the disk end) is full, others get a partial bitmap.
    /// </summary>
    public static VhdBlockPlan FromExtents(long diskSize, IEnumerable<Extent> extents, int blockSize = VhdFormat.DefaultBlockSize)
    {
        ValidateGeometry(diskSize, blockSize);
        var builder = new Builder(diskSize, blockSize);
        foreach (var e in extents.Where(e => e.Length > 0).OrderBy(e => e.Offset)) builder.Add(e);
        return builder.Build();
    }

    /// <summary>
    /// Plan of every allocated extent of <paramref name="source"/> (a full backup of what the source holds).
    /// Streams the extents (ascending, as IBlockSource promises), so memory follows the block count only.
    /// </summary>
    public static async Task<VhdBlockPlan> FromSourceAsync(IBlockSource source, int blockSize = VhdFormat.DefaultBlockSize, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ValidateGeometry(source.Length, blockSize);
        var builder = new Builder(source.Length, blockSize);
        await foreach (var e in source.GetAllocatedExtentsAsync(0, source.Length, cancellationToken).ConfigureAwait(false))
            if (e.Length > 0) builder.Add(e);
        return builder.Build();
    }

    /// <summary>Accumulates ascending extents into blocks; overlapping extents are fine, descending ones are not.</summary>
    private sealed class Builder(long diskSize, int blockSize)
    {
        private readonly List<VhdPlannedBlock> _result = new();
        private readonly int _sectorsPerBlock = blockSize / VhdFormat.SectorSize;
        private readonly int _bitmapBytes = VhdFormat.BitmapBytes(blockSize);
        private long _currentIndex = -1, _lastOffset = -1, _sectorsDone;
        private byte[]? _currentBitmap;
        private bool _currentFull;

        public void Add(Extent e)
        {
            if (e.Offset < 0 || e.End > diskSize)
                throw new ArgumentOutOfRangeException(nameof(e), $"Extent {e} is outside the disk of {diskSize} bytes.");
            if (e.Offset < _lastOffset)
                throw new ArgumentException($"Extents must be ascending: {e} follows one starting at {_lastOffset}.", nameof(e));
            _lastOffset = e.Offset;
            long firstSector = Math.Max(e.Offset / VhdFormat.SectorSize, _sectorsDone);
            long endSector = (e.End + VhdFormat.SectorSize - 1) / VhdFormat.SectorSize;
            for (long s = firstSector; s < endSector;)
            {
                long index = s / _sectorsPerBlock;
                int inBlock = (int)(s - index * _sectorsPerBlock);
                int count = (int)Math.Min(_sectorsPerBlock - inBlock, endSector - s);
                if (index != _currentIndex) { Flush(); _currentIndex = index; }
                if (!_currentFull)
                {
                    if (inBlock == 0 && count == _sectorsPerBlock) _currentFull = true;
                    else VhdSectorBitmap.SetRange(_currentBitmap ??= new byte[_bitmapBytes], inBlock, count);
                }
                s += count;
            }
            _sectorsDone = Math.Max(_sectorsDone, endSector);
        }

        public VhdBlockPlan Build()
        {
            Flush();
            return new VhdBlockPlan(diskSize, blockSize, _result.ToArray());
        }

        private void Flush()
        {
            if (_currentIndex < 0) return;
            var planned = Normalize((uint)_currentIndex, _currentFull ? null : _currentBitmap, blockSize);
            if (planned.Index != uint.MaxValue) _result.Add(planned);
            _currentIndex = -1; _currentBitmap = null; _currentFull = false;
        }
    }

    /// <summary>Bitmap bits set for sectors in block <paramref name="block"/>, clipped to the disk end.</summary>
    internal int SectorsInDisk(uint index) =>
        (int)Math.Min(SectorsPerBlock, (DiskSize - (long)index * BlockSize) / VhdFormat.SectorSize);

    private static VhdPlannedBlock Normalize(uint index, byte[]? bitmap, int blockSize)
    {
        if (bitmap is null) return new VhdPlannedBlock(index, null);
        int sectors = blockSize / VhdFormat.SectorSize;
        if (VhdSectorBitmap.IsEmpty(bitmap, sectors)) return new VhdPlannedBlock(uint.MaxValue, null); // dropped
        if (VhdSectorBitmap.IsAllSet(bitmap, sectors)) return new VhdPlannedBlock(index, null);
        return new VhdPlannedBlock(index, bitmap);
    }

    private static void ValidateGeometry(long diskSize, int blockSize)
    {
        if (diskSize <= 0 || diskSize % VhdFormat.SectorSize != 0)
            throw new ArgumentOutOfRangeException(nameof(diskSize), $"A VHD disk size must be a positive multiple of 512 bytes, got {diskSize}.");
        if (diskSize > VhdFormat.MaxDiskSize)
            throw new ArgumentOutOfRangeException(nameof(diskSize), $"VHD cannot hold {diskSize} bytes: the format's limit is 2040 GiB ({VhdFormat.MaxDiskSize}). Use raw or CBT backups for larger disks.");
        if (blockSize < VhdFormat.SectorSize || blockSize > VhdFormat.MaxBlockSize || !int.IsPow2(blockSize))
            throw new ArgumentOutOfRangeException(nameof(blockSize), $"VHD block size must be a power of two from 512 bytes to 64 MiB, got {blockSize}.");
        if ((diskSize + blockSize - 1) / blockSize > VhdFormat.MaxTableEntries)
            throw new ArgumentOutOfRangeException(nameof(blockSize), $"A {diskSize}-byte disk in {blockSize}-byte blocks needs more than {VhdFormat.MaxTableEntries} block table entries; use a larger block size (2 MiB is standard).");
    }
}
