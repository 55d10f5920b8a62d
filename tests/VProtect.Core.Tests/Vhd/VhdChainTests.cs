using VProtect.Core.Formats;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.IO;
using Xunit;
using static VProtect.Core.Tests.Vhd.VhdTestKit;

namespace VProtect.Core.Tests.Vhd;

/// <summary>Random chains (base + differencing children with partial bitmaps) against an array model.</summary>
public class VhdChainTests
{
    /// <summary>Builds base + <paramref name="children"/> deltas; returns image bytes (base first) and the final model.</summary>
    internal static async Task<(List<byte[]> Images, byte[] Model, List<byte[]> Models)> BuildChainAsync(Random rng, long size, int children, int blockSize = VhdFormat.DefaultBlockSize)
    {
        var model = new byte[size];
        var images = new List<byte[]>(); var models = new List<byte[]>();
        var baseDisk = new SparseMemoryDisk(size);
        await FillAsync(rng, baseDisk, model, RandomExtents(rng, size, 20, 1_000_000));
        var baseId = Guid.NewGuid();
        images.Add(await WriteVhdAsync(baseDisk, await VhdBlockPlan.FromSourceAsync(baseDisk, blockSize), new VhdWriteOptions { UniqueId = baseId }));
        models.Add((byte[])model.Clone());
        var parentId = baseId;
        for (int c = 0; c < children; c++)
        {
            // The child's source is the full current disk; the plan names only changed sectors (as CBT would).
            var changed = RandomExtents(rng, size, 15, 150_000);
            var current = new SparseMemoryDisk(size);
            foreach (var e in changed)
            {
                var data = new byte[e.Length];
                rng.NextBytes(data);
                if (rng.Next(4) == 0) Array.Clear(data); // changed to zeros must still win over the parent
                data.CopyTo(model, e.Offset);
            }
            await current.WriteAsync(0, model, default);
            var id = Guid.NewGuid();
            var options = new VhdWriteOptions { UniqueId = id, Parent = new VhdParentIdentity(parentId, DateTimeOffset.UtcNow, $"layer{c}.vhd") };
            images.Add(await WriteVhdAsync(current, VhdBlockPlan.FromExtents(size, changed, blockSize), options));
            models.Add((byte[])model.Clone());
            parentId = id;
        }
        return (images, model, models);
    }

    internal static async Task<VhdChain> OpenChainAsync(List<byte[]> images)
    {
        var files = new List<VhdFile>();
        foreach (var image in images) files.Add(await OpenBytesAsync(image));
        return new VhdChain(files);
    }

    [Theory]
    [InlineData(31, 1)]
    [InlineData(32, 3)]
    [InlineData(33, 6)]
    public async Task Chain_reads_resolve_per_sector_like_the_model(int seed, int children)
    {
        var rng = new Random(seed);
        long size = (24L << 20) + 512 * 5;
        var (images, model, _) = await BuildChainAsync(rng, size, children);
        using var chain = await OpenChainAsync(images);
        AssertEqualBytes(model, await ReadAllAsync(chain));
    }

    [Fact]
    public async Task Layers_with_different_block_sizes_still_resolve_per_sector()
    {
        var rng = new Random(41);
        long size = 6L << 20;
        var (images1, _, _) = await BuildChainAsync(rng, size, 0, 512 * 1024);
        // Child with 2 MiB blocks on a base with 512 KiB blocks.
        using var baseFile = await OpenBytesAsync(images1[0]);
        var model = await ReadAllAsync(baseFile);
        var changed = RandomExtents(rng, size, 10, 100_000);
        foreach (var e in changed) rng.NextBytes(model.AsSpan((int)e.Offset, (int)e.Length));
        var current = new SparseMemoryDisk(size);
        await current.WriteAsync(0, model, default);
        var child = await WriteVhdAsync(current, VhdBlockPlan.FromExtents(size, changed), new VhdWriteOptions { Parent = new VhdParentIdentity(baseFile.Footer.UniqueId, DateTimeOffset.UtcNow, "b") });
        using var chain = await OpenChainAsync(new List<byte[]> { images1[0], child });
        AssertEqualBytes(model, await ReadAllAsync(chain));
    }

