using System.Buffers.Binary;
using VProtect.Core.Formats;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.IO;
using Xunit;
using static VProtect.Core.Tests.Vhd.VhdTestKit;

namespace VProtect.Core.Tests.Vhd;

public class VhdLocatorAndPlanTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("vhd-chain-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private async Task<(List<string> Paths, byte[] Model)> WriteChainFilesAsync(int seed, Func<int, string, IReadOnlyList<VhdParentPath>> locators)
    {
        var rng = new Random(seed);
        var (images, model, _) = await VhdChainTests.BuildChainAsync(rng, 6L << 20, 3);
        // Re-write the children with locators: BuildChainAsync names parents "layerN.vhd" without locators.
        var paths = new List<string>();
        for (int i = 0; i < images.Count; i++)
        {
            var path = Path.Combine(_dir, $"layer{i}.vhd");
            if (i > 0)
            {
                using var file = await OpenBytesAsync(images[i]);
                var plan = VhdBlockPlan.FromExtents(file.Length, await CollectAsync(file));
                var options = new VhdWriteOptions
                {
                    UniqueId = file.Footer.UniqueId,
                    Parent = new VhdParentIdentity(file.Header!.ParentUniqueId, DateTimeOffset.UtcNow, $"layer{i - 1}.vhd") { Locators = locators(i, paths[i - 1]) },
                };
                await using var fs = File.Create(path);
                await VhdStreamWriter.WriteAsync(file, plan, fs, options);
            }
            else await File.WriteAllBytesAsync(path, images[i]);
            paths.Add(path);
        }
        return (paths, model);
    }

    private static async Task<List<Extent>> CollectAsync(IBlockSource source)
    {
        var list = new List<Extent>();
        await foreach (var e in source.GetAllocatedExtentsAsync(0, source.Length, default)) list.Add(e);
        return list;
    }

    [Fact]
    public async Task Chain_opens_from_the_newest_file_by_relative_locators()
    {
        var (paths, model) = await WriteChainFilesAsync(1, (i, parent) => new[]
        {
            new VhdParentPath(VhdLocatorPlatform.W2ku, @"D:\elsewhere\" + Path.GetFileName(parent)),
            new VhdParentPath(VhdLocatorPlatform.W2ru, @".\" + Path.GetFileName(parent)),
        });
        using var chain = await VhdChain.OpenFromNewestAsync(paths[^1]);
        Assert.Equal(4, chain.Layers.Count);
        AssertEqualBytes(model, await ReadAllAsync(chain));
    }

    [Fact]
    public async Task Chain_opens_by_file_url_locators_as_xapi_writes_them()
    {
        var (paths, model) = await WriteChainFilesAsync(2, (i, parent) => new[] { new VhdParentPath(VhdLocatorPlatform.MacX, new Uri(parent).AbsoluteUri) });
        using var chain = await VhdChain.OpenFromNewestAsync(paths[^1]);
        AssertEqualBytes(model, await ReadAllAsync(chain));
    }

    [Fact]
    public async Task Replaced_parent_is_refused_and_missing_parent_is_named()
    {
        var (paths, _) = await WriteChainFilesAsync(3, (i, parent) => new[] { new VhdParentPath(VhdLocatorPlatform.W2ru, Path.GetFileName(parent)) });
        File.Copy(paths[0], paths[1], overwrite: true); // layer1.vhd now holds the base: wrong id
        var ex = await Assert.ThrowsAsync<BackupFormatException>(() => VhdChain.OpenFromNewestAsync(paths[2]));
        Assert.Contains("not the expected", ex.Message);
        File.Delete(paths[1]);
        ex = await Assert.ThrowsAsync<BackupFormatException>(() => VhdChain.OpenFromNewestAsync(paths[2]));
        Assert.Contains("layer1.vhd", ex.Message);
        Assert.Contains("not found", ex.Message);
    }

    [Fact]
    public async Task Locator_data_space_in_sectors_as_vhd_tool_writes_it_is_understood()
    {
        var disk = new SparseMemoryDisk(4L << 20);
        await disk.WriteAsync(0, new byte[] { 7 }, default);
        var options = new VhdWriteOptions
        {
            CreatorApplication = "caml",
            Parent = new VhdParentIdentity(Guid.NewGuid(), DateTimeOffset.UtcNow, "/var/run/sr-mount/x/base.vhd")
            { Locators = new[] { new VhdParentPath(VhdLocatorPlatform.MacX, "file:///var/run/sr-mount/x/base.vhd") } },
        };
        var image = await WriteVhdAsync(disk, await VhdBlockPlan.FromSourceAsync(disk), options);
        // Same layout as xapi's vhd-tool: locator at 1536, BAT at 2048.
        Assert.Equal(2048UL, BinaryPrimitives.ReadUInt64BigEndian(image.AsSpan(512 + 16)));
        Assert.Equal(1536UL, BinaryPrimitives.ReadUInt64BigEndian(image.AsSpan(512 + 576 + 16)));
        BinaryPrimitives.WriteUInt32BigEndian(image.AsSpan(512 + 576 + 4), 1); // data space: 1 sector
        BinaryPrimitives.WriteUInt32BigEndian(image.AsSpan(512 + 36), VhdFormat.ComputeChecksum(image.AsSpan(512, 1024), 36));
        using var file = await OpenBytesAsync(image);
        var locators = await file.ReadParentLocatorsAsync();
        Assert.Equal("file:///var/run/sr-mount/x/base.vhd", Assert.Single(locators).Path);
        Assert.Equal("caml", file.Footer.CreatorApplication);
    }

    [Fact]
    public async Task Locator_pointing_outside_the_file_is_refused()
    {
        var disk = new SparseMemoryDisk(2L << 20);
        var options = new VhdWriteOptions { Parent = new VhdParentIdentity(Guid.NewGuid(), DateTimeOffset.UtcNow, "p") { Locators = new[] { new VhdParentPath(VhdLocatorPlatform.W2ru, "p.vhd") } } };
        var image = await WriteVhdAsync(disk, VhdBlockPlan.FromExtents(disk.Length, Array.Empty<Extent>()), options);
        BinaryPrimitives.WriteUInt64BigEndian(image.AsSpan(512 + 576 + 16), 1UL << 40);
        BinaryPrimitives.WriteUInt32BigEndian(image.AsSpan(512 + 36), VhdFormat.ComputeChecksum(image.AsSpan(512, 1024), 36));
        using var file = await OpenBytesAsync(image);
        var ex = await Assert.ThrowsAsync<BackupFormatException>(() => file.ReadParentLocatorsAsync());
        Assert.Contains("locator 0", ex.Message);
    }

    [Fact]
    public async Task Random_explicit_block_bitmaps_round_trip_against_a_model()
    {
        var rng = new Random(99);
        for (int iter = 0; iter < 12; iter++)
        {
            int blockSize = rng.Next(3) switch { 0 => 4096, 1 => 64 * 1024, _ => 2 << 20 };
            int spb = blockSize / 512;
            long size = (long)rng.Next(1, 12) * blockSize - rng.Next(0, spb) * 512L;
            var source = new byte[size];
            rng.NextBytes(source);
            var disk = new SparseMemoryDisk(size);
            await disk.WriteAsync(0, source, default);
            long blocks = (size + blockSize - 1) / blockSize;
            var planned = new List<VhdPlannedBlock>();
            var expected = new byte[size];
            for (uint b = 0; b < blocks; b++)
            {
                int kind = rng.Next(3);
                if (kind == 0) continue;
                byte[]? bitmap = null;
                if (kind == 1)
                {
                    bitmap = new byte[(spb + 7) / 8];
                    for (int k = rng.Next(1, 5); k > 0; k--) { int f = rng.Next(spb); VhdSectorBitmap.SetRange(bitmap, f, rng.Next(1, spb - f + 1)); }
                }
                planned.Add(new VhdPlannedBlock(b, bitmap));
                for (int s = 0; s < spb; s++)
                {
                    long off = (long)b * blockSize + s * 512L;
                    if (off >= size) break;
                    if (bitmap is null || VhdSectorBitmap.Get(bitmap, s)) source.AsSpan((int)off, 512).CopyTo(expected.AsSpan((int)off));
                }
            }
            var plan = VhdBlockPlan.FromBlocks(size, planned.OrderBy(_ => rng.Next()), blockSize);
            var options = new VhdWriteOptions();
            var image = await WriteVhdAsync(disk, plan, options);
            Assert.Equal(VhdStreamWriter.ComputeLength(plan, options), image.Length);
            using var file = await OpenBytesAsync(image);
            AssertEqualBytes(expected, await ReadAllAsync(file));
            var streamed = new byte[size];
            await VhdStreamReader.ApplyAsync(new MemoryStream(image), new ModelTarget(streamed), "mem");
            AssertEqualBytes(expected, streamed);
        }
    }

    [Fact]
    public async Task Writer_and_reader_stop_when_cancelled()
    {
        var disk = new SparseMemoryDisk(64L << 20);
        await disk.WriteAsync(0, new byte[64 << 20], default);
        var plan = await VhdBlockPlan.FromSourceAsync(disk);
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => VhdStreamWriter.WriteAsync(disk, plan, new MemoryStream(), null, null, cts.Token));
        var image = await WriteVhdAsync(disk, plan, new VhdWriteOptions());
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => VhdStreamReader.ApplyAsync(new MemoryStream(image), new SparseMemoryDisk(disk.Length), "x", null, null, cts.Token));
    }
}

