using VProtect.Core.IO;
using Xunit;

namespace VProtect.Core.Tests;

public class SparseMemoryDiskTests
{
    [Fact]
    public async Task Unwritten_ranges_read_as_zero_and_writes_read_back()
    {
        var disk = new SparseMemoryDisk(10L << 30);
        var data = new byte[100_000];
        new Random(1).NextBytes(data);
        await disk.WriteAsync(65_000, data, default);
        var back = new byte[data.Length + 2000];
        await disk.ReadAsync(64_000, back, default);
        Assert.All(back.AsSpan(0, 1000).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(data, back.AsSpan(1000, data.Length).ToArray());
        Assert.Equal(3, disk.AllocatedPageCount); // pages 0..2 touched by [65000, 165000)
    }

    [Fact]
    public async Task Allocated_extents_are_coalesced_and_clipped()
    {
        var disk = new SparseMemoryDisk(1 << 24);
        await disk.WriteAsync(0, new byte[] { 1 }, default);
        await disk.WriteAsync(SparseMemoryDisk.PageSize, new byte[] { 1 }, default);
        await disk.WriteAsync(5 * SparseMemoryDisk.PageSize, new byte[] { 1 }, default);
        var extents = new List<Extent>();
        await foreach (var e in disk.GetAllocatedExtentsAsync(100, disk.Length - 100, default)) extents.Add(e);
        Assert.Equal(new[] { new Extent(100, 2 * SparseMemoryDisk.PageSize - 100), new Extent(5 * SparseMemoryDisk.PageSize, SparseMemoryDisk.PageSize) }, extents);
    }
}
