using System.Buffers.Binary;
using VProtect.Core.Formats;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.IO;
using Xunit;
using static VProtect.Core.Tests.Vhd.VhdTestKit;

namespace VProtect.Core.Tests.Vhd;

/// <summary>Every reader must answer malformed input with a BackupFormatException naming source and offset.</summary>
public class VhdHostileInputTests
{
    private const long Size = 8L << 20; // 4 blocks of 2 MiB; BAT at 1536 (one sector), blocks from 2048

    private static async Task<byte[]> ValidImageAsync(int seed = 1)
    {
        var rng = new Random(seed);
        var disk = new SparseMemoryDisk(Size);
        await FillAsync(rng, disk, new byte[Size], new[] { new Extent(0, 100_000), new Extent(5L << 20, 2 << 20) });
        return await WriteVhdAsync(disk, await VhdBlockPlan.FromSourceAsync(disk), new VhdWriteOptions());
    }

    private static void FixFooters(byte[] image)
    {
        uint sum = VhdFormat.ComputeChecksum(image.AsSpan(0, 512), 64);
        BinaryPrimitives.WriteUInt32BigEndian(image.AsSpan(64), sum);
        image.AsSpan(0, 512).CopyTo(image.AsSpan(image.Length - 512));
    }

    private static void FixHeader(byte[] image) =>
        BinaryPrimitives.WriteUInt32BigEndian(image.AsSpan(512 + 36), VhdFormat.ComputeChecksum(image.AsSpan(512, 1024), 36));

