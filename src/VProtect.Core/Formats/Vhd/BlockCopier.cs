using System.Buffers;
using System.Threading.Channels;
using VProtect.Core.IO;

namespace VProtect.Core.Formats.Vhd;

/// <summary>How <see cref="BlockCopier"/> copies.</summary>
public sealed record BlockCopyOptions
{
    /// <summary>Also zero everything the source does not hold, so a target with older data ends equal to the source.</summary>
    public bool ZeroGaps { get; init; }
    /// <summary>
    /// Chunks in flight at once (each: read, then write). 1 keeps writes in ascending order; more needs a
    /// target that accepts concurrent writes (files, NBD). Memory: Concurrency x ChunkBytes.
    /// </summary>
    public int Concurrency { get; init; } = 1;
    public int ChunkBytes { get; init; } = 2 * 1024 * 1024;
    /// <summary>
    /// Treat all-zero 64 KiB pieces of allocated data like gaps (skipped, or zeroed with <see cref="ZeroGaps"/>),
    /// as qemu-img convert does: thin targets stay thin. Costs a scan of the data (vectorised).
    /// </summary>
    public bool DetectZeroes { get; init; }
}

/// <summary>Copies the allocated extents of a source (a VHD, a chain) onto a target (a raw disk, a VDI).</summary>
public static class BlockCopier
{
    private readonly record struct Chunk(long Offset, int Length, bool Zero);

    private static bool IsZero(ReadOnlySpan<byte> data, int offset, int length) =>
        data.Slice(offset, Math.Min(length, data.Length - offset)).IndexOfAnyExcept((byte)0) < 0;

    /// <summary>Copies every allocated extent; returns the number of data bytes written (zero pieces skipped excluded).</summary>
    public static async Task<long> CopyAsync(IBlockSource source, IBlockTarget target, BlockCopyOptions? options = null,
        IProgress<TransferProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(target);
        options ??= new BlockCopyOptions();
        if (options.Concurrency < 1 || options.Concurrency > 64) throw new ArgumentOutOfRangeException(nameof(options), "Concurrency must be 1..64.");
        if (options.ChunkBytes < 4096 || options.ChunkBytes > 64 << 20) throw new ArgumentOutOfRangeException(nameof(options), "ChunkBytes must be 4 KiB..64 MiB.");
        if (target.Length < source.Length)
            throw new ArgumentException($"The target has {target.Length} bytes, less than the source's {source.Length}; resize it first.", nameof(target));

        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        var token = linked.Token;
        // Bounded queue: the extent walk stays at most a few chunks ahead of the copy.
        var queue = Channel.CreateBounded<Chunk>(new BoundedChannelOptions(options.Concurrency * 2) { SingleWriter = true });
        long copied = 0, done = 0;

        async Task ProduceAsync()
        {
            try
            {
                long position = 0;
                await foreach (var e in source.GetAllocatedExtentsAsync(0, source.Length, token).ConfigureAwait(false))
                {
                    if (options.ZeroGaps && e.Offset > position)
                        await EnqueueAsync(position, e.Offset - position, zero: true).ConfigureAwait(false);
                    await EnqueueAsync(e.Offset, e.Length, zero: false).ConfigureAwait(false);
                    position = e.End;
                }
                if (options.ZeroGaps && position < source.Length)
                    await EnqueueAsync(position, source.Length - position, zero: true).ConfigureAwait(false);
                queue.Writer.Complete();
            }
            catch (Exception ex) { queue.Writer.Complete(ex); throw; }
        }

        async Task EnqueueAsync(long offset, long length, bool zero)
        {
            // Zero ranges go as few requests as possible: targets may deallocate them instead of writing.
            int piece = zero ? 1 << 30 : options.ChunkBytes;
            for (long pos = offset; pos < offset + length;)
            {
                int n = (int)Math.Min(piece, offset + length - pos);
                await queue.Writer.WriteAsync(new Chunk(pos, n, zero), token).ConfigureAwait(false);
                pos += n;
            }
        }

        async Task ConsumeAsync()
        {
            var buffer = ArrayPool<byte>.Shared.Rent(options.ChunkBytes);
            try
            {
                await foreach (var c in queue.Reader.ReadAllAsync(token).ConfigureAwait(false))
                {
                    if (c.Zero) await target.WriteZeroesAsync(c.Offset, c.Length, token).ConfigureAwait(false);
                    else
                    {
                        var memory = buffer.AsMemory(0, c.Length);
                        await source.ReadAsync(c.Offset, memory, token).ConfigureAwait(false);
                        if (!options.DetectZeroes)
                        {
                            await target.WriteAsync(c.Offset, memory, token).ConfigureAwait(false);
                            Interlocked.Add(ref copied, c.Length);
                        }
                        else await WriteNonZeroAsync(c, memory).ConfigureAwait(false);
                    }
                    long now = Interlocked.Add(ref done, c.Length);
                    progress?.Report(new TransferProgress(now, source.Length));
                }
            }
            catch { linked.Cancel(); throw; }
            finally { ArrayPool<byte>.Shared.Return(buffer); }
        }

        async Task WriteNonZeroAsync(Chunk c, Memory<byte> memory)
        {
            const int piece = 64 * 1024;
            for (int pos = 0; pos < c.Length;)
            {
                // A run of pieces that are all zero, or all not-zero.
                bool zero = IsZero(memory.Span, pos, piece);
                int end = pos;
                while (end < c.Length && IsZero(memory.Span, end, piece) == zero) end += Math.Min(piece, c.Length - end);
                if (!zero)
                {
                    await target.WriteAsync(c.Offset + pos, memory[pos..end], token).ConfigureAwait(false);
                    Interlocked.Add(ref copied, end - pos);
                }
                else if (options.ZeroGaps) await target.WriteZeroesAsync(c.Offset + pos, end - pos, token).ConfigureAwait(false);
                pos = end;
            }
        }

        var tasks = new List<Task> { Task.Run(ProduceAsync, token) };
        for (int i = 0; i < options.Concurrency; i++) tasks.Add(Task.Run(ConsumeAsync, token));
        try { await Task.WhenAll(tasks).ConfigureAwait(false); }
        catch
        {
            // Report the first real failure rather than the cancellations it caused.
            var first = tasks.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException!).FirstOrDefault(e => e is not OperationCanceledException);
            if (first is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(first);
            throw;
        }
        await target.FlushAsync(cancellationToken).ConfigureAwait(false);
        return copied;
    }
}
