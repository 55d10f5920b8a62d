using VProtect.Core.Cbt;
using VProtect.Core.Formats;
using VProtect.Core.IO;
using Xunit;

namespace VProtect.Core.Tests.Cbt;

public class ChangedBlockBitmapTests
{
    private const long K64 = 64 * 1024;

    [Fact]
    public void Known_bitmap_decodes_msb_first()
    {
        // Byte 0 = 0b1010_0000: blocks 0 and 2. Byte 1 = 0x01: block 15. Byte 2 = 0xFF: blocks 16..23.
        var b64 = Convert.ToBase64String(new byte[] { 0xA0, 0x01, 0xFF });
        var extents = ChangedBlockBitmap.Decode(b64, 24 * K64);
        Assert.Equal(new[] { new Extent(0, K64), new Extent(2 * K64, K64), new Extent(15 * K64, 9 * K64) }, extents);
    }

    [Fact]
    public void Length_is_ceil_of_blocks_over_eight_and_last_block_is_clipped_to_the_disk()
    {
        long size = 10 * K64 + 4096; // 11 blocks -> 2 bytes
        Assert.Equal(2, ChangedBlockBitmap.ExpectedLength(size));
        var bytes = ChangedBlockBitmap.EncodeBytes(new[] { new Extent(size - 1, 1) }, size);
        Assert.Equal(new byte[] { 0x00, 0x20 }, bytes); // block 10 = byte 1, mask 0x80 >> 2
        var extents = ChangedBlockBitmap.Decode(bytes, size);
        Assert.Equal(new[] { new Extent(10 * K64, 4096) }, extents);
    }

    [Fact]
    public void Widening_to_2_MiB_rounds_out_and_coalesces()
    {
        long size = 10L << 20;
        var bytes = new byte[ChangedBlockBitmap.ExpectedLength(size)];
        bytes[0] = 0x01;          // block 7 -> [0, 2 MiB)
        bytes[4] = 0x80;          // block 32 -> [2, 4 MiB)
        bytes[19] = 0x01;         // block 159 -> last 2 MiB [8, 10 MiB)
        var extents = ChangedBlockBitmap.Decode(bytes, size, 2L << 20);
        Assert.Equal(new[] { new Extent(0, 4L << 20), new Extent(8L << 20, 2L << 20) }, extents);
    }

    [Fact]
    public void Random_round_trips_match_a_bit_model()
    {
        var rng = new Random(17);
        for (int iter = 0; iter < 200; iter++)
        {
            long size = rng.NextInt64(1, 300) * K64 - (rng.Next(2) == 0 ? 0 : rng.Next(1, 128) * 512L);
            if (size <= 0) size = 512;
            long blocks = (size + K64 - 1) / K64;
            var model = new bool[blocks];
            var changed = new List<Extent>();
            for (int k = rng.Next(8); k > 0; k--)
            {
                long start = rng.NextInt64(size);
                long len = rng.NextInt64(1, Math.Min(size - start, 5 * K64) + 1);
                changed.Add(new Extent(start, len));
                for (long b = start / K64; b <= (start + len - 1) / K64; b++) model[b] = true;
            }
            var b64 = ChangedBlockBitmap.Encode(changed, size);
            Assert.Equal(ChangedBlockBitmap.ExpectedLength(size), Convert.FromBase64String(b64).Length);
            long granularity = rng.Next(3) switch { 0 => K64, 1 => 4 * K64, _ => 32 * K64 };
            var decoded = ChangedBlockBitmap.Decode(b64, size, granularity);

            var covered = new bool[blocks];
            long lastEnd = -1;
            foreach (var e in decoded)
            {
                Assert.True(e.Offset > lastEnd, "extents must be ascending, non-adjacent (coalesced)");
                Assert.True(e.End <= size);
                Assert.Equal(0, e.Offset % granularity);
                Assert.True(e.End == size || e.End % granularity == 0);
                lastEnd = e.End;
                for (long b = e.Offset / K64; b < (e.End + K64 - 1) / K64; b++) covered[b] = true;
            }
            for (long b = 0; b < blocks; b++)
            {
                long granule = b * K64 / granularity;
                bool anyInGranule = false;
                for (long x = granule * granularity / K64; x < Math.Min(blocks, (granule + 1) * granularity / K64); x++) anyInGranule |= model[x];
                Assert.Equal(anyInGranule, covered[b]);
            }
        }
    }

    [Fact]
    public void Longer_bitmap_with_clear_padding_is_accepted_as_after_a_resize()
    {
        var bytes = new byte[] { 0x80, 0, 0, 0 };
        Assert.Equal(new[] { new Extent(0, K64) }, ChangedBlockBitmap.Decode(bytes, 8 * K64));
    }

    [Fact]
    public void Bits_beyond_the_disk_are_refused_with_a_hint_to_pass_the_new_size()
    {
        var bytes = new byte[] { 0x80, 0, 0x10, 0 }; // block 19 set, disk has 8 blocks
        var ex = Assert.Throws<BackupFormatException>(() => ChangedBlockBitmap.Decode(bytes, 8 * K64));
        Assert.Contains("grew", ex.Message);
        Assert.Equal(2, ex.Offset);
        // The padding bits of the last byte count too.
        Assert.Throws<BackupFormatException>(() => ChangedBlockBitmap.Decode(new byte[] { 0x01 }, 7 * K64));
    }

    [Fact]
    public void Too_short_bitmap_is_refused()
    {
        var ex = Assert.Throws<BackupFormatException>(() => ChangedBlockBitmap.Decode(new byte[] { 0xFF }, 100 * K64));
        Assert.Contains("needs 13", ex.Message);
    }

    [Fact]
    public void Invalid_base64_and_granularity_are_refused()
    {
        Assert.Throws<BackupFormatException>(() => ChangedBlockBitmap.Decode("@@@", K64));
        Assert.Throws<ArgumentOutOfRangeException>(() => ChangedBlockBitmap.Decode("AA==", K64, 1000));
        Assert.Throws<ArgumentOutOfRangeException>(() => ChangedBlockBitmap.Encode(new[] { new Extent(0, 2 * K64) }, K64));
    }

    [Fact]
    public void Empty_bitmap_means_nothing_changed()
    {
        Assert.Empty(ChangedBlockBitmap.Decode(Convert.ToBase64String(new byte[16]), 128 * K64));
        Assert.Empty(ChangedBlockBitmap.Decode("", 0));
    }
}