public class VhdXapiPresetTests
{
    [Fact]
    public async Task Xapi_like_delta_has_vhd_tool_layout_and_identity()
    {
        var disk = new SparseMemoryDisk(6L << 20);
        await disk.WriteAsync(2L << 20, new byte[] { 1 }, default);
        var parentId = Guid.NewGuid();
        var options = VhdWriteOptions.LikeXapiExport(parentId, "/var/run/sr-mount/sr/base.vhd");
        // xapi sends whole blocks with all-ones bitmaps.
        var plan = VhdBlockPlan.FromBlocks(disk.Length, new[] { new VhdPlannedBlock(1, null) });
        var image = await WriteVhdAsync(disk, plan, options);
        using var file = await OpenBytesAsync(image);
        Assert.Equal(VhdDiskType.Differencing, file.DiskType);
        Assert.Equal("caml", file.Footer.CreatorApplication);
        Assert.Equal(0u, file.Footer.Timestamp);
        Assert.Equal(parentId, file.Header!.ParentUniqueId);
        Assert.Equal(2048UL, file.Header.TableOffset);
        Assert.Equal("file:///var/run/sr-mount/sr/base.vhd", Assert.Single(await file.ReadParentLocatorsAsync()).Path);
        Assert.True(file.IsBlockAllocated(1));
        Assert.False(file.IsBlockAllocated(0));
        var streamed = new byte[disk.Length];
        streamed.AsSpan().Fill(0xEE); // parent content outside block 1 must survive
        await VhdStreamReader.ApplyAsync(new MemoryStream(image), new ModelTarget(streamed), "x");
        Assert.Equal(0xEE, streamed[0]);
        Assert.Equal(1, streamed[2 << 20]);
        Assert.Equal(0, streamed[(2 << 20) + 1]);
        Assert.Equal(0xEE, streamed[4 << 20]);
    }
}

