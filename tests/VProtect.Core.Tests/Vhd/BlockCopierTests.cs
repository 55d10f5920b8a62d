using VProtect.Core.Formats.Vhd;
using VProtect.Core.IO;
using Xunit;
using static VProtect.Core.Tests.Vhd.VhdTestKit;

namespace VProtect.Core.Tests.Vhd;

public class BlockCopierTests
{
    [Theory]
    [InlineData(1, false, false)]
    [InlineData(4, false, false)]
    [InlineData(3, true, false)]
    [InlineData(2, false, true)]
    [InlineData(4, true, true)]
    public async Task Chain_copied_to_a_raw_target_equals_the_model(int concurrency, bool dirtyTarget, bool detectZeroes)
    {
        var rng = new Random(concurrency * 10 + (dirtyTarget ? 1 : 0) + (detectZeroes ? 2 : 0));
        long size = 18L << 20;
        var (images, model, _) = await VhdChainTests.BuildChainAsync(rng, size, 3);
        using var chain = await VhdChainTests.OpenChainAsync(images);
        var target = new byte[size];
        if (dirtyTarget) rng.NextBytes(target);
        var progress = new List<TransferProgress>();
        long copied = await BlockCopier.CopyAsync(chain, new ModelTarget(target),
            new BlockCopyOptions { Concurrency = concurrency, ZeroGaps = dirtyTarget, ChunkBytes = 256 * 1024, DetectZeroes = detectZeroes }, new Recorder(progress));
        AssertEqualBytes(model, target);
        long allocated = 0;
        await foreach (var e in chain.GetAllocatedExtentsAsync(0, size, default)) allocated += e.Length;
        if (detectZeroes) Assert.InRange(copied, 1, allocated - 1); // the chain holds zero-filled changes: some pieces skipped
        else Assert.Equal(allocated, copied);
        Assert.Equal(dirtyTarget ? size : allocated, progress.Max(p => p.BytesDone));
    }

    [Fact]
    public async Task A_failing_target_fails_the_copy_with_its_own_error()
    {
        var disk = new SparseMemoryDisk(32L << 20);
        var data = new byte[32 << 20]; new Random(1).NextBytes(data); await disk.WriteAsync(0, data, default);
        var ex = await Assert.ThrowsAsync<IOException>(() => BlockCopier.CopyAsync(disk, new FailingTarget(disk.Length), new BlockCopyOptions { Concurrency = 4 }));
        Assert.Equal("disk full", ex.Message);
    }

    [Fact]
    public async Task A_smaller_target_is_refused_before_copying()
    {
        await Assert.ThrowsAsync<ArgumentException>(() => BlockCopier.CopyAsync(new SparseMemoryDisk(4 << 20), new SparseMemoryDisk(2 << 20)));
    }

    private sealed class Recorder(List<TransferProgress> list) : IProgress<TransferProgress>
    {
        public void Report(TransferProgress value) { lock (list) list.Add(value); }
    }

    private sealed class FailingTarget(long length) : IBlockTarget
    {
        private int _writes;
        public long Length => length;
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) =>
            Interlocked.Increment(ref _writes) > 3 ? ValueTask.FromException(new IOException("disk full")) : ValueTask.CompletedTask;
        public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken) => ValueTask.CompletedTask;
        public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;
    }
}

public class VhdStreamTargetFailureTests
{
    [Fact]
    public async Task A_failing_target_fails_the_streamed_apply_with_its_own_error()
    {
        var disk = new SparseMemoryDisk(16L << 20);
        var data = new byte[16 << 20]; new Random(2).NextBytes(data); await disk.WriteAsync(0, data, default);
        using var ms = new MemoryStream();
        await VhdStreamWriter.WriteAsync(disk, await VhdBlockPlan.FromSourceAsync(disk), ms);
        var target = new CountingFailingTarget(disk.Length, failAfter: 5);
        var ex = await Assert.ThrowsAsync<IOException>(() => VhdStreamReader.ApplyAsync(new MemoryStream(ms.ToArray()), target, "x"));
        Assert.Equal("write failed", ex.Message);
    }

    [Fact]
    public async Task A_source_that_fails_mid_stream_surfaces_its_error()
    {
        var disk = new SparseMemoryDisk(8L << 20);
        await disk.WriteAsync(0, new byte[] { 1 }, default);
        await disk.WriteAsync(7L << 20, new byte[] { 1 }, default);
        using var ms = new MemoryStream();
        await VhdStreamWriter.WriteAsync(disk, await VhdBlockPlan.FromSourceAsync(disk), ms);
        var image = ms.ToArray();
        var stream = new FailingStream(image, failAt: image.Length / 2);
        await Assert.ThrowsAsync<IOException>(() => VhdStreamReader.ApplyAsync(stream, new SparseMemoryDisk(disk.Length), "x"));
    }

    private sealed class CountingFailingTarget(long length, int failAfter) : IBlockTarget
    {
        private int _writes;
        public long Length => length;
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) =>
            Interlocked.Increment(ref _writes) > failAfter ? ValueTask.FromException(new IOException("write failed")) : ValueTask.CompletedTask;
        public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken) => ValueTask.CompletedTask;
        public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;
    }

    /// <summary>A network stream that dies (connection reset) after <paramref name="failAt"/> bytes.</summary>
    private sealed class FailingStream(byte[] data, int failAt) : MemoryStream(data)
    {
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (Position >= failAt) return ValueTask.FromException<int>(new IOException("connection reset"));
            int n = (int)Math.Min(buffer.Length, failAt - Position);
            return base.ReadAsync(buffer[..n], cancellationToken);
        }
    }
}
