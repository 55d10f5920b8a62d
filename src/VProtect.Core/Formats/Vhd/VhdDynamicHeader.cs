using System.Buffers.Binary;
using System.Text;

namespace VProtect.Core.Formats.Vhd;

/// <summary>One of the eight parent-locator entries of a dynamic header.</summary>
public readonly record struct VhdParentLocator(VhdLocatorPlatform Platform, uint DataSpace, uint DataLength, ulong DataOffset)
{
    public bool IsEmpty => Platform == VhdLocatorPlatform.None;

    /// <summary>
    /// Bytes reserved for the locator data. The spec says "sectors" but Microsoft and blktap write bytes;
    /// like ocaml-vhd, a value below 512 is read as sectors, anything else as bytes.
    /// </summary>
    public long DataSpaceBytes => DataSpace < VhdFormat.SectorSize ? (long)DataSpace * VhdFormat.SectorSize : DataSpace;

    /// <summary>Decodes the locator payload: UTF-16LE for W2ku/W2ru (the "Microsoft compatible" practice), UTF-8 otherwise.</summary>
    public string DecodePath(ReadOnlySpan<byte> data)
    {
        var text = Platform is VhdLocatorPlatform.W2ku or VhdLocatorPlatform.W2ru or VhdLocatorPlatform.Wi2k or VhdLocatorPlatform.Wi2r
            ? Encoding.Unicode.GetString(data)
            : Encoding.UTF8.GetString(data);
        return text.TrimEnd('\0');
    }
}

/// <summary>The 1024-byte dynamic disk header (dynamic and differencing images).</summary>
public sealed record VhdDynamicHeader
{
    public const int LocatorCount = 8;

    /// <summary>Unused; must be all ones (qemu: "MS tools expect all 64 bits set"; ocaml-vhd rejects anything else).</summary>
    public ulong DataOffset { get; init; } = ulong.MaxValue;
    public ulong TableOffset { get; init; }
    public uint HeaderVersion { get; init; } = VhdFormat.HeaderVersion;
    public uint MaxTableEntries { get; init; }
    public uint BlockSize { get; init; } = VhdFormat.DefaultBlockSize;
    public Guid ParentUniqueId { get; init; }
    /// <summary>Parent's modification time (VHD epoch seconds).</summary>
    public uint ParentTimestamp { get; init; }
    public string ParentUnicodeName { get; init; } = "";
    public IReadOnlyList<VhdParentLocator> ParentLocators { get; init; } = Array.Empty<VhdParentLocator>();

    public int SectorsPerBlock => (int)(BlockSize / VhdFormat.SectorSize);
    public int BitmapBytes => VhdFormat.BitmapBytes((int)BlockSize);

    public void WriteTo(Span<byte> destination)
    {
        var b = destination[..VhdFormat.DynamicHeaderSize];
        b.Clear();
        VhdFormat.HeaderCookie.CopyTo(b);
        BinaryPrimitives.WriteUInt64BigEndian(b[8..], DataOffset);
        BinaryPrimitives.WriteUInt64BigEndian(b[16..], TableOffset);
        BinaryPrimitives.WriteUInt32BigEndian(b[24..], HeaderVersion);
        BinaryPrimitives.WriteUInt32BigEndian(b[28..], MaxTableEntries);
        BinaryPrimitives.WriteUInt32BigEndian(b[32..], BlockSize);
        ParentUniqueId.TryWriteBytes(b.Slice(40, 16), bigEndian: true, out _);
        BinaryPrimitives.WriteUInt32BigEndian(b[56..], ParentTimestamp);
        // Parent name: UTF-16 big-endian, zero padded to 512 bytes (blktap, libvhdi).
        var nameBytes = Encoding.BigEndianUnicode.GetBytes(ParentUnicodeName);
        if (nameBytes.Length > 512)
            throw new ArgumentException($"Parent name is {nameBytes.Length} bytes in UTF-16; the VHD header holds at most 512 (256 characters).");
        nameBytes.CopyTo(b[64..]);
        if (ParentLocators.Count > LocatorCount)
            throw new ArgumentException($"A VHD header holds at most {LocatorCount} parent locators, got {ParentLocators.Count}.");
        for (int i = 0; i < ParentLocators.Count; i++)
        {
            var l = ParentLocators[i];
            var e = b.Slice(576 + i * 24, 24);
            BinaryPrimitives.WriteUInt32BigEndian(e, (uint)l.Platform);
            BinaryPrimitives.WriteUInt32BigEndian(e[4..], l.DataSpace);
            BinaryPrimitives.WriteUInt32BigEndian(e[8..], l.DataLength);
            BinaryPrimitives.WriteUInt64BigEndian(e[16..], l.DataOffset);
        }
        BinaryPrimitives.WriteUInt32BigEndian(b[36..], VhdFormat.ComputeChecksum(b, 36));
    }

