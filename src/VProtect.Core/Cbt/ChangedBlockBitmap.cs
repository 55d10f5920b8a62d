using VProtect.Core.Formats;
using VProtect.Core.IO;

namespace VProtect.Core.Cbt;

/// <summary>
/// The bitmap returned by VDI.list_changed_blocks: standard base64 of one bit per 64 KiB block, MSB first
/// within a byte (block i is byte i/8, mask 0x80 >> (i%8)), ceil(blocks/8) bytes long — longer when the disk
/// grew between the two snapshots (SM pads the older log).
/// </summary>
public static class ChangedBlockBitmap
{
    /// <summary>Bytes covered by one bit (SM's CBT_BLOCK_SIZE).</summary>
    public const int BlockSize = 64 * 1024;
    private const string SourceName = "VDI.list_changed_blocks bitmap";

    /// <summary>Number of bitmap bytes for a disk of <paramref name="diskSize"/> bytes.</summary>
    public static long ExpectedLength(long diskSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(diskSize);
        long blocks = (diskSize + BlockSize - 1) / BlockSize;
        return (blocks + 7) / 8;
    }

    /// <summary>
    /// Changed extents of a disk of <paramref name="diskSize"/> bytes (pass vdi_to's virtual size), ascending and
    /// coalesced, clipped to the disk. With <paramref name="granularity"/> (a multiple of 64 KiB, e.g. 2 MiB) each
    /// extent is widened to whole granules first.
    /// </summary>
    /// <exception cref="BackupFormatException">Not base64, too short for the disk, or marks blocks beyond its end.</exception>
    public static IReadOnlyList<Extent> Decode(string base64Bitmap, long diskSize, long granularity = BlockSize)
    {
        ArgumentNullException.ThrowIfNull(base64Bitmap);
        ArgumentOutOfRangeException.ThrowIfNegative(diskSize);
        if (granularity <= 0 || granularity % BlockSize != 0)
            throw new ArgumentOutOfRangeException(nameof(granularity), $"Granularity must be a positive multiple of {BlockSize} bytes, got {granularity}.");
        byte[] bitmap;
        try { bitmap = Convert.FromBase64String(base64Bitmap); }
        catch (FormatException ex)
        {
            throw new BackupFormatException(SourceName, 0, "is not valid base64. The XAPI reply is damaged; call VDI.list_changed_blocks again.", ex);
        }
        return Decode(bitmap, diskSize, granularity);
    }

    /// <summary>As <see cref="Decode(string,long,long)"/> for the already-decoded bytes.</summary>
    public static IReadOnlyList<Extent> Decode(ReadOnlySpan<byte> bitmap, long diskSize, long granularity = BlockSize)
    {
        long expected = ExpectedLength(diskSize);
        if (bitmap.Length < expected)
            throw new BackupFormatException(SourceName, bitmap.Length,
                $"has {bitmap.Length} bytes but a disk of {diskSize} bytes needs {expected}. It belongs to a smaller disk; pass the virtual size of the VDI it was computed for.");
        long blocks = (diskSize + BlockSize - 1) / BlockSize;
        // Bits past the disk (the padding of the last byte, or a longer bitmap) must be clear: a set one means the
        // size passed in is older than the bitmap and data would be missed.
        for (long bit = blocks; bit < (long)bitmap.Length * 8; bit++)
        {
            if ((bitmap[(int)(bit >> 3)] & (0x80 >> (int)(bit & 7))) != 0)
                throw new BackupFormatException(SourceName, bit >> 3,
                    $"marks 64 KiB block {bit} changed, beyond the disk of {diskSize} bytes ({blocks} blocks). The disk grew; pass the current virtual size of vdi_to.");
            if ((bit & 7) == 7 && bit + 1 < (long)bitmap.Length * 8)
            {
                // Skip whole zero bytes quickly.
                int nextByte = (int)((bit + 1) >> 3);
                int nonZero = bitmap[nextByte..].IndexOfAnyExcept((byte)0);
                if (nonZero < 0) break;
                bit = (long)(nextByte + nonZero) * 8 - 1;
            }
        }

        var result = new List<Extent>();
        long runStart = -1, runEnd = -1;
        for (long i = 0; i < blocks;)
        {
            byte b = bitmap[(int)(i >> 3)];
            if ((i & 7) == 0 && b == 0) { i += 8; continue; }
            if ((b & (0x80 >> (int)(i & 7))) == 0) { i++; continue; }
            long start = i * BlockSize / granularity * granularity;
            long end = Math.Min(((i + 1) * BlockSize + granularity - 1) / granularity * granularity, diskSize);
            if (runStart >= 0 && start <= runEnd) runEnd = Math.Max(runEnd, end);
            else
            {
                if (runStart >= 0) result.Add(new Extent(runStart, runEnd - runStart));
                runStart = start; runEnd = end;
            }
            i++;
        }
        if (runStart >= 0) result.Add(new Extent(runStart, runEnd - runStart));
        return result;
    }

    /// <summary>
    /// Base64 bitmap marking every 64 KiB block touched by <paramref name="changed"/> (any order, may overlap),
    /// exactly as SM returns it for a disk of <paramref name="diskSize"/> bytes.
    /// </summary>
    public static string Encode(IEnumerable<Extent> changed, long diskSize) => Convert.ToBase64String(EncodeBytes(changed, diskSize));

    public static byte[] EncodeBytes(IEnumerable<Extent> changed, long diskSize)
    {
        ArgumentNullException.ThrowIfNull(changed);
        long length = ExpectedLength(diskSize);
        if (length > Array.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(diskSize), $"A disk of {diskSize} bytes is too large for a CBT bitmap.");
        var bitmap = new byte[length];
        foreach (var e in changed)
        {
            if (e.Length == 0) continue;
            if (e.Offset < 0 || e.Length < 0 || e.End > diskSize)
                throw new ArgumentOutOfRangeException(nameof(changed), $"Changed extent {e} is outside the disk of {diskSize} bytes.");
            for (long i = e.Offset / BlockSize, last = (e.End - 1) / BlockSize; i <= last; i++)
                bitmap[i >> 3] |= (byte)(0x80 >> (int)(i & 7));
        }
        return bitmap;
    }
}
