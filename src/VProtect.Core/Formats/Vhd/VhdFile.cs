using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using Microsoft.Win32.SafeHandles;
using VProtect.Core.IO;

namespace VProtect.Core.Formats.Vhd;

/// <summary>
/// Random-access reader of a fixed, dynamic or differencing VHD file. As an <see cref="IBlockSource"/> it
/// shows only this file's own sectors (differencing: sectors whose bitmap bit is clear read as zeros);
/// use <see cref="VhdChain"/> to see a differencing disk through its parents. The disk size is always the
/// footer's current size (as XenServer, Hyper-V and blktap read it), never the CHS geometry.
/// </summary>
public sealed class VhdFile : IBlockSource, IDisposable
{
    private const int BitmapCacheLimit = 512;
    private readonly SafeFileHandle _handle;
    private readonly uint[] _bat;
    private readonly Dictionary<uint, byte[]> _bitmapCache = new();
    private readonly object _cacheGate = new();

    private VhdFile(SafeFileHandle handle, string name, long fileLength, VhdFooter footer, VhdDynamicHeader? header, uint[] bat)
    {
        _handle = handle; Name = name; FileLength = fileLength; Footer = footer; Header = header; _bat = bat;
    }

    /// <summary>Path or name used in error messages.</summary>
    public string Name { get; }
    public long FileLength { get; }
    public VhdFooter Footer { get; }
    /// <summary>Null for fixed images.</summary>
    public VhdDynamicHeader? Header { get; }
    public VhdDiskType DiskType => Footer.DiskType;
    public long Length => (long)Footer.CurrentSize;
    public int BlockSize => (int)(Header?.BlockSize ?? VhdFormat.DefaultBlockSize);