public class VhdBlockPlanTests
{
    [Fact]
    public void Plan_sectors_equal_a_per_sector_model_for_random_overlapping_extents()
    {
        var rng = new Random(123);
        for (int iter = 0; iter < 60; iter++)
        {
            int blockSize = 1 << rng.Next(12, 22);
            int spb = blockSize / 512;
            long size = rng.NextInt64(1, 40) * 64 * 1024 + rng.Next(0, 128) * 512L;
            var extents = new List<Extent>();
            var model = new bool[size / 512];
            for (int k = rng.Next(0, 30); k > 0; k--)
            {
                long off = rng.NextInt64(size);
                long len = rng.NextInt64(1, Math.Min(size - off, 3L * blockSize) + 1);
                extents.Add(new Extent(off, len));
                for (long s = off / 512; s < (off + len + 511) / 512; s++) model[s] = true;
            }
            var plan = VhdBlockPlan.FromExtents(size, extents, blockSize);
            var actual = new bool[size / 512];
            uint last = 0; bool first = true;
            foreach (var b in plan.Blocks)
            {
                Assert.True(first || b.Index > last, "blocks ascending and unique");
                first = false; last = b.Index;
                for (int s = 0; s < spb && (long)b.Index * spb + s < actual.Length; s++)
                    actual[(long)b.Index * spb + s] = b.IsFull || VhdSectorBitmap.Get(b.SectorBitmap!, s);
            }
            Assert.Equal(model, actual);
        }
    }

    [Fact]
    public async Task Source_with_descending_extents_is_refused()
    {
        await Assert.ThrowsAsync<ArgumentException>(() => VhdBlockPlan.FromSourceAsync(new BackwardsSource()));
    }

    private sealed class BackwardsSource : IBlockSource
    {
        public long Length => 8 << 20;
        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken) => ValueTask.CompletedTask;
        public async IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
        {
            await Task.CompletedTask;
            yield return new Extent(4 << 20, 4096);
            yield return new Extent(0, 4096);
        }
    }
}