    private static async Task<BackupFormatException> StreamFailsAsync(byte[] image)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        return await Assert.ThrowsAsync<BackupFormatException>(() =>
            VhdStreamReader.ApplyAsync(new MemoryStream(image), new SparseMemoryDisk(Size * 2), "upload.vhd", cancellationToken: cts.Token));
    }

    private static async Task<BackupFormatException> FileFailsAsync(byte[] image) =>
        await Assert.ThrowsAsync<BackupFormatException>(async () => { using var f = await OpenBytesAsync(image); });

    [Fact]
    public async Task Truncated_stream_at_any_structure_boundary_is_refused()
    {
        var image = await ValidImageAsync();
        foreach (int cut in new[] { 0, 1, 100, 511, 512, 1000, 1535, 1536, 1540, 2047, 2048, 2048 + 511, 2048 + 600, image.Length - 513, image.Length - 512, image.Length - 1 })
        {
            var ex = await StreamFailsAsync(image[..cut]);
            Assert.Equal("upload.vhd", ex.Source);
            Assert.InRange(ex.Offset, 0, cut);
        }
    }

    [Fact]
    public async Task Truncated_file_is_refused()
    {
        var image = await ValidImageAsync();
        foreach (int cut in new[] { 0, 300, 512, 1600, 4096, image.Length - 600, image.Length - 1 })
            await FileFailsAsync(image[..cut]);
    }

    [Fact]
    public async Task Bad_header_checksum_is_refused_by_both_readers()
    {
        var image = await ValidImageAsync();
        image[512 + 100] ^= 0x40;
        Assert.Contains("checksum", (await StreamFailsAsync(image)).Message);
        Assert.Contains("checksum", (await FileFailsAsync(image)).Message);
    }

    [Fact]
    public async Task Bat_entry_past_the_end_is_refused()
    {
        var image = await ValidImageAsync();
        BinaryPrimitives.WriteUInt32BigEndian(image.AsSpan(1536 + 4), 0x00FF_0000); // block 1 at ~8 GiB
        var fileEx = await FileFailsAsync(image);
        Assert.Contains("past the end", fileEx.Message);
        Assert.Equal(1536 + 4, fileEx.Offset);
        Assert.Contains("ended", (await StreamFailsAsync(image)).Message);
    }

    [Fact]
    public async Task Overlapping_bat_entries_are_refused()
    {
        var image = await ValidImageAsync();
        uint first = BinaryPrimitives.ReadUInt32BigEndian(image.AsSpan(1536));
        Assert.NotEqual(VhdFormat.UnallocatedBlock, first);
        BinaryPrimitives.WriteUInt32BigEndian(image.AsSpan(1536 + 12), first + 8); // block 3 inside block 0
        Assert.Contains("overlap", (await FileFailsAsync(image)).Message);
        Assert.Contains("overlap", (await StreamFailsAsync(image)).Message);
    }

    [Fact]
    public async Task Bat_entry_over_the_header_is_refused()
    {
        var image = await ValidImageAsync();
        BinaryPrimitives.WriteUInt32BigEndian(image.AsSpan(1536 + 8), 1); // sector 1 = the header
        Assert.Contains("overlaps the VHD header", (await FileFailsAsync(image)).Message);
        Assert.Contains("overlaps the VHD header", (await StreamFailsAsync(image)).Message);
    }

    [Fact]
    public async Task Allocated_entry_beyond_the_disk_size_is_refused()
    {
        var image = await ValidImageAsync();
        BinaryPrimitives.WriteUInt32BigEndian(image.AsSpan(512 + 28), 5); // 5 entries for a 4-block disk
        FixHeader(image);
        BinaryPrimitives.WriteUInt32BigEndian(image.AsSpan(1536 + 16), 4); // entry 4 allocated
        Assert.Contains("beyond the disk size", (await FileFailsAsync(image)).Message);
        Assert.Contains("beyond the disk size", (await StreamFailsAsync(image)).Message);
    }

    [Fact]
    public async Task Huge_declared_size_is_refused_before_any_allocation()
    {
        var image = await ValidImageAsync();
        BinaryPrimitives.WriteUInt64BigEndian(image.AsSpan(48), 1UL << 60);
        FixFooters(image);
        Assert.Contains("2040 GiB", (await FileFailsAsync(image)).Message);
        Assert.Contains("2040 GiB", (await StreamFailsAsync(image)).Message);
    }

    [Fact]
    public async Task Size_larger_than_the_block_table_is_refused()
    {
        var image = await ValidImageAsync();
        BinaryPrimitives.WriteUInt64BigEndian(image.AsSpan(48), (ulong)Size * 4);
        FixFooters(image);
        Assert.Contains("needs", (await FileFailsAsync(image)).Message);
        Assert.Contains("needs", (await StreamFailsAsync(image)).Message);
    }

    [Fact]
    public async Task Trailing_footer_that_differs_from_the_copy_is_refused()
    {
        var image = await ValidImageAsync();
        image[image.Length - 512 + 24] ^= 1; // timestamp in the closing footer only
        BinaryPrimitives.WriteUInt32BigEndian(image.AsSpan(image.Length - 512 + 64), VhdFormat.ComputeChecksum(image.AsSpan(image.Length - 512), 64));
        Assert.Contains("differs", (await StreamFailsAsync(image)).Message);
        Assert.Contains("differs", (await FileFailsAsync(image)).Message);
    }

    [Fact]
    public async Task Data_after_the_last_block_is_refused_by_the_stream_reader()
    {
        var image = await ValidImageAsync();
        var padded = image[..^512].Concat(new byte[64 * 1024]).Concat(image[^512..]).ToArray();
        Assert.Contains("unexpected data", (await StreamFailsAsync(padded)).Message);
    }

    [Fact]
    public async Task Non_vhd_input_is_refused()
    {
        var junk = new byte[1 << 16];
        new Random(3).NextBytes(junk);
        Assert.Contains("conectix", (await StreamFailsAsync(junk)).Message);
        Assert.Contains("conectix", (await FileFailsAsync(junk)).Message);
    }

    [Fact]
    public async Task Fixed_image_is_refused_by_the_stream_reader_with_a_hint()
    {
        var disk = new SparseMemoryDisk(1 << 20);
        using var ms = new MemoryStream();
        await VhdStreamWriter.WriteFixedAsync(disk, ms);
        var image = ms.ToArray();
        // A fixed image's data starts with whatever the disk holds; make it look like a footer to reach the type check.
        var footer = image[^512..];
        var ex = await StreamFailsAsync(footer.Concat(image).ToArray());
        Assert.Contains("VhdFile", ex.Message);
    }

    [Fact]
    public async Task Damaged_end_footer_falls_back_to_the_copy_but_a_truncated_body_still_fails()
    {
        var image = await ValidImageAsync();
        var rng = new Random(2);
        var model = new byte[Size];
        await VhdStreamReader.ApplyAsync(new MemoryStream(image), new ModelTarget(model), "ok");
        image[^100] ^= 0xFF; // end footer checksum now wrong; copy at 0 intact
        using (var file = await OpenBytesAsync(image))
            AssertEqualBytes(model, await ReadAllAsync(file));
        await FileFailsAsync(image[..^(512 + 4096)]);
    }

    [Fact]
    public async Task Random_corruption_of_metadata_never_escapes_as_another_exception()
    {
        var valid = await ValidImageAsync(9);
        var rng = new Random(1234);
        int refused = 0;
        for (int iter = 0; iter < 150; iter++)
        {
            var image = (byte[])valid.Clone();
            int flips = rng.Next(1, 6);
            for (int k = 0; k < flips; k++) image[rng.Next(0, 2048 + 512)] = (byte)rng.Next(256); // footer copy, header, BAT, first bitmap
            if (rng.Next(2) == 0) { FixHeader(image); }
            if (rng.Next(2) == 0) { FixFooters(image); }
            foreach (var reader in new Func<Task>[]
            {
                () => VhdStreamReader.ApplyAsync(new MemoryStream(image), new SparseMemoryDisk(VhdFormat.MaxDiskSize), "fuzz"),
                async () => { using var f = await OpenBytesAsync(image); await ReadAllSafelyAsync(f); },
            })
            {
                try { await reader(); }
                catch (BackupFormatException) { refused++; }
            }
        }
        Assert.True(refused > 0);
    }

    private static async Task ReadAllSafelyAsync(VhdFile file)
    {
        // Corrupt sizes may be huge: read only the first 16 MiB through the public API.
        var buffer = new byte[1 << 20];
        for (long pos = 0; pos < Math.Min(file.Length, 16L << 20); pos += buffer.Length)
            await file.ReadAsync(pos, buffer.AsMemory(0, (int)Math.Min(buffer.Length, file.Length - pos)), default);
    }
}
