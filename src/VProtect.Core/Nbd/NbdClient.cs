using VProtect.Core.IO;

namespace VProtect.Core.Nbd;

/// <summary>
/// A pool of connections to one export. Reads are pipelined on every connection and spread over several
/// when the server allows it (CAN_MULTI_CONN or a read-only export, as xapi-nbd); a dropped connection is
/// re-established and its unfinished requests retried up to <see cref="NbdClientOptions.MaxRetries"/> times.
/// </summary>
public sealed partial class NbdClient : IAsyncDisposable
{
    private readonly NbdClientOptions _options;
    private readonly NbdConnection?[] _connections;
    private readonly SemaphoreSlim[] _reconnectLocks;
    private int _nextConnection;
    private int _disposed;

    private NbdClient(NbdClientOptions options, List<NbdConnection> connections)
    {
        _options = options;
        Export = connections[0].Export;
        _connections = [.. connections];
        _reconnectLocks = connections.Select(_ => new SemaphoreSlim(1, 1)).ToArray();
        // Without NBD_INFO_BLOCK_SIZE the spec asks for 512-byte alignment (and xapi-nbd answers EINVAL otherwise).
        Alignment = Export.HasBlockSizeInfo ? Export.MinimumBlockSize : 512;
        int max = Math.Min(Export.MaximumPayload, options.RequestSize);
        RequestSize = Math.Max(Alignment, max / Alignment * Alignment);
    }

    /// <summary>
    /// Opens the first connection, then (sequentially, as XO does to spare xapi) the others the server allows.
    /// A server that accepts fewer connections than asked (qemu-nbd --shared=1, a busy xapi-nbd) leaves a smaller pool.
    /// </summary>
    public static async Task<NbdClient> ConnectAsync(NbdClientOptions options, CancellationToken cancellationToken)
    {
        options.Validate();
        var first = await NbdConnection.ConnectAsync(options, cancellationToken);
        var info = first.Export;
        int count = info.CanMultiConn || info.ReadOnly ? options.Connections : 1;
        var connections = new List<NbdConnection> { first };
        var extra = options with { ConnectTimeout = TimeSpan.FromTicks(Math.Min(options.ConnectTimeout.Ticks, TimeSpan.FromSeconds(5).Ticks)) };
        for (int i = 1; i < count; i++)
        {
            try
            {
                var c = await NbdConnection.ConnectAsync(extra, cancellationToken);
                if (c.Export.Size != info.Size || c.Export.Flags != info.Flags) { await c.DisposeAsync(); break; }
                connections.Add(c);
            }
            catch (NbdException) when (!cancellationToken.IsCancellationRequested) { break; }
            catch
            {
                foreach (var c in connections) await c.DisposeAsync();
                throw;
            }
        }
        return new NbdClient(options, connections);
    }

    public NbdExportInfo Export { get; }
    public long Size => Export.Size;
    public int ConnectionCount => _connections.Length;
    /// <summary>Request offsets and lengths are multiples of this.</summary>
    public int Alignment { get; }
    /// <summary>Bytes per READ request actually used.</summary>
    public int RequestSize { get; }

