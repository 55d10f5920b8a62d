using VProtect.Core.Formats.Vhd;
using VProtect.Core.IO;
using Xunit;
using static VProtect.Core.Tests.Vhd.VhdTestKit;

namespace VProtect.Core.Tests.Vhd;

/// <summary>Writer -> stream reader / file reader against a plain byte-array model, with seeded random inputs.</summary>
public class VhdRoundTripTests
{
    [Theory]
    [InlineData(1, 64L << 20, 2 * 1024 * 1024)]
    [InlineData(2, (13L << 20) + 512 * 7, 2 * 1024 * 1024)] // last block partial
    [InlineData(3, 9L << 20, 512 * 1024)]
    [InlineData(4, 3L << 20, 4096)]
    public async Task Dynamic_image_of_random_data_reads_back_identically_both_ways(int seed, long size, int blockSize)
    {
        var rng = new Random(seed);
        var disk = new SparseMemoryDisk(size);
        var model = new byte[size];
        await FillAsync(rng, disk, model, RandomExtents(rng, size, 25, 700_000));
        var plan = await VhdBlockPlan.FromSourceAsync(disk, blockSize);
        var options = new VhdWriteOptions { ReadAhead = seed }; // 1..4: no overlap, overlap, concurrent reads
        var image = await WriteVhdAsync(disk, plan, options);

        Assert.Equal(VhdStreamWriter.ComputeLength(plan, options), image.Length);

        var streamed = new byte[size];
        var result = await VhdStreamReader.ApplyAsync(new MemoryStream(image), new ModelTarget(streamed), "mem");
        AssertEqualBytes(model, streamed);
        Assert.Equal(plan.Blocks.Count, result.BlocksApplied);
        Assert.Equal(VhdDiskType.Dynamic, result.Footer.DiskType);

        using var file = await OpenBytesAsync(image);
        Assert.Equal(size, file.Length);
        AssertEqualBytes(model, await ReadAllAsync(file));
        // Allocated extents cover all data and nothing outside the planned blocks.
        var covered = new bool[size / Sector];
        await foreach (var e in file.GetAllocatedExtentsAsync(0, size, default))
            for (long s = e.Offset / Sector; s < e.End / Sector; s++) covered[s] = true;
        for (long s = 0; s < covered.Length; s++)
            if (!covered[s]) Assert.True(model.AsSpan((int)(s * Sector), Sector).IndexOfAnyExcept((byte)0) < 0, $"sector {s} has data but is not reported allocated");
    }

    [Fact]
    public async Task Partial_bitmaps_carry_exactly_the_planned_sectors()
    {
        var rng = new Random(11);
        long size = 20L << 20;
        var source = new SparseMemoryDisk(size);
        var everything = new byte[size];
        rng.NextBytes(everything);
        await source.WriteAsync(0, everything, default);
        // The plan names only some sectors; the image must hold those and zeros elsewhere.
        var extents = RandomExtents(rng, size, 40, 300_000);
        var plan = VhdBlockPlan.FromExtents(size, extents);
        Assert.Contains(plan.Blocks, b => !b.IsFull);
        var image = await WriteVhdAsync(source, plan, new VhdWriteOptions());
        var expected = new byte[size];
        foreach (var e in extents) everything.AsSpan((int)e.Offset, (int)e.Length).CopyTo(expected.AsSpan((int)e.Offset));

        using var file = await OpenBytesAsync(image);
        AssertEqualBytes(expected, await ReadAllAsync(file));
        var reported = new List<Extent>();
        await foreach (var e in file.GetAllocatedExtentsAsync(0, size, default)) reported.Add(e);
        var union = Coalesce(extents);
        Assert.Equal(union, reported);
    }

    [Fact]
    public async Task Differencing_stream_changes_only_sectors_in_its_bitmaps()
    {
        var rng = new Random(21);
        long size = 16L << 20;
        var parentModel = new byte[size];
        rng.NextBytes(parentModel);
        var childDisk = new SparseMemoryDisk(size);
        var childModel = (byte[])parentModel.Clone();
        var changed = RandomExtents(rng, size, 30, 200_000);
        await FillAsync(rng, childDisk, childModel, changed);
        var parent = new VhdParentIdentity(Guid.NewGuid(), DateTimeOffset.FromUnixTimeSeconds(1_700_000_000), "/srv/base.vhd")
        {
            Locators = new[] { new VhdParentPath(VhdLocatorPlatform.W2ku, @"C:\b\base.vhd"), new VhdParentPath(VhdLocatorPlatform.W2ru, @".\base.vhd"), new VhdParentPath(VhdLocatorPlatform.MacX, "file:///srv/base.vhd") },
        };
        var options = new VhdWriteOptions { Parent = parent };
        var plan = VhdBlockPlan.FromExtents(size, changed);
        var image = await WriteVhdAsync(childDisk, plan, options);
        Assert.Equal(VhdStreamWriter.ComputeLength(plan, options), image.Length);

        var target = (byte[])parentModel.Clone();
        var result = await VhdStreamReader.ApplyAsync(new MemoryStream(image), new ModelTarget(target), "mem");
        AssertEqualBytes(childModel, target);
        Assert.Equal(VhdDiskType.Differencing, result.Footer.DiskType);
        Assert.Equal(parent.UniqueId, result.Header.ParentUniqueId);
        Assert.Equal(VhdFormat.ToTimestamp(parent.ModificationTime), result.Header.ParentTimestamp);
        Assert.Equal(Coalesce(changed).Sum(e => e.Length), result.BytesWritten);

        using var file = await OpenBytesAsync(image);
        Assert.Equal("/srv/base.vhd", file.Header!.ParentUnicodeName);
        var locators = await file.ReadParentLocatorsAsync();
        Assert.Equal(parent.Locators, locators);
    }