    /// <summary>Parses and validates the header; <paramref name="diskSize"/> is the footer's current size.</summary>
    public static VhdDynamicHeader Parse(ReadOnlySpan<byte> data, long diskSize, string source, long offset)
    {
        if (data.Length < VhdFormat.DynamicHeaderSize)
            throw new BackupFormatException(source, offset, $"VHD dynamic header is truncated ({data.Length} of 1024 bytes). The file is incomplete.");
        var b = data[..VhdFormat.DynamicHeaderSize];
        if (!b[..8].SequenceEqual(VhdFormat.HeaderCookie))
            throw new BackupFormatException(source, offset, "VHD dynamic header cookie 'cxsparse' missing: the footer's data offset is wrong or the image is corrupt.");
        uint stored = BinaryPrimitives.ReadUInt32BigEndian(b[36..]);
        uint computed = VhdFormat.ComputeChecksum(b, 36);
        if (stored != computed)
            throw new BackupFormatException(source, offset, $"VHD dynamic header checksum mismatch (stored 0x{stored:X8}, computed 0x{computed:X8}). The image is corrupt.");
        uint blockSize = BinaryPrimitives.ReadUInt32BigEndian(b[32..]);
        if (blockSize < VhdFormat.SectorSize || blockSize > VhdFormat.MaxBlockSize || !uint.IsPow2(blockSize))
            throw new BackupFormatException(source, offset + 32, $"VHD block size {blockSize} is invalid (a power of two from 512 bytes to 64 MiB is required).");
        uint entries = BinaryPrimitives.ReadUInt32BigEndian(b[28..]);
        long needed = (diskSize + blockSize - 1) / blockSize;
        if (entries < needed)
            throw new BackupFormatException(source, offset + 28, $"VHD block table has {entries} entries but the disk size {diskSize} needs {needed}. The image is corrupt.");
        if (entries > VhdFormat.MaxTableEntries || (long)entries * blockSize > VhdFormat.MaxDiskSize + blockSize)
            throw new BackupFormatException(source, offset + 28, $"VHD block table declares {entries} entries of {blockSize} bytes, beyond the 2040 GiB limit. The image is corrupt.");
        ulong tableOffset = BinaryPrimitives.ReadUInt64BigEndian(b[16..]);
        if (tableOffset % VhdFormat.SectorSize != 0 || tableOffset > long.MaxValue / 2)
            throw new BackupFormatException(source, offset + 16, $"VHD block table offset {tableOffset} is not a valid sector offset.");
        var locators = new VhdParentLocator[LocatorCount];
        for (int i = 0; i < LocatorCount; i++)
        {
            var e = b.Slice(576 + i * 24, 24);
            locators[i] = new VhdParentLocator(
                (VhdLocatorPlatform)BinaryPrimitives.ReadUInt32BigEndian(e),
                BinaryPrimitives.ReadUInt32BigEndian(e[4..]),
                BinaryPrimitives.ReadUInt32BigEndian(e[8..]),
                BinaryPrimitives.ReadUInt64BigEndian(e[16..]));
        }
        return new VhdDynamicHeader
        {
            DataOffset = BinaryPrimitives.ReadUInt64BigEndian(b[8..]),
            TableOffset = tableOffset,
            HeaderVersion = BinaryPrimitives.ReadUInt32BigEndian(b[24..]),
            MaxTableEntries = entries,
            BlockSize = blockSize,
            ParentUniqueId = new Guid(b.Slice(40, 16), bigEndian: true),
            ParentTimestamp = BinaryPrimitives.ReadUInt32BigEndian(b[56..]),
            ParentUnicodeName = Encoding.BigEndianUnicode.GetString(b.Slice(64, 512)).TrimEnd('\0'),
            ParentLocators = locators,
        };
    }
}
