using VProtect.Simulator.Faults;

namespace VProtect.Simulator.DataPlane.Http;

/// <summary>Thrown when an injected fault drops a transfer; the handler then closes the connection mid-stream.</summary>
internal sealed class InjectedDropException(long bytes) : IOException($"Transfer dropped after {bytes} bytes by an injected fault (POST /sim/faults).")
{
    public long Bytes { get; } = bytes;
}

/// <summary>
/// A pass-through stream applying the fault registry to one HTTP transfer: after the drop threshold (taken once,
/// when the transfer starts) it moves no more bytes and throws <see cref="InjectedDropException"/>; every read or
/// write (one chunk) waits the configured latency first.
/// </summary>
internal sealed class FaultInjectingStream : Stream
{
    private readonly Stream _inner;
    private readonly FaultRegistry _faults;
    private readonly TransferChannel _channel;
    private readonly long? _dropAfter;
    private long _moved;

    public FaultInjectingStream(Stream inner, FaultRegistry faults, TransferChannel channel)
    {
        _inner = inner;
        _faults = faults;
        _channel = channel;
        _dropAfter = faults.TakeDrop(channel);
    }

    public long BytesMoved => _moved;
    public override bool CanRead => _inner.CanRead;
    public override bool CanSeek => false;
    public override bool CanWrite => _inner.CanWrite;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => _moved; set => throw new NotSupportedException(); }

    private int Allowed(int requested)
    {
        if (_dropAfter is not long limit) return requested;
        long left = limit - _moved;
        if (left <= 0) throw new InjectedDropException(_moved);
        return (int)Math.Min(requested, left);
    }

    private async ValueTask DelayAsync(CancellationToken ct)
    {
        int ms = _faults.LatencyMs(_channel);
        if (ms > 0) await Task.Delay(ms, ct).ConfigureAwait(false);
    }

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        await DelayAsync(cancellationToken).ConfigureAwait(false);
        int n = await _inner.ReadAsync(buffer[..Allowed(buffer.Length)], cancellationToken).ConfigureAwait(false);
        _moved += n;
        return n;
    }

    public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
    {
        await DelayAsync(cancellationToken).ConfigureAwait(false);
        while (buffer.Length > 0)
        {
            int n = Allowed(buffer.Length);
            await _inner.WriteAsync(buffer[..n], cancellationToken).ConfigureAwait(false);
            _moved += n;
            buffer = buffer[n..];
        }
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
    public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
    public override void Flush() => _inner.Flush();
    public override Task FlushAsync(CancellationToken cancellationToken) => _inner.FlushAsync(cancellationToken);
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    // The connection belongs to the HTTP server; never close it from here.
    protected override void Dispose(bool disposing) { }
    public override ValueTask DisposeAsync() => ValueTask.CompletedTask;
}
