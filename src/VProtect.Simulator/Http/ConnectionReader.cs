using System.Text;

namespace VProtect.Simulator.Http;

/// <summary>
/// Buffered reading of a connection: header lines come out of the buffer, and the body stream drains the
/// buffer before reading the socket, so nothing of the next pipelined request is lost.
/// </summary>
internal sealed class ConnectionReader
{
    private readonly Stream _inner;
    private readonly byte[] _buffer = new byte[16 * 1024];
    private int _start, _end;

    public ConnectionReader(Stream inner) => _inner = inner;

    /// <summary>Reads one CRLF- (or LF-) terminated line; null on a clean end of stream before any byte.</summary>
    public async ValueTask<string?> ReadLineAsync(int maxLength, CancellationToken ct)
    {
        var sb = new StringBuilder();
        while (true)
        {
            for (int i = _start; i < _end; i++)
            {
                if (_buffer[i] != (byte)'\n') continue;
                sb.Append(Encoding.Latin1.GetString(_buffer, _start, i - _start));
                _start = i + 1;
                if (sb.Length > 0 && sb[^1] == '\r') sb.Length--;
                return sb.ToString();
            }
            sb.Append(Encoding.Latin1.GetString(_buffer, _start, _end - _start));
            _start = _end = 0;
            if (sb.Length > maxLength) throw new InvalidDataException("Header line too long.");
            int n = await _inner.ReadAsync(_buffer, ct).ConfigureAwait(false);
            if (n == 0) return sb.Length == 0 ? null : throw new EndOfStreamException("Connection closed mid-line.");
            _end = n;
        }
    }

    public async ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken ct)
    {
        if (_start < _end)
        {
            int n = Math.Min(destination.Length, _end - _start);
            _buffer.AsMemory(_start, n).CopyTo(destination);
            _start += n;
            return n;
        }
        return await _inner.ReadAsync(destination, ct).ConfigureAwait(false);
    }
}

/// <summary>A request body: exactly Content-Length bytes (or, with no length, until the peer closes).</summary>
internal sealed class RequestBodyStream : Stream
{
    private readonly ConnectionReader _reader;
    private long _remaining;

    public RequestBodyStream(ConnectionReader reader, long? length)
    {
        _reader = reader;
        _remaining = length ?? long.MaxValue;
    }

    public bool Exhausted => _remaining == 0;
    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        if (_remaining == 0 || buffer.Length == 0) return 0;
        if (buffer.Length > _remaining) buffer = buffer[..(int)_remaining];
        int n = await _reader.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
        if (n == 0)
        {
            if (_remaining != long.MaxValue) throw new EndOfStreamException($"The client closed the connection with {_remaining} body bytes still to come.");
            _remaining = 0;
            return 0;
        }
        if (_remaining != long.MaxValue) _remaining -= n;
        return n;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
}