    /// <summary>Opens and validates a VHD file (footer, header, BAT); throws <see cref="BackupFormatException"/> if malformed.</summary>
    public static async Task<VhdFile> OpenAsync(string path, CancellationToken cancellationToken = default)
    {
        var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.Asynchronous);
        try { return await OpenAsync(handle, path, cancellationToken).ConfigureAwait(false); }
        catch { handle.Dispose(); throw; }
    }

    /// <summary>Opens from a handle; the returned object owns it.</summary>
    public static async Task<VhdFile> OpenAsync(SafeFileHandle handle, string name, CancellationToken cancellationToken = default)
    {
        long length = RandomAccess.GetLength(handle);
        if (length < VhdFormat.FooterSize)
            throw new BackupFormatException(name, 0, $"file has {length} bytes, less than a VHD footer. It is not a VHD or it is truncated.");
        var tail = new byte[VhdFormat.FooterSize];
        await ReadExactAsync(handle, name, tail, length - VhdFormat.FooterSize, "the VHD footer", cancellationToken).ConfigureAwait(false);
        var head = new byte[VhdFormat.FooterSize];
        await ReadExactAsync(handle, name, head, 0, "the VHD footer copy", cancellationToken).ConfigureAwait(false);

        VhdFooter footer;
        bool usedCopy = false;
        try { footer = VhdFooter.Parse(tail, name, length - VhdFormat.FooterSize); }
        catch (BackupFormatException) when (VhdFooter.HasCookie(head))
        {
            usedCopy = true;
            // Spec: if the footer is damaged, Microsoft products use the copy at offset 0. Its BAT check below still
            // rejects a truncated file.
            footer = VhdFooter.Parse(head, name, 0);
            if (footer.DiskType == VhdDiskType.Fixed)
                throw;
        }
        if (!usedCopy && footer.DiskType != VhdDiskType.Fixed && VhdFooter.HasCookie(tail) && VhdFooter.HasCookie(head) && !head.AsSpan().SequenceEqual(tail))
            throw new BackupFormatException(name, 0, "the VHD footer copy at offset 0 differs from the footer at the end. The image is inconsistent (interrupted write?); do not trust it.");

        long size = (long)footer.CurrentSize;
        if (footer.DiskType == VhdDiskType.Fixed)
        {
            if (length < size + VhdFormat.FooterSize)
                throw new BackupFormatException(name, length, $"fixed VHD declares {size} bytes of data but the file has only {length - VhdFormat.FooterSize}. The image is truncated.");
            return new VhdFile(handle, name, length, footer, null, Array.Empty<uint>());
        }

        if (footer.DataOffset < VhdFormat.FooterSize || footer.DataOffset % VhdFormat.SectorSize != 0
            || footer.DataOffset > (ulong)(length - VhdFormat.FooterSize - VhdFormat.DynamicHeaderSize))
            throw new BackupFormatException(name, 16, $"VHD footer data offset {footer.DataOffset} does not point to a dynamic header inside the file ({length} bytes).");
        var headerBytes = new byte[VhdFormat.DynamicHeaderSize];
        await ReadExactAsync(handle, name, headerBytes, (long)footer.DataOffset, "the VHD dynamic header", cancellationToken).ConfigureAwait(false);
        var header = VhdDynamicHeader.Parse(headerBytes, size, name, (long)footer.DataOffset);
        long tableOffset = (long)header.TableOffset;
        long tableBytes = header.MaxTableEntries * 4L;
        if (tableOffset < VhdFormat.FooterSize || tableOffset + tableBytes > length - VhdFormat.FooterSize)
            throw new BackupFormatException(name, (long)footer.DataOffset + 16, $"VHD block table [{tableOffset}, +{tableBytes}) lies outside the file ({length} bytes). The image is truncated or corrupt.");
        var batBytes = new byte[tableBytes];
        await ReadExactAsync(handle, name, batBytes, tableOffset, "the VHD block table", cancellationToken).ConfigureAwait(false);
        VhdLayout.CollectAllocatedBlocks(batBytes, header, size, tableOffset, length, name);
        var bat = new uint[header.MaxTableEntries];
        for (int i = 0; i < bat.Length; i++) bat[i] = BinaryPrimitives.ReadUInt32BigEndian(batBytes.AsSpan(i * 4));
        return new VhdFile(handle, name, length, footer, header, bat);
    }

    public bool IsBlockAllocated(long blockIndex) =>
        Header is null || (blockIndex >= 0 && blockIndex < _bat.Length && _bat[blockIndex] != VhdFormat.UnallocatedBlock);

    /// <summary>Number of allocated blocks (fixed images: every block).</summary>
    public int AllocatedBlockCount => Header is null ? (int)((Length + VhdFormat.DefaultBlockSize - 1) / VhdFormat.DefaultBlockSize) : _bat.Count(e => e != VhdFormat.UnallocatedBlock);

    /// <summary>Paths from the parent locators (differencing images), in header order.</summary>
    public async Task<IReadOnlyList<VhdParentPath>> ReadParentLocatorsAsync(CancellationToken cancellationToken = default)
    {
        var result = new List<VhdParentPath>();
        if (Header is null) return result;
        for (int i = 0; i < Header.ParentLocators.Count; i++)
        {
            var l = Header.ParentLocators[i];
            if (l.IsEmpty) continue;
            long entryOffset = (long)Footer.DataOffset + 576 + i * 24;
            if (l.DataLength > 64 * 1024 || l.DataLength > l.DataSpaceBytes || l.DataOffset > (ulong)FileLength || (long)l.DataOffset + l.DataLength > FileLength)
                throw new BackupFormatException(Name, entryOffset, $"parent locator {i} ({l.Platform}) has length {l.DataLength} at offset {l.DataOffset}, outside the file or its reserved space.");
            var data = new byte[l.DataLength];
            await ReadExactAsync(_handle, Name, data, (long)l.DataOffset, $"parent locator {i}", cancellationToken).ConfigureAwait(false);
            result.Add(new VhdParentPath(l.Platform, l.DecodePath(data)));
        }
        return result;
    }

    /// <summary>Reads this file's own sectors; sectors it does not hold read as zeros.</summary>
    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        CheckRange(offset, buffer.Length);
        while (buffer.Length > 0)
        {
            var (bytes, present) = await GetRunAsync(offset, buffer.Length, cancellationToken).ConfigureAwait(false);
            if (present) await ReadPresentAsync(offset, buffer[..bytes], cancellationToken).ConfigureAwait(false);
            else buffer.Span[..bytes].Clear();
            offset += bytes; buffer = buffer[bytes..];
        }
    }

    public async IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        CheckRange(offset, length);
        long end = offset + length;
        long runStart = -1, runEnd = -1;
        for (long pos = offset; pos < end;)
        {
            cancellationToken.ThrowIfCancellationRequested();
            var (bytes, present) = await GetRunAsync(pos, end - pos, cancellationToken).ConfigureAwait(false);
            if (present)
            {
                if (runStart >= 0 && runEnd == pos) runEnd = pos + bytes;
                else
                {
                    if (runStart >= 0) yield return new Extent(runStart, runEnd - runStart);
                    runStart = pos; runEnd = pos + bytes;
                }
            }
            pos += bytes;
        }
        if (runStart >= 0) yield return new Extent(runStart, runEnd - runStart);
    }

    /// <summary>
    /// From byte <paramref name="offset"/>, the number of bytes (at most <paramref name="maxBytes"/>) that are all
    /// present in this file or all absent. Runs never cross a block boundary.
    /// </summary>
    internal async ValueTask<(int Bytes, bool Present)> GetRunAsync(long offset, long maxBytes, CancellationToken cancellationToken)
    {
        long limit = Math.Min(maxBytes, Length - offset);
        if (Header is null) return ((int)Math.Min(limit, 1 << 30), true);
        long blockSize = Header.BlockSize;
        long block = offset / blockSize;
        long inBlock = offset - block * blockSize;
        long blockLimit = Math.Min(limit, blockSize - inBlock);
        if (_bat[block] == VhdFormat.UnallocatedBlock) return ((int)blockLimit, false);
        var bitmap = await GetBitmapAsync((uint)block, cancellationToken).ConfigureAwait(false);
        int sector = (int)(inBlock / VhdFormat.SectorSize);
        int withinSector = (int)(inBlock % VhdFormat.SectorSize);
        int maxSectors = (int)((withinSector + blockLimit + VhdFormat.SectorSize - 1) / VhdFormat.SectorSize);
        int run = VhdSectorBitmap.RunLength(bitmap, sector, maxSectors, out bool set);
        long bytes = Math.Min((long)run * VhdFormat.SectorSize - withinSector, blockLimit);
        return ((int)bytes, set);
    }

    /// <summary>Reads bytes known to be present (see <see cref="GetRunAsync"/>) from their place in the file.</summary>
    internal async ValueTask ReadPresentAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        long fileOffset;
        if (Header is null) fileOffset = offset;
        else
        {
            long block = offset / Header.BlockSize;
            fileOffset = (long)_bat[block] * VhdFormat.SectorSize + Header.BitmapBytes + (offset - block * Header.BlockSize);
        }
        await ReadExactAsync(_handle, Name, buffer, fileOffset, "block data", cancellationToken).ConfigureAwait(false);
    }

    private async ValueTask<byte[]> GetBitmapAsync(uint block, CancellationToken cancellationToken)
    {
        lock (_cacheGate)
            if (_bitmapCache.TryGetValue(block, out var cached)) return cached;
        var bitmap = new byte[Header!.BitmapBytes];
        await ReadExactAsync(_handle, Name, bitmap, (long)_bat[block] * VhdFormat.SectorSize, $"the sector bitmap of block {block}", cancellationToken).ConfigureAwait(false);
        lock (_cacheGate)
        {
            if (_bitmapCache.Count >= BitmapCacheLimit) _bitmapCache.Clear(); // bounded; sequential readers rarely come back
            _bitmapCache[block] = bitmap;
        }
        return bitmap;
    }

    private static async ValueTask ReadExactAsync(SafeFileHandle handle, string name, Memory<byte> buffer, long fileOffset, string what, CancellationToken cancellationToken)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = await RandomAccess.ReadAsync(handle, buffer[done..], fileOffset + done, cancellationToken).ConfigureAwait(false);
            if (n == 0)
                throw new BackupFormatException(name, fileOffset + done, $"file ended while reading {what}. The image is truncated; copy it again.");
            done += n;
        }
    }

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Range {offset}+{length} is outside the {Length}-byte disk of {Name}.");
    }

    public void Dispose() => _handle.Dispose();

    public override string ToString() => $"{Name} ({DiskType}, {Length} bytes)";
}
