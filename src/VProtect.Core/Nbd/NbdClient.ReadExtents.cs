using System.Buffers;
using VProtect.Core.IO;

namespace VProtect.Core.Nbd;

/// <summary>Delivers the data of a list of extents in order, with a bounded window of bytes in flight.</summary>
public sealed partial class NbdClient
{
    /// <summary>
    /// Reads every extent and hands its bytes to <paramref name="consumer"/> in the order given (pieces of at most
    /// <see cref="RequestSize"/> bytes, ascending within an extent). Holes the server reports as zeros are delivered
    /// as zero-filled memory without being read, or skipped entirely with <paramref name="skipZeroes"/>.
    /// At most <see cref="NbdClientOptions.MaxBytesInFlight"/> bytes are buffered. The first server error or a
    /// connection lost more than MaxRetries times fails the call; nothing after the failed piece is delivered.
    /// The memory passed to the consumer is only valid until its ValueTask completes.
    /// </summary>
    public async Task ReadExtentsAsync(IEnumerable<Extent> extents,
        Func<long, ReadOnlyMemory<byte>, CancellationToken, ValueTask> consumer,
        IProgress<TransferProgress>? progress = null, bool skipZeroes = false, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(extents);
        ArgumentNullException.ThrowIfNull(consumer);
        var list = extents as IReadOnlyCollection<Extent> ?? extents.ToList();
        long total = 0;
        foreach (var e in list)
        {
            CheckRange(e.Offset, e.Length);
            total += e.Length;
        }
        var ct = cancellationToken;
        long window = Math.Max(RequestSize, _options.MaxBytesInFlight);
        var queue = new Queue<Piece>();
        long inFlight = 0, done = 0;
        var zeroes = new byte[Math.Min(RequestSize, 1 << 20)];
        await using var plan = PlanAsync(list, skipZeroes, ct).GetAsyncEnumerator(ct);
        try
        {
            bool more = await plan.MoveNextAsync();
            while (more || queue.Count > 0)
            {
                ct.ThrowIfCancellationRequested();
                while (more && (queue.Count == 0 || inFlight + plan.Current.ReadLength <= window))
                {
                    var p = plan.Current;
                    if (p.Zero) p.Task = Task.CompletedTask;
                    else
                    {
                        p.Buffer = ArrayPool<byte>.Shared.Rent(p.ReadLength);
                        p.Task = ReadWithRetryAsync(p.ReadOffset, p.Buffer.AsMemory(0, p.ReadLength), ct);
                        inFlight += p.ReadLength;
                    }
                    queue.Enqueue(p);
                    more = await plan.MoveNextAsync();
                }
                var head = queue.Dequeue();
                try
                {
                    await head.Task!;
                    if (head.Zero)
                    {
                        for (long z = 0; z < head.DeliverLength; z += zeroes.Length)
                        {
                            int n = (int)Math.Min(zeroes.Length, head.DeliverLength - z);
                            await consumer(head.DeliverOffset + z, zeroes.AsMemory(0, n), ct);
                        }
                    }
                    else if (head.DeliverLength > 0)
                        await consumer(head.DeliverOffset, head.Buffer!.AsMemory((int)(head.DeliverOffset - head.ReadOffset), (int)head.DeliverLength), ct);
                }
                finally
                {
                    if (head.Buffer is not null)
                    {
                        inFlight -= head.ReadLength;
                        ArrayPool<byte>.Shared.Return(head.Buffer);
                        head.Buffer = null;
                    }
                }
                done += head.CountedLength;
                progress?.Report(new TransferProgress(done, total));
            }
        }
        finally
        {
            // On failure or cancellation: wait for reads already sent (bounded by the request timeout; a cancelled
            // one closes its connection) before their buffers go back to the pool.
            while (queue.Count > 0)
            {
                var p = queue.Dequeue();
                try { await p.Task!; } catch { /* the first failure is the one reported */ }
                if (p.Buffer is not null) ArrayPool<byte>.Shared.Return(p.Buffer);
            }
        }
    }

    /// <summary>Splits the extents into aligned read pieces and zero pieces, consulting base:allocation when available.</summary>
    private async IAsyncEnumerable<Piece> PlanAsync(IReadOnlyCollection<Extent> extents, bool skipZeroes,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        foreach (var extent in extents)
        {
            if (extent.Length == 0) continue;
            if (Export.AllocationContextId is null || !_options.UseBlockStatus)
            {
                foreach (var p in ReadPieces(extent.Offset, extent.End)) yield return p;
                continue;
            }
            long alignedStart = extent.Offset / Alignment * Alignment;
            long alignedEnd = Math.Min(RoundUp(extent.End), Size);
            await foreach (var a in GetAllocationAsync(alignedStart, alignedEnd - alignedStart, ct))
            {
                long s = Math.Max(a.Offset, extent.Offset), e = Math.Min(a.Offset + a.Length, extent.End);
                if (e <= s) continue;
                if (a.ReadsAsZeroes)
                {
                    yield return new Piece { Zero = true, DeliverOffset = s, DeliverLength = skipZeroes ? 0 : e - s, CountedLength = e - s };
                }
                else foreach (var p in ReadPieces(s, e)) yield return p;
            }
        }
    }

    /// <summary>Aligned READ pieces covering [start, end); each delivers only its part inside [start, end).</summary>
    private IEnumerable<Piece> ReadPieces(long start, long end)
    {
        long pos = start / Alignment * Alignment;
        long alignedEnd = Math.Min(RoundUp(end), Size);
        while (pos < alignedEnd)
        {
            int len = (int)Math.Min(RequestSize, alignedEnd - pos);
            long ds = Math.Max(pos, start), de = Math.Min(pos + len, end);
            yield return new Piece { ReadOffset = pos, ReadLength = len, DeliverOffset = ds, DeliverLength = de - ds, CountedLength = de - ds };
            pos += len;
        }
    }

    private sealed class Piece
    {
        public bool Zero;
        public long ReadOffset;
        public int ReadLength;
        public long DeliverOffset;
        public long DeliverLength;
        public long CountedLength;
        public byte[]? Buffer;
        public Task? Task;
    }
}