    /// <summary>Reads <paramref name="buffer"/> at <paramref name="offset"/> (aligned, at most <see cref="RequestSize"/> is not required: it is split), retrying on dropped connections.</summary>
    public async Task ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        CheckRange(offset, buffer.Length);
        if (buffer.Length == 0) return;
        long alignedStart = offset / Alignment * Alignment;
        long alignedEnd = Math.Min(RoundUp(offset + buffer.Length), Size);
        if (alignedStart == offset && alignedEnd == offset + buffer.Length)
        {
            var tasks = new List<Task>();
            for (int done = 0; done < buffer.Length; done += RequestSize)
                tasks.Add(ReadWithRetryAsync(offset + done, buffer.Slice(done, Math.Min(RequestSize, buffer.Length - done)), cancellationToken));
            await Task.WhenAll(tasks);
            return;
        }
        // Unaligned: read the aligned cover into a pooled buffer and copy the middle out.
        int coverLength = checked((int)(alignedEnd - alignedStart));
        var cover = System.Buffers.ArrayPool<byte>.Shared.Rent(coverLength);
        try
        {
            await ReadAsync(alignedStart, cover.AsMemory(0, coverLength), cancellationToken);
            cover.AsMemory((int)(offset - alignedStart), buffer.Length).CopyTo(buffer);
        }
        finally { System.Buffers.ArrayPool<byte>.Shared.Return(cover); }
    }

    /// <summary>
    /// The allocation map of [offset, offset+length) from <c>base:allocation</c>; without it, one data extent for the whole range.
    /// </summary>
    public async IAsyncEnumerable<NbdAllocationExtent> GetAllocationAsync(long offset, long length,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        CheckRange(offset, length);
        long end = offset + length;
        if (Export.AllocationContextId is null)
        {
            if (length > 0) yield return new NbdAllocationExtent(offset, length, NbdAllocationFlags.Data);
            yield break;
        }
        const long maxQuery = 1L << 30; // one query per GiB keeps replies small and lets reads start early
        long pos = offset;
        while (pos < end)
        {
            uint ask = (uint)Math.Min(end - pos, maxQuery);
            IReadOnlyList<NbdAllocationExtent> extents = await BlockStatusWithRetryAsync(pos, ask, cancellationToken);
            if (extents.Count == 0 || extents[0].Offset != pos) throw new NbdProtocolException($"BLOCK_STATUS at {pos} answered no extent starting there");
            foreach (var e in extents)
            {
                if (e.Offset >= end) break;
                long len = Math.Min(e.Length, end - e.Offset);
                yield return e with { Length = len };
                pos = e.Offset + len;
            }
        }
    }

    private async Task<IReadOnlyList<NbdAllocationExtent>> BlockStatusWithRetryAsync(long offset, uint length, CancellationToken ct)
    {
        for (int attempt = 0; ; attempt++)
        {
            var (connection, index) = await GetConnectionAsync(ct);
            try { return await connection.BlockStatusAsync(offset, length, ct); }
            catch (NbdConnectionLostException) when (attempt < _options.MaxRetries && _disposed == 0) { await ReplaceAsync(index, connection, attempt, ct); }
        }
    }

    internal async Task ReadWithRetryAsync(long offset, Memory<byte> buffer, CancellationToken ct)
    {
        for (int attempt = 0; ; attempt++)
        {
            var (connection, index) = await GetConnectionAsync(ct);
            try
            {
                await connection.ReadAsync(offset, buffer, ct);
                return;
            }
            catch (NbdConnectionLostException) when (attempt < _options.MaxRetries && _disposed == 0)
            {
                await ReplaceAsync(index, connection, attempt, ct);
            }
            catch (NbdException ex) when (ex.Errno == NbdErrno.ESHUTDOWN && attempt < _options.MaxRetries && _disposed == 0)
            {
                await ReplaceAsync(index, connection, attempt, ct); // the server is shutting this connection down: go elsewhere
            }
        }
    }

    /// <summary>The connection with the fewest requests in flight; a broken one is replaced first.</summary>
    private async ValueTask<(NbdConnection, int)> GetConnectionAsync(CancellationToken ct)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        int start = (int)((uint)Interlocked.Increment(ref _nextConnection) % (uint)_connections.Length);
        int best = -1, bestLoad = int.MaxValue;
        for (int k = 0; k < _connections.Length; k++)
        {
            int i = (start + k) % _connections.Length;
            var c = Volatile.Read(ref _connections[i]);
            if (c is null || c.IsBroken) continue;
            int load = c.RequestsInFlight;
            if (load < bestLoad) { best = i; bestLoad = load; }
        }
        if (best >= 0) return (_connections[best]!, best);
        await ReplaceAsync(start, Volatile.Read(ref _connections[start]), 0, ct);
        return (_connections[start]!, start);
    }

    private async Task ReplaceAsync(int index, NbdConnection? broken, int attempt, CancellationToken ct)
    {
        await _reconnectLocks[index].WaitAsync(ct);
        try
        {
            var current = Volatile.Read(ref _connections[index]);
            if (current is not null && current != broken && !current.IsBroken) return; // someone else already reconnected
            if (attempt > 0) await Task.Delay(TimeSpan.FromMilliseconds(Math.Min(2000, 100 << Math.Min(attempt, 4))), ct); // back off
            var fresh = await NbdConnection.ConnectAsync(_options, ct);
            if (fresh.Export.Size != Export.Size)
            {
                await fresh.DisposeAsync();
                throw new NbdNegotiationException($"After reconnecting, the export is {fresh.Export.Size} bytes instead of {Export.Size}; it changed under us. Start the transfer again.");
            }
            Volatile.Write(ref _connections[index], fresh);
            if (current is not null) _ = current.DisposeAsync().AsTask();
        }
        finally { _reconnectLocks[index].Release(); }
    }

    /// <summary>Writes (pipelined over the pool); the export must be writable.</summary>
    public async Task WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        CheckRange(offset, data.Length);
        var tasks = new List<Task>();
        for (int done = 0; done < data.Length; done += RequestSize)
        {
            var (c, _) = await GetConnectionAsync(cancellationToken);
            tasks.Add(c.WriteAsync(offset + done, data.Slice(done, Math.Min(RequestSize, data.Length - done)), cancellationToken));
        }
        await Task.WhenAll(tasks);
    }

    /// <summary>Flushes every connection (with multi-conn a flush covers only writes completed on any connection, so all are flushed).</summary>
    public Task FlushAsync(CancellationToken cancellationToken)
        => Task.WhenAll(_connections.Where(c => c is { IsBroken: false }).Select(c => c!.FlushAsync(cancellationToken)));

    public Task TrimAsync(long offset, long length, CancellationToken cancellationToken)
        => ForEachPieceAsync(offset, length, (c, o, l) => c.TrimAsync(o, l, cancellationToken), cancellationToken);

    public Task WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken)
        => ForEachPieceAsync(offset, length, (c, o, l) => c.WriteZeroesAsync(o, l, cancellationToken), cancellationToken);

    private async Task ForEachPieceAsync(long offset, long length, Func<NbdConnection, long, int, Task> op, CancellationToken ct)
    {
        CheckRange(offset, length);
        const int piece = 1 << 30;
        var tasks = new List<Task>();
        for (long done = 0; done < length; done += piece)
        {
            var (c, _) = await GetConnectionAsync(ct);
            tasks.Add(op(c, offset + done, (int)Math.Min(piece, length - done)));
        }
        await Task.WhenAll(tasks);
    }

    /// <summary>An <see cref="IBlockSource"/> over this pool (reads retried, holes from base:allocation).</summary>
    public IBlockSource AsBlockSource() => new NbdBlockSource(this);

    private long RoundUp(long v) => (v + Alignment - 1) / Alignment * Alignment;

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Size - length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Range {offset}+{length} is outside the export of {Size} bytes.");
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        foreach (var c in _connections) if (c is not null) await c.DisposeAsync();
    }
}
