using System.Buffers.Binary;
using VProtect.Core.Formats;
using VProtect.Core.Formats.Vhd;
using Xunit;

namespace VProtect.Core.Tests.Vhd;

public class VhdStructureTests
{
    [Theory]
    // 1 GiB: spec algorithm gives 2080/16/63 (research notes 4.4.2, verified with qemu).
    [InlineData(1L << 30, 2080, 16, 63)]
    // Small disk: 17 sectors per track branch, at least 4 heads.
    [InlineData(10L << 20, 301, 4, 17)]
    // Above 65535*16*63 sectors the 255-sector branch applies.
    [InlineData(200L << 30, 65535, 16, 255)]
    // Clamped at the maximum CHS.
    [InlineData(2040L << 30, 65535, 16, 255)]
    public void Geometry_follows_the_spec_algorithm(long size, int cylinders, int heads, int spt)
    {
        var g = VhdGeometry.ForSize(size);
        Assert.Equal((cylinders, heads, spt), ((int)g.Cylinders, (int)g.Heads, (int)g.SectorsPerTrack));
        Assert.True(g.TotalSectors * 512 <= size);
    }

    [Fact]
    public void Footer_round_trips_and_checksum_is_the_ones_complement_of_the_byte_sum()
    {
        var id = Guid.NewGuid();
        var footer = new VhdFooter { CurrentSize = 1 << 30, OriginalSize = 1 << 30, DiskType = VhdDiskType.Dynamic, DataOffset = 512, UniqueId = id, Timestamp = 12345, Geometry = VhdGeometry.ForSize(1 << 30) };
        var bytes = footer.ToArray();
        uint sum = 0;
        for (int i = 0; i < 512; i++) if (i < 64 || i >= 68) sum += bytes[i];
        Assert.Equal(~sum, BinaryPrimitives.ReadUInt32BigEndian(bytes.AsSpan(64)));
        // RFC 4122 byte order: the first 4 bytes of the string form come first.
        Assert.Equal(Convert.FromHexString(id.ToString("N")), bytes.AsSpan(68, 16).ToArray());
        var parsed = VhdFooter.Parse(bytes, "t", 0);
        Assert.Equal(footer, parsed);
    }

    [Fact]
    public void Footer_with_a_flipped_byte_is_rejected_with_the_offset()
    {
        var bytes = new VhdFooter { CurrentSize = 1 << 20, DiskType = VhdDiskType.Fixed }.ToArray();
        bytes[100] ^= 1;
        var ex = Assert.Throws<BackupFormatException>(() => VhdFooter.Parse(bytes, "disk.vhd", 4096));
        Assert.Contains("checksum", ex.Message);
        Assert.Equal("disk.vhd", ex.Source);
        Assert.Equal(4096, ex.Offset);
    }

    [Theory]
    [InlineData(1u)]
    [InlineData(5u)]
    [InlineData(0u)]
    public void Footer_with_unsupported_disk_type_is_rejected(uint type)
    {
        var bytes = new VhdFooter { CurrentSize = 1 << 20, DiskType = (VhdDiskType)type }.ToArray();
        var ex = Assert.Throws<BackupFormatException>(() => VhdFooter.Parse(bytes, "x", 0));
        Assert.Contains("disk type", ex.Message);
    }

    [Fact]
    public void Footer_declaring_more_than_2040_GiB_is_rejected()
    {
        var bytes = new VhdFooter { CurrentSize = (ulong)VhdFormat.MaxDiskSize + 512, DiskType = VhdDiskType.Dynamic }.ToArray();
        var ex = Assert.Throws<BackupFormatException>(() => VhdFooter.Parse(bytes, "x", 0));
        Assert.Contains("2040 GiB", ex.Message);
    }

    [Fact]
    public void Header_round_trips_with_utf16_big_endian_parent_name_and_locators()
    {
        var header = new VhdDynamicHeader
        {
            TableOffset = 2048, MaxTableEntries = 512, ParentUniqueId = Guid.NewGuid(), ParentTimestamp = 77,
            ParentUnicodeName = "pärent.vhd",
            ParentLocators = new[] { new VhdParentLocator(VhdLocatorPlatform.W2ku, 512, 20, 1536) },
        };
        var bytes = new byte[1024];
        header.WriteTo(bytes);
        Assert.Equal(new byte[] { 0, (byte)'p', 0, 0xE4 }, bytes.AsSpan(64, 4).ToArray());
        var parsed = VhdDynamicHeader.Parse(bytes, 1L << 30, "x", 512);
        Assert.Equal(header.ParentUnicodeName, parsed.ParentUnicodeName);
        Assert.Equal(header.ParentUniqueId, parsed.ParentUniqueId);
        Assert.Equal(header.ParentLocators[0], parsed.ParentLocators[0]);
        Assert.Equal(ulong.MaxValue, parsed.DataOffset);
    }

    [Theory]
    [InlineData(3000u, 512u, "block size")]       // not a power of two
    [InlineData(1u << 27, 512u, "block size")]    // 128 MiB: above our bound
    [InlineData(1u << 21, 10u, "needs")]          // too few entries for 1 GiB
    public void Header_with_bad_geometry_is_rejected(uint blockSize, uint entries, string expected)
    {
        var bytes = new byte[1024];
        new VhdDynamicHeader { TableOffset = 1536, MaxTableEntries = entries, BlockSize = blockSize }.WriteTo(bytes);
        var ex = Assert.Throws<BackupFormatException>(() => VhdDynamicHeader.Parse(bytes, 1L << 30, "x", 512));
        Assert.Contains(expected, ex.Message);
    }

    [Fact]
    public void Sector_bitmap_is_msb_first_and_runs_are_exact()
    {
        var bitmap = new byte[512];
        VhdSectorBitmap.SetRange(bitmap, 3, 14); // sectors 3..16
        Assert.Equal(0x1F, bitmap[0]);
        Assert.Equal(0xFF, bitmap[1]);
        Assert.Equal(0x80, bitmap[2]);
        Assert.Equal(3, VhdSectorBitmap.RunLength(bitmap, 0, 4096, out var set0));
        Assert.False(set0);
        Assert.Equal(14, VhdSectorBitmap.RunLength(bitmap, 3, 4096 - 3, out var set1));
        Assert.True(set1);
        Assert.Equal(4096 - 17, VhdSectorBitmap.RunLength(bitmap, 17, 4096 - 17, out _));
    }

    [Fact]
    public void Sector_bitmap_runs_match_a_bit_by_bit_model()
    {
        var rng = new Random(7);
        for (int iter = 0; iter < 100; iter++)
        {
            var bitmap = new byte[512];
            var model = new bool[4096];
            for (int k = rng.Next(10); k > 0; k--)
            {
                int first = rng.Next(4096), count = rng.Next(1, 4097 - first);
                VhdSectorBitmap.SetRange(bitmap, first, count);
                for (int s = first; s < first + count; s++) model[s] = true;
            }
            for (int s = 0; s < 4096;)
            {
                int run = VhdSectorBitmap.RunLength(bitmap, s, 4096 - s, out bool set);
                Assert.Equal(model[s], set);
                for (int t = s; t < s + run; t++) if (model[t] != set) Assert.Fail($"sector {t} in a run of {set} is {model[t]}");
                if (s + run < 4096) Assert.NotEqual(set, model[s + run]);
                s += run;
            }
        }
    }
}
