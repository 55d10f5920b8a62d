namespace VProtect.Core.Formats.Vhd;

/// <summary>
/// Helpers for VHD sector bitmaps: one bit per sector, MSB first (sector 0 is 0x80 of byte 0),
/// as blktap 1.1+, ocaml-vhd, qemu and vhd-lib use.
/// </summary>
public static class VhdSectorBitmap
{
    public static bool Get(ReadOnlySpan<byte> bitmap, int sector) => (bitmap[sector >> 3] & (0x80 >> (sector & 7))) != 0;

    public static void Set(Span<byte> bitmap, int sector) => bitmap[sector >> 3] |= (byte)(0x80 >> (sector & 7));

    /// <summary>Sets bits [first, first+count).</summary>
    public static void SetRange(Span<byte> bitmap, int first, int count)
    {
        int end = first + count;
        int s = first;
        while (s < end && (s & 7) != 0) Set(bitmap, s++);
        while (s + 8 <= end) { bitmap[s >> 3] = 0xFF; s += 8; }
        while (s < end) Set(bitmap, s++);
    }

    /// <summary>
    /// Length of the run of equal bits starting at <paramref name="first"/>, at most <paramref name="max"/> sectors.
    /// Byte-at-a-time where possible, so a full or empty bitmap costs ~512 byte compares per 2 MiB block.
    /// </summary>
    public static int RunLength(ReadOnlySpan<byte> bitmap, int first, int max, out bool isSet)
    {
        isSet = Get(bitmap, first);
        byte whole = isSet ? (byte)0xFF : (byte)0;
        int s = first + 1, end = first + max;
        while (s < end)
        {
            if ((s & 7) == 0 && s + 8 <= end && bitmap[s >> 3] == whole) { s += 8; continue; }
            if (Get(bitmap, s) != isSet) break;
            s++;
        }
        return s - first;
    }

    public static bool IsAllSet(ReadOnlySpan<byte> bitmap, int sectors)
    {
        int full = sectors >> 3;
        if (bitmap[..full].IndexOfAnyExcept((byte)0xFF) >= 0) return false;
        for (int s = full << 3; s < sectors; s++) if (!Get(bitmap, s)) return false;
        return true;
    }

    public static bool IsEmpty(ReadOnlySpan<byte> bitmap, int sectors)
    {
        int full = sectors >> 3;
        if (bitmap[..full].IndexOfAnyExcept((byte)0) >= 0) return false;
        for (int s = full << 3; s < sectors; s++) if (Get(bitmap, s)) return false;
        return true;
    }
}
