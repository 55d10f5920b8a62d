using System.Buffers.Binary;
using System.IO.Hashing;
using VProtect.Core.Formats;

namespace VProtect.Core.Repository;

[Flags]
public enum BlockRecordFlags : uint
{
    None = 0,
    /// <summary>The range reads as zeros; no bytes in the data file.</summary>
    Zero = 1,
    /// <summary>Stored uncompressed (zstd did not make it smaller).</summary>
    Raw = 2,
}

/// <summary>One stored range of a disk: where it is on the disk, where its bytes are in the data file, and its hash.</summary>
public readonly record struct BlockRecord(
    long DiskOffset, int Length, BlockRecordFlags Flags, long FileOffset, int StoredLength, UInt128 Hash)
{
    public long DiskEnd => DiskOffset + Length;
    public bool IsZero => (Flags & BlockRecordFlags.Zero) != 0;
}

/// <summary>
/// The per-disk index file: a 16-byte header ("VPBIDX01", entry size, reserved), fixed 48-byte little-endian entries
/// in ascending disk order, and a 16-byte trailer (entry count, XXH64 of everything before it). The trailer makes a
/// truncated or altered index detectable without reading the data. Format written down in docs/repository-format.md.
/// </summary>
public static class BlockIndex
{
    public const int HeaderSize = 16;
    public const int EntrySize = 48;
    public const int TrailerSize = 16;
    private static ReadOnlySpan<byte> Magic => "VPBIDX01"u8;

    public static void WriteHeader(Span<byte> header)
    {
        header.Clear();
        Magic.CopyTo(header);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], EntrySize);
    }

    public static void WriteEntry(Span<byte> entry, in BlockRecord r)
    {
        BinaryPrimitives.WriteInt64LittleEndian(entry, r.DiskOffset);
        BinaryPrimitives.WriteInt32LittleEndian(entry[8..], r.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(entry[12..], (uint)r.Flags);
        BinaryPrimitives.WriteInt64LittleEndian(entry[16..], r.FileOffset);
        BinaryPrimitives.WriteInt32LittleEndian(entry[24..], r.StoredLength);
        BinaryPrimitives.WriteUInt32LittleEndian(entry[28..], 0);
        BinaryPrimitives.WriteUInt128LittleEndian(entry[32..], r.Hash);
    }

    public static void WriteTrailer(Span<byte> trailer, long count, ulong hashOfPreceding)
    {
        BinaryPrimitives.WriteInt64LittleEndian(trailer, count);
        BinaryPrimitives.WriteUInt64LittleEndian(trailer[8..], hashOfPreceding);
    }

    /// <summary>Reads and validates a whole index file (size is bounded by the record count, not the disk size).</summary>
    public static BlockRecord[] Read(string path, long virtualSize, long dataFileLength)
    {
        byte[] bytes;
        try { bytes = File.ReadAllBytes(path); }
        catch (FileNotFoundException ex) { throw new BackupFormatException(path, 0, "the index file is missing.", ex); }
        if (bytes.Length < HeaderSize + TrailerSize || (bytes.Length - HeaderSize - TrailerSize) % EntrySize != 0)
            throw new BackupFormatException(path, bytes.Length, "the index file is truncated or has a wrong size.");
        if (!bytes.AsSpan(0, 8).SequenceEqual(Magic) || BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(8)) != EntrySize)
            throw new BackupFormatException(path, 0, "not a block index (bad magic or entry size).");
        int trailerAt = bytes.Length - TrailerSize;
        long count = BinaryPrimitives.ReadInt64LittleEndian(bytes.AsSpan(trailerAt));
        ulong expected = BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(trailerAt + 8));
        if (XxHash64.HashToUInt64(bytes.AsSpan(0, trailerAt)) != expected)
            throw new BackupFormatException(path, trailerAt, "the index checksum does not match: the file was altered or truncated.");
        if (count != (trailerAt - HeaderSize) / EntrySize)
            throw new BackupFormatException(path, trailerAt, $"the index says {count} entries but holds {(trailerAt - HeaderSize) / EntrySize}.");
        var records = new BlockRecord[count];
        long previousEnd = 0;
        for (int i = 0; i < count; i++)
        {
            int at = HeaderSize + i * EntrySize;
            var e = bytes.AsSpan(at, EntrySize);
            var r = new BlockRecord(
                BinaryPrimitives.ReadInt64LittleEndian(e),
                BinaryPrimitives.ReadInt32LittleEndian(e[8..]),
                (BlockRecordFlags)BinaryPrimitives.ReadUInt32LittleEndian(e[12..]),
                BinaryPrimitives.ReadInt64LittleEndian(e[16..]),
                BinaryPrimitives.ReadInt32LittleEndian(e[24..]),
                BinaryPrimitives.ReadUInt128LittleEndian(e[32..]));
            if (r.Length <= 0 || r.DiskOffset < previousEnd || r.DiskEnd > virtualSize)
                throw new BackupFormatException(path, at, $"entry {i} covers {r.DiskOffset}+{r.Length}, which overlaps the previous entry or lies past the disk end ({virtualSize}).");
            if (!r.IsZero && (r.StoredLength <= 0 || r.FileOffset < 0 || r.FileOffset + r.StoredLength > dataFileLength))
                throw new BackupFormatException(path, at, $"entry {i} points at data file bytes {r.FileOffset}+{r.StoredLength}, beyond its length {dataFileLength}.");
            records[i] = r;
            previousEnd = r.DiskEnd;
        }
        return records;
    }
}
