using System.Buffers.Binary;

namespace VProtect.Core.Formats.Vhd;

/// <summary>VHD disk types (footer field "disk type"). Only fixed, dynamic and differencing exist in practice.</summary>
public enum VhdDiskType : uint
{
    None = 0,
    Fixed = 2,
    Dynamic = 3,
    Differencing = 4,
}

/// <summary>Parent locator platform codes (dynamic header). Only the W2ku/W2ru/MacX kinds carry a usable path.</summary>
public enum VhdLocatorPlatform : uint
{
    None = 0,
    /// <summary>Absolute path, UTF-16 (written little-endian in practice).</summary>
    W2ku = 0x57326B75,
    /// <summary>Path relative to the child, UTF-16 (written little-endian in practice).</summary>
    W2ru = 0x57327275,
    /// <summary>file:// URL, UTF-8 (what xapi's vhd-tool writes).</summary>
    MacX = 0x4D616358,
    Wi2r = 0x57693272,
    Wi2k = 0x5769326B,
    Mac = 0x4D616320,
}

/// <summary>Cylinders/heads/sectors-per-track as stored in the footer.</summary>
public readonly record struct VhdGeometry(ushort Cylinders, byte Heads, byte SectorsPerTrack)
{
    public long TotalSectors => (long)Cylinders * Heads * SectorsPerTrack;

    /// <summary>
    /// The VHD specification's CHS algorithm (appendix "CHS Calculation"), integer division, rounding down.
    /// </summary>
    public static VhdGeometry ForSize(long sizeInBytes)
    {
        long totalSectors = Math.Min(sizeInBytes / VhdFormat.SectorSize, 65535L * 16 * 255);
        long sectorsPerTrack, heads, cylinderTimesHeads;
        if (totalSectors >= 65535L * 16 * 63)
        {
            sectorsPerTrack = 255; heads = 16; cylinderTimesHeads = totalSectors / sectorsPerTrack;
        }
        else
        {
            sectorsPerTrack = 17;
            cylinderTimesHeads = totalSectors / sectorsPerTrack;
            heads = Math.Max(4, (cylinderTimesHeads + 1023) / 1024);
            if (cylinderTimesHeads >= heads * 1024 || heads > 16)
            {
                sectorsPerTrack = 31; heads = 16; cylinderTimesHeads = totalSectors / sectorsPerTrack;
            }
            if (cylinderTimesHeads >= heads * 1024)
            {
                sectorsPerTrack = 63; heads = 16; cylinderTimesHeads = totalSectors / sectorsPerTrack;
            }
        }
        return new VhdGeometry((ushort)(cylinderTimesHeads / heads), (byte)heads, (byte)sectorsPerTrack);
    }

    public override string ToString() => $"{Cylinders}/{Heads}/{SectorsPerTrack}";
}

/// <summary>Constants and small helpers shared by the VHD reader and writer.</summary>
public static class VhdFormat
{
    public const int SectorSize = 512;
    public const int FooterSize = 512;
    public const int DynamicHeaderSize = 1024;
    public const int DefaultBlockSize = 2 * 1024 * 1024;
    /// <summary>Largest block we accept; real images use 512 KiB or 2 MiB. Bounds per-block memory.</summary>
    public const int MaxBlockSize = 64 * 1024 * 1024;
    /// <summary>2040 GiB: the spec's limit, qemu's VHD_MAX_SECTORS and xapi's max_vhd_size.</summary>
    public const long MaxDiskSize = 2040L * 1024 * 1024 * 1024;
    /// <summary>Largest BAT we load into memory (16 M entries = 64 MiB).</summary>
    public const long MaxTableEntries = 16L * 1024 * 1024;
    public const uint UnallocatedBlock = 0xFFFFFFFF;
    public const uint FormatVersion = 0x00010000;
    public const uint HeaderVersion = 0x00010000;
    public const uint FeaturesReserved = 0x00000002;
    /// <summary>Offset of the VHD timestamp epoch (2000-01-01 UTC) in Unix seconds.</summary>
    public const long TimestampEpochUnixSeconds = 946684800;

    internal static ReadOnlySpan<byte> FooterCookie => "conectix"u8;
    internal static ReadOnlySpan<byte> HeaderCookie => "cxsparse"u8;

    /// <summary>One's complement of the byte sum, with the 4-byte checksum field counted as zero.</summary>
    public static uint ComputeChecksum(ReadOnlySpan<byte> structure, int checksumOffset)
    {
        uint sum = 0;
        for (int i = 0; i < structure.Length; i++)
            if (i < checksumOffset || i >= checksumOffset + 4) sum += structure[i];
        return ~sum;
    }

    public static uint ToTimestamp(DateTimeOffset time)
    {
        long seconds = time.ToUnixTimeSeconds() - TimestampEpochUnixSeconds;
        return (uint)Math.Clamp(seconds, 0, uint.MaxValue);
    }

    public static DateTimeOffset FromTimestamp(uint timestamp) =>
        DateTimeOffset.FromUnixTimeSeconds(TimestampEpochUnixSeconds + timestamp);

    /// <summary>Bytes of a block's sector bitmap on disk (one bit per sector, padded to a sector).</summary>
    public static int BitmapBytes(int blockSize)
    {
        int bits = blockSize / SectorSize;
        int bytes = (bits + 7) / 8;
        return (bytes + SectorSize - 1) / SectorSize * SectorSize;
    }

    /// <summary>Bytes of a BAT with <paramref name="entries"/> entries, padded to a sector.</summary>
    public static long BatBytes(long entries) => (entries * 4 + SectorSize - 1) / SectorSize * SectorSize;

    internal static string FourCC(uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(b, value);
        var chars = new char[4];
        for (int i = 0; i < 4; i++) chars[i] = b[i] is >= 0x20 and < 0x7F ? (char)b[i] : b[i] == 0 ? '\0' : '?';
        return new string(chars);
    }

    internal static uint FourCC(string value)
    {
        if (value.Length != 4) throw new ArgumentException($"A four-character code needs exactly 4 characters, got '{value}'.", nameof(value));
        uint v = 0;
        foreach (char c in value)
        {
            if (c > 0x7F) throw new ArgumentException($"Four-character code '{value}' must be ASCII.", nameof(value));
            v = (v << 8) | c;
        }
        return v;
    }
}