    [Fact]
    public async Task Merged_image_equals_the_model_and_replays_the_streamed_chain()
    {
        var rng = new Random(51);
        long size = 20L << 20;
        var (images, model, _) = await BuildChainAsync(rng, size, 4);
        using var chain = await OpenChainAsync(images);
        using var merged = new MemoryStream();
        await chain.WriteMergedAsync(merged);
        using var mergedFile = await OpenBytesAsync(merged.ToArray());
        Assert.Equal(VhdDiskType.Dynamic, mergedFile.DiskType);
        Assert.Equal(chain.Newest.Footer.UniqueId, mergedFile.Footer.UniqueId);
        AssertEqualBytes(model, await ReadAllAsync(mergedFile));

        // Restore path: apply base then each delta as a stream onto one target.
        var target = new byte[size];
        foreach (var image in images)
            await VhdStreamReader.ApplyAsync(new MemoryStream(image), new ModelTarget(target), "mem");
        AssertEqualBytes(model, target);
    }

    [Fact]
    public async Task Grown_disk_reads_zeros_beyond_the_parent()
    {
        var rng = new Random(61);
        long small = 4L << 20, large = 10L << 20;
        var baseDisk = new SparseMemoryDisk(small);
        var baseModel = new byte[small];
        await FillAsync(rng, baseDisk, baseModel, new[] { new Extent(0, small) });
        var baseId = Guid.NewGuid();
        var baseImage = await WriteVhdAsync(baseDisk, await VhdBlockPlan.FromSourceAsync(baseDisk), new VhdWriteOptions { UniqueId = baseId });
        var grown = new SparseMemoryDisk(large);
        var grownModel = new byte[large];
        baseModel.CopyTo(grownModel, 0);
        await grown.WriteAsync(0, baseModel, default);
        var changed = new[] { new Extent(1 << 20, 4096), new Extent(8L << 20, 8192) };
        await FillAsync(rng, grown, grownModel, changed);
        var child = await WriteVhdAsync(grown, VhdBlockPlan.FromExtents(large, changed), new VhdWriteOptions { Parent = new VhdParentIdentity(baseId, DateTimeOffset.UtcNow, "b") });
        using var chain = await OpenChainAsync(new List<byte[]> { baseImage, child });
        Assert.Equal(large, chain.Length);
        AssertEqualBytes(grownModel, await ReadAllAsync(chain));
    }

    [Fact]
    public async Task Chain_with_a_wrong_parent_id_is_refused()
    {
        var rng = new Random(71);
        var (images, _, _) = await BuildChainAsync(rng, 4L << 20, 2);
        var files = new List<VhdFile> { await OpenBytesAsync(images[0]), await OpenBytesAsync(images[2]) }; // layer 1 skipped
        var ex = Assert.Throws<BackupFormatException>(() => new VhdChain(files));
        Assert.Contains("does not match", ex.Message);
        foreach (var f in files) f.Dispose();
    }

    [Fact]
    public async Task Chain_whose_oldest_image_is_differencing_is_refused()
    {
        var rng = new Random(72);
        var (images, _, _) = await BuildChainAsync(rng, 4L << 20, 1);
        var files = new List<VhdFile> { await OpenBytesAsync(images[1]) };
        var ex = Assert.Throws<BackupFormatException>(() => new VhdChain(files));
        Assert.Contains("parent is missing", ex.Message);
        files[0].Dispose();
    }

    [Fact]
    public async Task Chain_allocated_extents_are_the_union_of_layers()
    {
        var rng = new Random(81);
        long size = 12L << 20;
        var (images, _, _) = await BuildChainAsync(rng, size, 3);
        using var chain = await OpenChainAsync(images);
        var expected = new bool[size / Sector];
        foreach (var layer in chain.Layers)
            await foreach (var e in layer.GetAllocatedExtentsAsync(0, size, default))
                for (long s = e.Offset / Sector; s < e.End / Sector; s++) expected[s] = true;
        var actual = new bool[size / Sector];
        long lastEnd = -1;
        await foreach (var e in chain.GetAllocatedExtentsAsync(0, size, default))
        {
            Assert.True(e.Offset > lastEnd, "extents must be ascending and coalesced");
            lastEnd = e.End;
            for (long s = e.Offset / Sector; s < e.End / Sector; s++) actual[s] = true;
        }
        Assert.Equal(expected, actual);
    }
}
