using System.Buffers.Binary;

namespace VProtect.Core.Formats.Vhd;

/// <summary>Where an allocated block lives in the file.</summary>
internal readonly record struct BlockLocation(uint Index, long FileOffset);

/// <summary>BAT validation shared by the stream and file readers.</summary>
internal static class VhdLayout
{
    /// <summary>
    /// Allocated BAT entries sorted by file offset, after checking that none is past the end of the file,
    /// overlaps the header/BAT or another block, or maps a block beyond the disk size.
    /// </summary>
    public static BlockLocation[] CollectAllocatedBlocks(ReadOnlySpan<byte> bat, VhdDynamicHeader header, long diskSize,
        long tableOffset, long? fileLength, string source)
    {
        int entries = (int)header.MaxTableEntries;
        long blockBytes = header.BitmapBytes + (long)header.BlockSize;
        long neededEntries = (diskSize + header.BlockSize - 1) / header.BlockSize;
        var list = new List<BlockLocation>();
        for (int i = 0; i < entries; i++)
        {
            uint sector = BinaryPrimitives.ReadUInt32BigEndian(bat[(i * 4)..]);
            if (sector == VhdFormat.UnallocatedBlock) continue;
            long entryOffset = tableOffset + i * 4L;
            if (i >= neededEntries)
                throw new BackupFormatException(source, entryOffset, $"block table entry {i} is allocated but lies beyond the disk size {diskSize}. The image is corrupt.");
            long fileOffset = (long)sector * VhdFormat.SectorSize;
            bool overlapsHeader = fileOffset < VhdFormat.FooterSize + VhdFormat.DynamicHeaderSize;
            bool overlapsTable = fileOffset < tableOffset + entries * 4L && fileOffset + blockBytes > tableOffset;
            if (overlapsHeader || overlapsTable)
                throw new BackupFormatException(source, entryOffset, $"block {i} at file offset {fileOffset} overlaps the VHD header or block table. The image is corrupt.");
            if (fileLength is long len && fileOffset + blockBytes > len - VhdFormat.FooterSize)
                throw new BackupFormatException(source, entryOffset, $"block {i} at file offset {fileOffset} (+{blockBytes} bytes) extends past the end of the data ({len - VhdFormat.FooterSize}). The image is truncated; copy it again.");
            list.Add(new BlockLocation((uint)i, fileOffset));
        }
        var blocks = list.ToArray();
        Array.Sort(blocks, (a, b) => a.FileOffset.CompareTo(b.FileOffset));
        for (int i = 1; i < blocks.Length; i++)
        {
            if (blocks[i].FileOffset < blocks[i - 1].FileOffset + blockBytes)
                throw new BackupFormatException(source, tableOffset + blocks[i].Index * 4L,
                    $"blocks {blocks[i - 1].Index} and {blocks[i].Index} overlap in the file (offsets {blocks[i - 1].FileOffset} and {blocks[i].FileOffset}). The image is corrupt.");
        }
        return blocks;
    }
}
