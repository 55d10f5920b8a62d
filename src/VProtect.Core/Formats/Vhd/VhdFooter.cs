using System.Buffers.Binary;

namespace VProtect.Core.Formats.Vhd;

/// <summary>The 512-byte "hard disk footer" (at end of file; dynamic and differencing images also copy it to offset 0).</summary>
public sealed record VhdFooter
{
    public uint Features { get; init; } = VhdFormat.FeaturesReserved;
    public uint FormatVersion { get; init; } = VhdFormat.FormatVersion;
    /// <summary>Offset of the dynamic header; all ones for fixed disks.</summary>
    public ulong DataOffset { get; init; } = ulong.MaxValue;
    public uint Timestamp { get; init; }
    /// <summary>Four characters, e.g. "qem2", "caml", "tap\0", "win ".</summary>
    public string CreatorApplication { get; init; } = "qem2";
    public uint CreatorVersion { get; init; }
    public uint CreatorHostOs { get; init; }
    public ulong OriginalSize { get; init; }
    public ulong CurrentSize { get; init; }
    public VhdGeometry Geometry { get; init; }
    public VhdDiskType DiskType { get; init; }
    public Guid UniqueId { get; init; }
    public bool SavedState { get; init; }

    /// <summary>Serialises into <paramref name="destination"/> (512 bytes) with a correct checksum.</summary>
    public void WriteTo(Span<byte> destination)
    {
        var b = destination[..VhdFormat.FooterSize];
        b.Clear();
        VhdFormat.FooterCookie.CopyTo(b);
        BinaryPrimitives.WriteUInt32BigEndian(b[8..], Features);
        BinaryPrimitives.WriteUInt32BigEndian(b[12..], FormatVersion);
        BinaryPrimitives.WriteUInt64BigEndian(b[16..], DataOffset);
        BinaryPrimitives.WriteUInt32BigEndian(b[24..], Timestamp);
        BinaryPrimitives.WriteUInt32BigEndian(b[28..], VhdFormat.FourCC(CreatorApplication));
        BinaryPrimitives.WriteUInt32BigEndian(b[32..], CreatorVersion);
        BinaryPrimitives.WriteUInt32BigEndian(b[36..], CreatorHostOs);
        BinaryPrimitives.WriteUInt64BigEndian(b[40..], OriginalSize);
        BinaryPrimitives.WriteUInt64BigEndian(b[48..], CurrentSize);
        BinaryPrimitives.WriteUInt16BigEndian(b[56..], Geometry.Cylinders);
        b[58] = Geometry.Heads;
        b[59] = Geometry.SectorsPerTrack;
        BinaryPrimitives.WriteUInt32BigEndian(b[60..], (uint)DiskType);
        UniqueId.TryWriteBytes(b.Slice(68, 16), bigEndian: true, out _);
        b[84] = SavedState ? (byte)1 : (byte)0;
        BinaryPrimitives.WriteUInt32BigEndian(b[64..], VhdFormat.ComputeChecksum(b, 64));
    }

    public byte[] ToArray()
    {
        var bytes = new byte[VhdFormat.FooterSize];
        WriteTo(bytes);
        return bytes;
    }

    /// <summary>True when <paramref name="data"/> starts with the footer cookie "conectix".</summary>
    public static bool HasCookie(ReadOnlySpan<byte> data) => data.Length >= 8 && data[..8].SequenceEqual(VhdFormat.FooterCookie);

    /// <summary>Parses and validates a footer; throws <see cref="BackupFormatException"/> naming source and offset.</summary>
    public static VhdFooter Parse(ReadOnlySpan<byte> data, string source, long offset)
    {
        if (data.Length < VhdFormat.FooterSize)
            throw new BackupFormatException(source, offset, $"VHD footer is truncated ({data.Length} of 512 bytes). The file is incomplete; copy it again.");
        var b = data[..VhdFormat.FooterSize];
        if (!HasCookie(b))
            throw new BackupFormatException(source, offset, "no VHD footer (cookie 'conectix' missing). This is not a VHD image or it is truncated.");
        uint stored = BinaryPrimitives.ReadUInt32BigEndian(b[64..]);
        uint computed = VhdFormat.ComputeChecksum(b, 64);
        if (stored != computed)
            throw new BackupFormatException(source, offset, $"VHD footer checksum mismatch (stored 0x{stored:X8}, computed 0x{computed:X8}). The image is corrupt.");
        var diskType = (VhdDiskType)BinaryPrimitives.ReadUInt32BigEndian(b[60..]);
        if (diskType is not (VhdDiskType.Fixed or VhdDiskType.Dynamic or VhdDiskType.Differencing))
            throw new BackupFormatException(source, offset + 60, $"unsupported VHD disk type {(uint)diskType}; only fixed (2), dynamic (3) and differencing (4) are supported.");
        ulong currentSize = BinaryPrimitives.ReadUInt64BigEndian(b[48..]);
        if (currentSize > VhdFormat.MaxDiskSize)
            throw new BackupFormatException(source, offset + 48, $"VHD declares a size of {currentSize} bytes, above the format's limit of 2040 GiB. The image is corrupt or not a VHD.");
        if (currentSize % VhdFormat.SectorSize != 0)
            throw new BackupFormatException(source, offset + 48, $"VHD size {currentSize} is not a multiple of 512 bytes. The image is corrupt.");
        return new VhdFooter
        {
            Features = BinaryPrimitives.ReadUInt32BigEndian(b[8..]),
            FormatVersion = BinaryPrimitives.ReadUInt32BigEndian(b[12..]),
            DataOffset = BinaryPrimitives.ReadUInt64BigEndian(b[16..]),
            Timestamp = BinaryPrimitives.ReadUInt32BigEndian(b[24..]),
            CreatorApplication = VhdFormat.FourCC(BinaryPrimitives.ReadUInt32BigEndian(b[28..])),
            CreatorVersion = BinaryPrimitives.ReadUInt32BigEndian(b[32..]),
            CreatorHostOs = BinaryPrimitives.ReadUInt32BigEndian(b[36..]),
            OriginalSize = BinaryPrimitives.ReadUInt64BigEndian(b[40..]),
            CurrentSize = currentSize,
            Geometry = new VhdGeometry(BinaryPrimitives.ReadUInt16BigEndian(b[56..]), b[58], b[59]),
            DiskType = diskType,
            UniqueId = new Guid(b.Slice(68, 16), bigEndian: true),
            SavedState = b[84] != 0,
        };
    }
}
