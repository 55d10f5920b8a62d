using System.Buffers;
using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace VProtect.Core.Nbd;

/// <summary>
/// One negotiated NBD connection with pipelined requests: any number of senders, one reader loop that matches
/// replies to requests by cookie and reads data straight into the caller's buffer.
/// </summary>
public sealed class NbdConnection : IAsyncDisposable
{
    private readonly Socket? _socket;
    private readonly Stream _stream;
    private readonly SemaphoreSlim _sendLock = new(1, 1);
    private readonly SemaphoreSlim _slots;
    private readonly Dictionary<ulong, Pending> _pending = new();
    private readonly object _gate = new();
    private readonly TimeSpan _requestTimeout;
    private readonly Timer _watchdog;
    private readonly CancellationTokenSource _closing = new();
    private readonly Task _readerLoop;
    private ulong _nextCookie = 1;
    private long _lastProgress = Environment.TickCount64;
    private Exception? _failure;
    private int _disposed;

    private NbdConnection(Socket? socket, Stream stream, NbdExportInfo info, NbdClientOptions options)
    {
        _socket = socket;
        _stream = stream;
        Export = info;
        _requestTimeout = options.RequestTimeout;
        _slots = new SemaphoreSlim(options.MaxRequestsInFlight, options.MaxRequestsInFlight);
        var period = TimeSpan.FromMilliseconds(Math.Clamp(_requestTimeout.TotalMilliseconds / 4, 50, 5000));
        _watchdog = new Timer(_ => CheckTimeout(), null, period, period);
        _readerLoop = Task.Run(ReaderLoopAsync);
    }

    public NbdExportInfo Export { get; }
    /// <summary>True once the connection failed (dropped, timed out or broke the protocol); it cannot be used again.</summary>
    public bool IsBroken => Volatile.Read(ref _failure) is not null;
    public int RequestsInFlight { get { lock (_gate) return _pending.Count; } }

    /// <summary>Connects, negotiates and enters transmission. Every step is bounded by <see cref="NbdClientOptions.ConnectTimeout"/>.</summary>
    public static async Task<NbdConnection> ConnectAsync(NbdClientOptions options, CancellationToken cancellationToken)
    {
        options.Validate();
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(options.ConnectTimeout);
        var socket = options.EndPoint is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(SocketType.Stream, ProtocolType.Tcp);
        Stream? stream = null;
        try
        {
            if (socket.AddressFamily != AddressFamily.Unix) socket.NoDelay = true;
            await socket.ConnectAsync(options.EndPoint, timeout.Token);
            stream = new NetworkStream(socket, ownsSocket: true);
            var (negotiated, info) = await NbdClientHandshake.RunAsync(stream, options, timeout.Token);
            return new NbdConnection(socket, negotiated, info, options);
        }
        catch (OperationCanceledException ex) when (!cancellationToken.IsCancellationRequested)
        {
            if (stream is not null) await stream.DisposeAsync(); else socket.Dispose();
            throw new NbdConnectionLostException($"Connecting to the NBD server at {options.EndPoint} took longer than {options.ConnectTimeout.TotalSeconds:0.#} s. Check the address, port and firewall (xapi-nbd listens on 10809 of NBD-purpose networks only).", ex);
        }
        catch (SocketException ex)
        {
            if (stream is not null) await stream.DisposeAsync(); else socket.Dispose();
            throw new NbdConnectionLostException($"Cannot connect to the NBD server at {options.EndPoint}: {ex.Message}. Check that the server runs and the address and port are right.", ex);
        }
        catch
        {
            if (stream is not null) await stream.DisposeAsync(); else socket.Dispose();
            throw;
        }
    }