    [Fact]
    public async Task Zero_unallocated_makes_a_dirty_target_equal_to_the_image()
    {
        var rng = new Random(5);
        long size = 8L << 20;
        var disk = new SparseMemoryDisk(size);
        var model = new byte[size];
        await FillAsync(rng, disk, model, RandomExtents(rng, size, 6, 100_000));
        var image = await WriteVhdAsync(disk, await VhdBlockPlan.FromSourceAsync(disk), new VhdWriteOptions());
        var dirty = new byte[size];
        rng.NextBytes(dirty);
        await VhdStreamReader.ApplyAsync(new MemoryStream(image), new ModelTarget(dirty), "mem", new VhdApplyOptions { ZeroUnallocated = true });
        AssertEqualBytes(model, dirty);
    }

    [Fact]
    public async Task Fixed_image_is_data_then_footer_and_reads_back()
    {
        var rng = new Random(3);
        long size = (5L << 20) + 1536;
        var disk = new SparseMemoryDisk(size);
        var model = new byte[size];
        await FillAsync(rng, disk, model, RandomExtents(rng, size, 10, 300_000));
        using var ms = new MemoryStream();
        await VhdStreamWriter.WriteFixedAsync(disk, ms);
        var image = ms.ToArray();
        Assert.Equal(VhdStreamWriter.ComputeFixedLength(size), image.Length);
        AssertEqualBytes(model, image[..(int)size]);
        using var file = await OpenBytesAsync(image);
        Assert.Equal(VhdDiskType.Fixed, file.DiskType);
        AssertEqualBytes(model, await ReadAllAsync(file));
    }

    [Fact]
    public async Task Progress_reaches_the_computed_length()
    {
        var disk = new SparseMemoryDisk(6L << 20);
        await disk.WriteAsync(3 << 20, new byte[] { 9 }, default);
        var plan = await VhdBlockPlan.FromSourceAsync(disk);
        var reports = new List<TransferProgress>();
        var progress = new SyncProgress(reports.Add);
        await VhdStreamWriter.WriteAsync(disk, plan, Stream.Null, new VhdWriteOptions(), progress);
        long expected = VhdStreamWriter.ComputeLength(plan, new VhdWriteOptions());
        Assert.Equal(expected, reports[^1].BytesDone);
        Assert.All(reports, r => Assert.Equal(expected, r.BytesTotal));
    }

    [Fact]
    public async Task Plan_rejects_disks_the_format_cannot_hold()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => VhdBlockPlan.FromExtents(VhdFormat.MaxDiskSize + (2 << 20), Array.Empty<Extent>()));
        Assert.Throws<ArgumentOutOfRangeException>(() => VhdBlockPlan.FromExtents(1000, Array.Empty<Extent>()));
        Assert.Throws<ArgumentOutOfRangeException>(() => VhdBlockPlan.FromExtents(1L << 40, Array.Empty<Extent>(), 4096)); // 256 M entries
        Assert.Throws<ArgumentOutOfRangeException>(() => VhdBlockPlan.FromExtents(1 << 20, new[] { new Extent(1 << 20, 512) }));
        var disk = new SparseMemoryDisk(4 << 20);
        var plan = VhdBlockPlan.FromExtents(2 << 20, Array.Empty<Extent>());
        await Assert.ThrowsAsync<ArgumentException>(() => VhdStreamWriter.WriteAsync(disk, plan, Stream.Null));
    }

    internal static List<Extent> Coalesce(IEnumerable<Extent> extents)
    {
        var result = new List<Extent>();
        foreach (var e in extents.OrderBy(e => e.Offset))
        {
            if (result.Count > 0 && e.Offset <= result[^1].End)
                result[^1] = new Extent(result[^1].Offset, Math.Max(result[^1].End, e.End) - result[^1].Offset);
            else result.Add(e);
        }
        return result;
    }

    private sealed class SyncProgress(Action<TransferProgress> report) : IProgress<TransferProgress>
    {
        public void Report(TransferProgress value) => report(value);
    }
}
