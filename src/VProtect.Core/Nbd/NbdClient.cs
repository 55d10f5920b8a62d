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
    private readonly CancellationTokenSource _closing = new();
    private Task _extraConnections = Task.CompletedTask;

    private NbdClient(NbdClientOptions options, NbdConnection first, int slots)
    {
        _options = options;
        Export = first.Export;
        _connections = new NbdConnection?[slots];
        _connections[0] = first;
        _reconnectLocks = Enumerable.Range(0, slots).Select(_ => new SemaphoreSlim(1, 1)).ToArray();
        // Without NBD_INFO_BLOCK_SIZE the spec asks for 512-byte alignment (and xapi-nbd answers EINVAL otherwise).
        Alignment = Export.HasBlockSizeInfo ? Export.MinimumBlockSize : 512;
        int max = Math.Min(Export.MaximumPayload, options.RequestSize);
        RequestSize = Math.Max(Alignment, max / Alignment * Alignment);
    }

    /// <summary>
    /// Opens the first connection and returns: reads can start at once. The others the server allows open in the
    /// background, one after the other (as XO does, to spare xapi: each xapi-nbd connect plugs the VDI into dom0, which
    /// xenopsd does one at a time for dom0 anyway), and join the pool as each is ready, so a small read does not wait
    /// for connections it hardly needs. A server that accepts fewer than asked (qemu-nbd --shared=1, a busy xapi-nbd)
    /// leaves a smaller pool. <see cref="WhenConnectedAsync"/> waits for the background connects.
    /// </summary>
    public static Task<NbdClient> ConnectAsync(NbdClientOptions options, CancellationToken cancellationToken)
        => ConnectCoreAsync(options, null, cancellationToken);

    private static async Task<NbdClient> ConnectCoreAsync(NbdClientOptions options, Task<int>? connectionsWanted, CancellationToken cancellationToken)
    {
        options.Validate();
        var first = await NbdConnection.ConnectAsync(options, cancellationToken);
        var info = first.Export;
        int count = info.CanMultiConn || info.ReadOnly ? options.Connections : 1;
        var client = new NbdClient(options, first, count);
        if (count > 1) client._extraConnections = client.ConnectOthersAsync(connectionsWanted);
        return client;
    }

    /// <summary>Completes when the background connects ended (each joined the pool or the server refused more). Never fails.</summary>
    public Task WhenConnectedAsync() => _extraConnections;

    /// <summary>
    /// As <see cref="ConnectAsync(NbdClientOptions, CancellationToken)"/>, for a caller that connects before it knows how
    /// much it will read: the background connects wait for <paramref name="connectionsWanted"/> and open no more than
    /// it says in all (at most <see cref="NbdClientOptions.Connections"/>; none when it fails or is cancelled).
    /// </summary>
    public static Task<NbdClient> ConnectAsync(NbdClientOptions options, Task<int> connectionsWanted, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(connectionsWanted);
        return ConnectCoreAsync(options, connectionsWanted, cancellationToken);
    }

    private async Task ConnectOthersAsync(Task<int>? connectionsWanted)
    {
        await Task.Yield();
        var ct = _closing.Token;
        int limit = _connections.Length;
        if (connectionsWanted is not null)
        {
            try { limit = Math.Min(limit, await connectionsWanted.WaitAsync(ct)); }
            catch (Exception) { return; } // not wanted after all, or closing
        }
        var extra = _options with { ConnectTimeout = TimeSpan.FromTicks(Math.Min(_options.ConnectTimeout.Ticks, TimeSpan.FromSeconds(5).Ticks)) };
        for (int i = 1; i < limit; i++)
        {
            NbdConnection c;
            // Any failure (refused, cap reached, closing): the pool keeps the connections it has.
            try { c = await NbdConnection.ConnectAsync(extra, ct); }
            catch (Exception) { return; }
            if (c.Export.Size != Export.Size || c.Export.Flags != Export.Flags) { await c.DisposeAsync(); return; }
            await _reconnectLocks[i].WaitAsync(CancellationToken.None);
            try
            {
                // A reconnect may have filled the slot meanwhile (every other connection broke); closing takes nothing new.
                if (_disposed != 0 || Volatile.Read(ref _connections[i]) is not null) { await c.DisposeAsync(); if (_disposed != 0) return; continue; }
                Volatile.Write(ref _connections[i], c);
            }
            finally { _reconnectLocks[i].Release(); }
        }
    }

    public NbdExportInfo Export { get; }
    public long Size => Export.Size;
    /// <summary>Connections in the pool now (the background connects add to it; see <see cref="WhenConnectedAsync"/>).</summary>
    public int ConnectionCount => _connections.Count(c => c is not null);
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
        _closing.Cancel();
        await _extraConnections; // never fails; after it no connection joins
        foreach (var c in _connections) if (c is not null) await c.DisposeAsync();
        _closing.Dispose();
    }
}
