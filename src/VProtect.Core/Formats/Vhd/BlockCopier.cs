using System.Buffers;
using VProtect.Core.IO;

namespace VProtect.Core.Formats.Vhd;

/// <summary>Copies the allocated extents of a source (a VHD, a chain) onto a target (a raw disk, a VDI).</summary>
public static class BlockCopier
{
    private const int ChunkBytes = 2 * 1024 * 1024;

    /// <summary>
    /// Copies every allocated extent; with <paramref name="zeroGaps"/> also zeroes the rest of the target so it
    /// equals the source even when it held older data. Reads chunk i+1 while chunk i is written.
    /// </summary>
    public static async Task<long> CopyAsync(IBlockSource source, IBlockTarget target, bool zeroGaps = false,
        IProgress<TransferProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(target);
        if (target.Length < source.Length)
            throw new ArgumentException($"The target has {target.Length} bytes, less than the source's {source.Length}; resize it first.", nameof(target));
        var buffers = new[] { ArrayPool<byte>.Shared.Rent(ChunkBytes), ArrayPool<byte>.Shared.Rent(ChunkBytes) };
        long copied = 0, position = 0;
        Task? pendingWrite = null;
        try
        {
            int which = 0;
            await foreach (var e in source.GetAllocatedExtentsAsync(0, source.Length, cancellationToken).ConfigureAwait(false))
            {
                if (zeroGaps && e.Offset > position)
                {
                    if (pendingWrite is not null) { await pendingWrite.ConfigureAwait(false); pendingWrite = null; }
                    await target.WriteZeroesAsync(position, e.Offset - position, cancellationToken).ConfigureAwait(false);
                }
                for (long pos = e.Offset; pos < e.End;)
                {
                    int n = (int)Math.Min(ChunkBytes, e.End - pos);
                    var buffer = buffers[which].AsMemory(0, n);
                    await source.ReadAsync(pos, buffer, cancellationToken).ConfigureAwait(false);
                    if (pendingWrite is not null) await pendingWrite.ConfigureAwait(false);
                    pendingWrite = target.WriteAsync(pos, buffer, cancellationToken).AsTask();
                    which ^= 1;
                    pos += n; copied += n;
                    progress?.Report(new TransferProgress(pos, source.Length));
                }
                position = e.End;
            }
            if (pendingWrite is not null) { var last = pendingWrite; pendingWrite = null; await last.ConfigureAwait(false); }
            if (zeroGaps && position < source.Length)
                await target.WriteZeroesAsync(position, source.Length - position, cancellationToken).ConfigureAwait(false);
            await target.FlushAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            // Never hand a buffer back to the pool while a write may still read it.
            if (pendingWrite is not null) { try { await pendingWrite.ConfigureAwait(false); } catch { /* the first failure is reported */ } }
            ArrayPool<byte>.Shared.Return(buffers[0]);
            ArrayPool<byte>.Shared.Return(buffers[1]);
        }
        return copied;
    }
}