    /// <summary>Reads exactly <paramref name="buffer"/>.Length bytes at <paramref name="offset"/>. A server error fails with <see cref="NbdException"/> and its errno.</summary>
    public Task ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        CheckRange(offset, buffer.Length);
        return SendAsync(NbdCommand.Read, NbdCommandFlags.None, offset, (uint)buffer.Length, buffer, default, cancellationToken);
    }

    public Task WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken, bool forceUnitAccess = false)
    {
        RequireWritable("WRITE");
        CheckRange(offset, data.Length);
        return SendAsync(NbdCommand.Write, forceUnitAccess ? NbdCommandFlags.Fua : 0, offset, (uint)data.Length, default, data, cancellationToken);
    }

    public Task FlushAsync(CancellationToken cancellationToken)
    {
        RequireFlag(NbdTransmissionFlags.SendFlush, "FLUSH");
        return SendAsync(NbdCommand.Flush, 0, 0, 0, default, default, cancellationToken);
    }

    public Task TrimAsync(long offset, int length, CancellationToken cancellationToken)
    {
        RequireWritable("TRIM"); RequireFlag(NbdTransmissionFlags.SendTrim, "TRIM");
        CheckRange(offset, length);
        return SendAsync(NbdCommand.Trim, 0, offset, (uint)length, default, default, cancellationToken);
    }

    public Task WriteZeroesAsync(long offset, int length, CancellationToken cancellationToken)
    {
        RequireWritable("WRITE_ZEROES"); RequireFlag(NbdTransmissionFlags.SendWriteZeroes, "WRITE_ZEROES");
        CheckRange(offset, length);
        return SendAsync(NbdCommand.WriteZeroes, 0, offset, (uint)length, default, default, cancellationToken);
    }

    /// <summary><c>base:allocation</c> extents from <paramref name="offset"/>; may cover less or (last extent) more than asked.</summary>
    public async Task<IReadOnlyList<NbdAllocationExtent>> BlockStatusAsync(long offset, uint length, CancellationToken cancellationToken)
    {
        if (Export.AllocationContextId is null) throw new InvalidOperationException("The server did not agree to base:allocation; read everything instead.");
        CheckRange(offset, length);
        var p = new Pending(NbdCommand.BlockStatus, offset, length, default);
        await SendCoreAsync(p, NbdCommandFlags.None, default, cancellationToken);
        await WaitAsync(p, cancellationToken);
        return p.Extents!;
    }

    private async Task SendAsync(NbdCommand command, NbdCommandFlags flags, long offset, uint length, Memory<byte> readInto, ReadOnlyMemory<byte> payload, CancellationToken ct)
    {
        var p = new Pending(command, offset, length, readInto);
        await SendCoreAsync(p, flags, payload, ct);
        await WaitAsync(p, ct);
    }

    /// <summary>
    /// Waits for the reply. A request cannot be taken back once sent, and the reader may still write into the
    /// caller's buffer, so giving up early (cancellation) closes the connection and waits for the reader to stop.
    /// </summary>
    private async Task WaitAsync(Pending p, CancellationToken ct)
    {
        if (!ct.CanBeCanceled) { await p.Completion.Task; return; }
        try { await p.Completion.Task.WaitAsync(ct); }
        catch (OperationCanceledException) when (!p.Completion.Task.IsCompleted)
        {
            Fail(new NbdConnectionLostException("The NBD connection was closed because a request in flight was cancelled."));
            try { await _readerLoop.WaitAsync(TimeSpan.FromSeconds(10)); } catch (Exception) { }
            throw;
        }
    }

    private async Task SendCoreAsync(Pending p, NbdCommandFlags flags, ReadOnlyMemory<byte> payload, CancellationToken ct)
    {
        ThrowIfBroken();
        await _slots.WaitAsync(ct);
        bool registered = false;
        try
        {
            ThrowIfBroken();
            ulong cookie;
            lock (_gate)
            {
                cookie = _nextCookie++;
                if (_pending.Count == 0) Volatile.Write(ref _lastProgress, Environment.TickCount64);
                _pending.Add(cookie, p);
            }
            registered = true;
            p.Slots = _slots;
            var header = ArrayPool<byte>.Shared.Rent(28);
            try
            {
                NbdWire.WriteRequest(header, flags, p.Command, cookie, p.Offset, p.Length);
                await _sendLock.WaitAsync(ct);
                try
                {
                    // Cancelling mid-write would desynchronise the stream, so a started send finishes; the reply is then awaited or failed.
                    await _stream.WriteAsync(header.AsMemory(0, 28), CancellationToken.None);
                    if (!payload.IsEmpty) await _stream.WriteAsync(payload, CancellationToken.None);
                    await _stream.FlushAsync(CancellationToken.None);
                }
                finally { _sendLock.Release(); }
            }
            finally { ArrayPool<byte>.Shared.Return(header); }
        }
        catch (Exception ex) when (ex is IOException or ObjectDisposedException or SocketException)
        {
            var lost = new NbdConnectionLostException($"The NBD connection dropped while sending a {p.Command} request: {ex.Message}", ex);
            Fail(lost);
            if (!registered) _slots.Release();
            throw Volatile.Read(ref _failure)!;
        }
        catch
        {
            if (!registered) _slots.Release();
            throw;
        }
    }

    private async Task ReaderLoopAsync()
    {
        var header = new byte[32];
        try
        {
            while (true)
            {
                await NbdWire.ReadExactAsync(_stream, header.AsMemory(0, 4), _closing.Token);
                Touch();
                uint magic = BinaryPrimitives.ReadUInt32BigEndian(header);
                if (magic == NbdProtocol.SimpleReplyMagic) await ReadSimpleReplyAsync(header);
                else if (magic == NbdProtocol.StructuredReplyMagic && Export.StructuredReplies) await ReadChunkAsync(header);
                else throw new NbdProtocolException($"reply magic 0x{magic:x8} (expected 0x{NbdProtocol.SimpleReplyMagic:x8}{(Export.StructuredReplies ? $" or 0x{NbdProtocol.StructuredReplyMagic:x8}" : "")})");
            }
        }
        catch (NbdProtocolException ex) { Fail(ex); }
        catch (Exception ex) when (_closing.IsCancellationRequested && ex is OperationCanceledException or IOException or ObjectDisposedException) { Fail(new NbdConnectionLostException("The NBD connection was closed.", ex)); }
        catch (Exception ex)
        {
            Fail(new NbdConnectionLostException($"The NBD connection dropped: {ex.Message}", ex));
        }
    }

    private async Task ReadSimpleReplyAsync(byte[] header)
    {
        await NbdWire.ReadExactAsync(_stream, header.AsMemory(4, 12), _closing.Token);
        int error = (int)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4));
        ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8));
        var p = Take(cookie, remove: false);
        if (error == 0 && p.Command == NbdCommand.Read) await ReadPayloadAsync(p.Buffer[..(int)p.Length]);
        else if (error == 0 && p.Command == NbdCommand.BlockStatus)
            throw new NbdProtocolException($"a simple success reply to BLOCK_STATUS (cookie {cookie}) carries no extents");
        lock (_gate) _pending.Remove(cookie);
        if (error == 0) p.Complete();
        else p.Fail(ErrorFor(p, error, null));
    }

    private async Task ReadChunkAsync(byte[] header)
    {
        await NbdWire.ReadExactAsync(_stream, header.AsMemory(4, 16), _closing.Token);
        var flags = BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(4));
        var type = (NbdChunkType)BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(6));
        ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        bool done = (flags & 1) != 0;
        var p = Take(cookie, remove: false);
        switch (type)
        {
            case NbdChunkType.None:
                if (length != 0 || !done) throw new NbdProtocolException($"NONE chunk with length {length} or without the DONE flag (cookie {cookie})");
                break;
            case NbdChunkType.OffsetData:
            {
                if (p.Command != NbdCommand.Read) throw new NbdProtocolException($"OFFSET_DATA chunk for a {p.Command} request (cookie {cookie})");
                if (length < 9) throw new NbdProtocolException($"OFFSET_DATA chunk of {length} bytes (at least 9)");
                await NbdWire.ReadExactAsync(_stream, header.AsMemory(20, 8), _closing.Token);
                long offset = (long)BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(20));
                long dataLength = length - 8;
                int at = p.Cover(offset, dataLength, "OFFSET_DATA");
                await ReadPayloadAsync(p.Buffer.Slice(at, (int)dataLength));
                break;
            }
            case NbdChunkType.OffsetHole:
            {
                if (p.Command != NbdCommand.Read) throw new NbdProtocolException($"OFFSET_HOLE chunk for a {p.Command} request (cookie {cookie})");
                if (length != 12) throw new NbdProtocolException($"OFFSET_HOLE chunk of {length} bytes (must be 12)");
                await NbdWire.ReadExactAsync(_stream, header.AsMemory(20, 12), _closing.Token);
                long offset = (long)BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(20));
                uint holeLength = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(28));
                if (holeLength == 0) throw new NbdProtocolException("OFFSET_HOLE chunk of size 0");
                int at = p.Cover(offset, holeLength, "OFFSET_HOLE");
                p.Buffer.Slice(at, (int)holeLength).Span.Clear();
                break;
            }
            case NbdChunkType.BlockStatus:
            {
                if (p.Command != NbdCommand.BlockStatus) throw new NbdProtocolException($"BLOCK_STATUS chunk for a {p.Command} request (cookie {cookie})");
                if (length < 12 || (length - 4) % 8 != 0 || length > 4 + 8 * (1 << 20))
                    throw new NbdProtocolException($"BLOCK_STATUS chunk of {length} bytes (must be 4 + 8n, n >= 1, n <= 2^20)");
                var payload = ArrayPool<byte>.Shared.Rent((int)length);
                try
                {
                    await NbdWire.ReadExactAsync(_stream, payload.AsMemory(0, (int)length), _closing.Token);
                    uint id = BinaryPrimitives.ReadUInt32BigEndian(payload);
                    if (id != Export.AllocationContextId) throw new NbdProtocolException($"BLOCK_STATUS for context {id}, which was never selected");
                    var list = new List<NbdAllocationExtent>((int)(length - 4) / 8);
                    long pos = p.Offset;
                    for (int i = 4; i < length; i += 8)
                    {
                        uint len = BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(i));
                        if (len == 0) throw new NbdProtocolException("a BLOCK_STATUS extent of length 0");
                        list.Add(new NbdAllocationExtent(pos, len, (NbdAllocationFlags)BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(i + 4))));
                        pos += len;
                    }
                    p.Extents = list;
                }
                finally { ArrayPool<byte>.Shared.Return(payload); }
                break;
            }
            case NbdChunkType.Error:
            case NbdChunkType.ErrorOffset:
            default:
            {
                if (((ushort)type & 0x8000) == 0) throw new NbdProtocolException($"unknown chunk type {(ushort)type} (cookie {cookie})");
                if (length < 6 || length > 6 + 4096 + 8) throw new NbdProtocolException($"error chunk of {length} bytes");
                var payload = new byte[length];
                await NbdWire.ReadExactAsync(_stream, payload, _closing.Token);
                int errno = (int)BinaryPrimitives.ReadUInt32BigEndian(payload);
                int msgLen = BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(4));
                int expected = 6 + msgLen + (type == NbdChunkType.ErrorOffset ? 8 : 0);
                if (expected != length && (type is NbdChunkType.Error or NbdChunkType.ErrorOffset))
                    throw new NbdProtocolException($"error chunk of {length} bytes with a {msgLen}-byte message");
                if (errno == 0) throw new NbdProtocolException("an error chunk with error 0");
                string message = System.Text.Encoding.UTF8.GetString(payload, 6, Math.Min(msgLen, payload.Length - 6));
                long? at = null;
                if (type == NbdChunkType.ErrorOffset)
                {
                    at = (long)BinaryPrimitives.ReadUInt64BigEndian(payload.AsSpan(6 + msgLen));
                    if (at < p.Offset || at >= p.Offset + p.Length) throw new NbdProtocolException($"ERROR_OFFSET at {at}, outside the request [{p.Offset}, +{p.Length})");
                }
                else if (type != NbdChunkType.Error) errno = NbdErrno.EINVAL;
                p.Error ??= ErrorFor(p, errno, at is null ? message : $"{message} (at offset {at})");
                break;
            }
        }
        if (!done) return;
        // Violations are thrown while the request is still registered, so Fail() fails it with the reason.
        if (p.Error is null && p.Command == NbdCommand.Read && p.Covered != p.Length)
            throw new NbdProtocolException($"the reply to READ [{p.Offset}, +{p.Length}) ended after covering only {p.Covered} bytes");
        if (p.Error is null && p.Command == NbdCommand.BlockStatus && p.Extents is null)
            throw new NbdProtocolException("the reply to BLOCK_STATUS ended without extents");
        lock (_gate) _pending.Remove(cookie);
        if (p.Error is not null) p.Fail(p.Error);
        else p.Complete();
    }

    private async ValueTask ReadPayloadAsync(Memory<byte> into)
    {
        // Large payloads arrive in pieces; count each piece as progress so slow links are not mistaken for dead ones.
        const int step = 256 * 1024;
        for (int done = 0; done < into.Length; done += step)
        {
            await NbdWire.ReadExactAsync(_stream, into.Slice(done, Math.Min(step, into.Length - done)), _closing.Token);
            Touch();
        }
    }

    private static NbdException ErrorFor(Pending p, int errno, string? message)
    {
        bool known = errno is NbdErrno.EPERM or NbdErrno.EIO or NbdErrno.ENOMEM or NbdErrno.EINVAL or NbdErrno.ENOSPC or NbdErrno.EOVERFLOW or NbdErrno.ENOTSUP or NbdErrno.ESHUTDOWN;
        if (!known) errno = NbdErrno.EINVAL; // proto.md: treat an unexpected error value as EINVAL
        return new NbdException($"The NBD server failed {p.Command} [{p.Offset}, +{p.Length}) with {NbdErrno.Name(errno)}{(string.IsNullOrEmpty(message) ? "" : $": {message}")}. The data of this range was not read; check the server's disk or log.", errno);
    }

    private Pending Take(ulong cookie, bool remove)
    {
        lock (_gate)
        {
            if (!_pending.TryGetValue(cookie, out var p)) throw new NbdProtocolException($"a reply for cookie {cookie}, which no request in flight has");
            if (remove) _pending.Remove(cookie);
            return p;
        }
    }

    private void Touch() => Volatile.Write(ref _lastProgress, Environment.TickCount64);

    private void CheckTimeout()
    {
        if (IsBroken) return;
        bool waiting; lock (_gate) waiting = _pending.Count > 0;
        if (waiting && Environment.TickCount64 - Volatile.Read(ref _lastProgress) > _requestTimeout.TotalMilliseconds)
            Fail(new NbdConnectionLostException($"The NBD server sent nothing for {_requestTimeout.TotalSeconds:0.#} s while requests were in flight; the connection was closed."));
    }

    private void Fail(Exception failure)
    {
        if (Interlocked.CompareExchange(ref _failure, failure, null) is not null) return;
        _closing.Cancel();
        try { _socket?.Dispose(); } catch (ObjectDisposedException) { }
        List<Pending> orphans;
        lock (_gate) { orphans = [.. _pending.Values]; _pending.Clear(); }
        foreach (var p in orphans) p.Fail(failure);
    }

    private void ThrowIfBroken()
    {
        var f = Volatile.Read(ref _failure);
        if (f is not null) throw f as NbdException ?? new NbdConnectionLostException(f.Message, f);
    }

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length <= 0 || length > uint.MaxValue || offset + length > Export.Size)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Range {offset}+{length} is empty or outside the export of {Export.Size} bytes.");
    }

    private void RequireWritable(string what)
    {
        if (Export.ReadOnly) throw new NbdException($"The export is read-only; {what} is not allowed.", NbdErrno.EPERM);
    }

    private void RequireFlag(NbdTransmissionFlags flag, string what)
    {
        if ((Export.Flags & flag) == 0) throw new NbdException($"The server does not support {what} on this export.", NbdErrno.ENOTSUP);
    }

    /// <summary>Soft disconnect (NBD_CMD_DISC) when healthy and idle, then closes.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        await _watchdog.DisposeAsync();
        if (!IsBroken && RequestsInFlight == 0)
        {
            try
            {
                var disc = new byte[28];
                NbdWire.WriteRequest(disc, 0, NbdCommand.Disconnect, 0, 0, 0);
                using var t = new CancellationTokenSource(TimeSpan.FromSeconds(5));
                await _sendLock.WaitAsync(t.Token);
                await _stream.WriteAsync(disc, t.Token);
                await _stream.FlushAsync(t.Token);
            }
            catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException or SocketException) { }
        }
        Fail(new ObjectDisposedException(nameof(NbdConnection), "The NBD connection was closed."));
        try { await _stream.DisposeAsync(); } catch (Exception ex) when (ex is IOException or ObjectDisposedException) { }
        try { await _readerLoop; } catch { }
    }

    private sealed class Pending(NbdCommand command, long offset, uint length, Memory<byte> buffer)
    {
        private List<(long Start, long End)>? _chunks;
        public NbdCommand Command { get; } = command;
        public long Offset { get; } = offset;
        public uint Length { get; } = length;
        public Memory<byte> Buffer { get; } = buffer;
        public TaskCompletionSource Completion { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public SemaphoreSlim? Slots;
        public long Covered;
        public NbdException? Error;
        public List<NbdAllocationExtent>? Extents;
        private int _finished;

        /// <summary>Checks that a chunk lies inside the request and overlaps no earlier chunk; returns its index in the buffer.</summary>
        public int Cover(long offset, long length, string kind)
        {
            if (offset < Offset || length > Length || offset - Offset > Length - length)
                throw new NbdProtocolException($"{kind} chunk [{offset}, +{length}) outside the request [{Offset}, +{Length})");
            _chunks ??= new(2);
            foreach (var (s, e) in _chunks)
                if (offset < e && s < offset + length) throw new NbdProtocolException($"{kind} chunk [{offset}, +{length}) overlaps an earlier chunk of the same reply");
            _chunks.Add((offset, offset + length));
            Covered += length;
            return (int)(offset - Offset);
        }

        public void Complete() { if (Finish()) Completion.TrySetResult(); }
        public void Fail(Exception ex) { if (Finish()) Completion.TrySetException(ex); }
        private bool Finish()
        {
            if (Interlocked.Exchange(ref _finished, 1) != 0) return false;
            Slots?.Release();
            return true;
        }
    }
}

/// <summary>One <c>base:allocation</c> extent reported by the server.</summary>
public readonly record struct NbdAllocationExtent(long Offset, long Length, NbdAllocationFlags Flags)
{
    /// <summary>True when the range reads as zeros (NBD_STATE_ZERO); HOLE alone does not promise zeros.</summary>
    public bool ReadsAsZeroes => (Flags & NbdAllocationFlags.Zero) != 0;
}
