using System.Globalization;
using VProtect.Core.IO;

namespace VProtect.Core.Xapi.Transport;

/// <summary>
/// A response body read as it arrives: by Content-Length, by HTTP chunking (a proxy or another server may use it), or, as
/// xapi's export handlers do, until the connection closes. Owns the connection; reports progress per read.
/// </summary>
internal sealed class HttpBodyStream : Stream
{
    private enum Framing { Length, Chunked, UntilClose }

    private readonly HttpConnection _connection;
    private readonly Framing _framing;
    private readonly IProgress<TransferProgress>? _progress;
    private readonly long _expectedTotal;
    private long _remaining;       // Length: bytes left; Chunked: bytes left in the current chunk
    private bool _finished;
    private long _read;
    private int _disposed;

    public HttpBodyStream(HttpConnection connection, HttpResponseHead head, IProgress<TransferProgress>? progress, long expectedTotal)
    {
        _connection = connection;
        _progress = progress;
        if (head.Header("Transfer-Encoding") is { } te && te.Contains("chunked", StringComparison.OrdinalIgnoreCase))
        {
            _framing = Framing.Chunked;
        }
        else if (head.Header("Content-Length") is { } cl && long.TryParse(cl, NumberStyles.None, CultureInfo.InvariantCulture, out var length))
        {
            _framing = Framing.Length;
            _remaining = length;
            _finished = length == 0;
        }
        else
        {
            _framing = Framing.UntilClose;
        }
        _expectedTotal = expectedTotal >= 0 ? expectedTotal : _framing == Framing.Length ? _remaining : -1;
    }

    /// <summary>Bytes delivered so far.</summary>
    public long BytesRead => Interlocked.Read(ref _read);

    /// <summary>True once the body's end was seen (length reached, last chunk, or connection closed).</summary>
    public bool Completed => _finished;

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed != 0, this);
        if (_finished || buffer.Length == 0) return 0;
        int n;
        switch (_framing)
        {
            case Framing.Length:
                n = await _connection.ReadAsync(buffer[..(int)Math.Min(buffer.Length, _remaining)], cancellationToken).ConfigureAwait(false);
                if (n == 0)
                    throw new XapiConnectionException(
                        $"The connection closed after {_read} bytes, {_remaining} bytes before the announced end of the body.", HttpConnection.Redact(_connection.Url));
                _remaining -= n;
                if (_remaining == 0) _finished = true;
                break;
            case Framing.Chunked:
                if (_remaining == 0)
                {
                    _remaining = await ReadChunkSizeAsync(cancellationToken).ConfigureAwait(false);
                    if (_remaining == 0)
                    {
                        // Trailer section: lines until an empty one.
                        while (await _connection.ReadLineAsync(cancellationToken).ConfigureAwait(false) is { Length: > 0 }) { }
                        _finished = true;
                        return 0;
                    }
                }
                n = await _connection.ReadAsync(buffer[..(int)Math.Min(buffer.Length, _remaining)], cancellationToken).ConfigureAwait(false);
                if (n == 0) throw new XapiConnectionException($"The connection closed inside an HTTP chunk after {_read} bytes.", HttpConnection.Redact(_connection.Url));
                _remaining -= n;
                if (_remaining == 0 && await _connection.ReadLineAsync(cancellationToken).ConfigureAwait(false) is not "")
                    throw new XapiConnectionException("An HTTP chunk was not followed by CRLF.", HttpConnection.Redact(_connection.Url));
                break;
            default:
                n = await _connection.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
                if (n == 0) { _finished = true; return 0; }
                break;
        }
        var total = Interlocked.Add(ref _read, n);
        _progress?.Report(new TransferProgress(total, _expectedTotal));
        return n;
    }

    private async Task<long> ReadChunkSizeAsync(CancellationToken ct)
    {
        var line = await _connection.ReadLineAsync(ct).ConfigureAwait(false)
            ?? throw new XapiConnectionException($"The connection closed before the end of a chunked body ({_read} bytes read).", HttpConnection.Redact(_connection.Url));
        var semicolon = line.IndexOf(';');
        var hex = (semicolon >= 0 ? line[..semicolon] : line).Trim();
        if (!long.TryParse(hex, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var size) || size < 0)
            throw new XapiConnectionException($"Bad HTTP chunk size '{line}'.", HttpConnection.Redact(_connection.Url));
        return size;
    }

    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
        ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override bool CanRead => _disposed == 0;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException("XAPI transfer bodies have no known length; read until the end.");
    public override long Position { get => BytesRead; set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        await _connection.DisposeAsync().ConfigureAwait(false);
        await base.DisposeAsync().ConfigureAwait(false);
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && Interlocked.Exchange(ref _disposed, 1) == 0)
            _connection.DisposeAsync().AsTask().GetAwaiter().GetResult();
        base.Dispose(disposing);
    }
}