public class VhdFileWriterTests
{
    [Theory]
    [InlineData(1, false)]
    [InlineData(4, false)]
    [InlineData(3, true)]
    public async Task Parallel_file_writer_produces_the_stream_writers_bytes(int concurrency, bool differencing)
    {
        var rng = new Random(concurrency);
        long size = (30L << 20) + 4096;
        var disk = new SparseMemoryDisk(size);
        await FillAsync(rng, disk, new byte[size], RandomExtents(rng, size, 30, 900_000));
        var plan = differencing ? VhdBlockPlan.FromExtents(size, RandomExtents(rng, size, 20, 300_000)) : await VhdBlockPlan.FromSourceAsync(disk);
        var options = new VhdWriteOptions
        {
            UniqueId = Guid.NewGuid(), Timestamp = DateTimeOffset.FromUnixTimeSeconds(1_800_000_000),
            Parent = differencing ? new VhdParentIdentity(Guid.NewGuid(), DateTimeOffset.UtcNow, "p") { Locators = new[] { new VhdParentPath(VhdLocatorPlatform.W2ru, "p.vhd") } } : null,
        };
        var expected = await WriteVhdAsync(disk, plan, options);
        var path = Path.Combine(Path.GetTempPath(), $"vhdfile-{Guid.NewGuid():N}.vhd");
        try
        {
            using (var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite))
                await VhdStreamWriter.WriteFileAsync(disk, plan, handle, options, concurrency);
            AssertEqualBytes(expected, await File.ReadAllBytesAsync(path));
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public async Task File_writer_leaves_zero_data_as_holes_yet_reads_back_the_stream_writers_bytes()
    {
        const int MiB = 1 << 20;
        long size = (24L << 20) + 3 * 512; // the last block is cut by the disk end
        var disk = new SparseMemoryDisk(size);
        var rng = new Random(77);
        var model = new byte[size];
        await FillAsync(rng, disk, model, new[] { new Extent(0, 3 * MiB), new Extent(9 * MiB + 4096, 700_000), new Extent(size - 5000 / 512 * 512, 5000 / 512 * 512) });
        // Allocated but zero: a whole block, a 64 KiB-aligned piece inside a random block, an unaligned run.
        await disk.WriteAsync(4 * MiB, new byte[2 * MiB], default);
        await disk.WriteAsync(MiB, new byte[128 * 1024], default);
        await disk.WriteAsync(12 * MiB + 512, new byte[10_240], default);
        var plan = await VhdBlockPlan.FromSourceAsync(disk);
        var options = new VhdWriteOptions { UniqueId = Guid.NewGuid(), Timestamp = DateTimeOffset.FromUnixTimeSeconds(1_800_000_000) };
        var expected = await WriteVhdAsync(disk, plan, options);
        var path = Path.Combine(Path.GetTempPath(), $"vhdfile-{Guid.NewGuid():N}.vhd");
        try
        {
            using (var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite))
                await VhdStreamWriter.WriteFileAsync(disk, plan, handle, options, 3, writeBehindWindow: MiB, null, default);
            AssertEqualBytes(expected, await File.ReadAllBytesAsync(path));
            if (OperatingSystem.IsLinux())
            {
                // The all-zero block's data (block 2 of the disk, the 2nd planned block) was never written: a hole.
                int blockBytes = 512 + 2 * MiB;
                long metadata = VhdStreamWriter.ComputeLength(plan, options) - (long)plan.Blocks.Count * blockBytes - 512;
                int order = plan.Blocks.Select((b, i) => (b, i)).Single(x => x.b.Index == 2).i;
                long dataStart = metadata + (long)order * blockBytes + 512;
                using var file = FileBlockDevice.OpenRead(path);
                await foreach (var e in file.GetAllocatedExtentsAsync(0, file.Length, default))
                    Assert.False(e.Offset < dataStart + 2 * MiB - 8192 && e.End > dataStart + 8192, $"extent {e} covers the zero block's data at {dataStart}");
            }
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public async Task File_writer_stops_and_reports_the_source_failure()
    {
        var disk = new SparseMemoryDisk(16L << 20);
        await disk.WriteAsync(0, new byte[] { 1 }, default);
        await disk.WriteAsync(8L << 20, new byte[] { 1 }, default);
        var plan = await VhdBlockPlan.FromSourceAsync(disk);
        var path = Path.Combine(Path.GetTempPath(), $"vhdfile-{Guid.NewGuid():N}.vhd");
        try
        {
            using var handle = File.OpenHandle(path, FileMode.CreateNew, FileAccess.ReadWrite);
            var ex = await Assert.ThrowsAsync<IOException>(() => VhdStreamWriter.WriteFileAsync(new FailingSource(disk, 8L << 20), plan, handle, null, 4));
            Assert.Contains("broken at", ex.Message);
        }
        finally { File.Delete(path); }
    }

    private sealed class FailingSource(SparseMemoryDisk inner, long failAt) : IBlockSource
    {
        public long Length => inner.Length;
        public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
        {
            await Task.Yield();
            if (offset <= failAt && failAt < offset + buffer.Length) throw new IOException($"broken at {failAt}");
            await inner.ReadAsync(offset, buffer, cancellationToken);
        }
        public IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, CancellationToken cancellationToken) =>
            inner.GetAllocatedExtentsAsync(offset, length, cancellationToken);
    }
}
