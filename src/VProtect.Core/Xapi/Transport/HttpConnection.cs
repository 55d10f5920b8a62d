using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Text;

namespace VProtect.Core.Xapi.Transport;

/// <summary>The status line and headers of an HTTP response.</summary>
internal sealed record HttpResponseHead(int StatusCode, string Reason, IReadOnlyDictionary<string, string> Headers)
{
    public string? Header(string name) => Headers.TryGetValue(name, out var v) ? v : null;
    public bool IsRedirect => StatusCode is 301 or 302 or 303 or 307 or 308;
}

/// <summary>
/// One raw HTTP/1.1 connection (plain or TLS) with a read buffer. XAPI's transfer handlers need things HttpClient does
/// not give: a PUT that may be answered (302) before its body is sent, and GET bodies that end at connection close.
/// </summary>
internal sealed class HttpConnection : IAsyncDisposable
{
    private const int MaxHeadBytes = 64 * 1024;
    private readonly TcpClient _tcp;
    private readonly Stream _stream;
    private readonly byte[] _buffer = new byte[16 * 1024];
    private int _pos;
    private int _len;

    private HttpConnection(TcpClient tcp, Stream stream, Uri url)
    {
        _tcp = tcp;
        _stream = stream;
        Url = url;
    }

    public Uri Url { get; }
    public Stream Stream => _stream;

    public static async Task<HttpConnection> OpenAsync(Uri url, CertificatePolicy certificates, TimeSpan timeout, CancellationToken ct)
    {
        // A name may resolve to IPv4 and/or IPv6: let TcpClient pick the family per resolved address.
        var tcp = url.HostNameType switch
        {
            UriHostNameType.IPv6 => new TcpClient(AddressFamily.InterNetworkV6),
            UriHostNameType.IPv4 => new TcpClient(AddressFamily.InterNetwork),
            _ => new TcpClient(),
        };
        tcp.NoDelay = true;
        using var connectTimeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        connectTimeout.CancelAfter(timeout);
        try
        {
            await tcp.ConnectAsync(url.DnsSafeHost, url.Port, connectTimeout.Token).ConfigureAwait(false);
            Stream stream = tcp.GetStream();
            if (url.Scheme == Uri.UriSchemeHttps)
            {
                var ssl = new SslStream(stream, leaveInnerStreamOpen: false, certificates.Validate);
                try
                {
                    await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = url.DnsSafeHost }, connectTimeout.Token).ConfigureAwait(false);
                }
                catch (AuthenticationException ex)
                {
                    await ssl.DisposeAsync().ConfigureAwait(false);
                    throw new XapiConnectionException($"TLS with {Redact(url).GetLeftPart(UriPartial.Path)} failed: {certificates.LastRejection ?? ex.Message}.", Redact(url), ex);
                }
                stream = ssl;
            }
            return new HttpConnection(tcp, stream, url);
        }
        catch (OperationCanceledException) when (!ct.IsCancellationRequested)
        {
            tcp.Dispose();
            throw new XapiConnectionException($"Could not connect to {Redact(url).GetLeftPart(UriPartial.Authority)} within {timeout.TotalSeconds:0.#} s.", Redact(url));
        }
        catch (SocketException ex)
        {
            tcp.Dispose();
            var what = ex.SocketErrorCode == SocketError.ConnectionRefused ? "refused the connection" : $"could not be reached ({ex.Message})";
            throw new XapiConnectionException($"{Redact(url).GetLeftPart(UriPartial.Authority)} {what}; check the address and that xapi is running.", Redact(url), ex);
        }
        catch
        {
            tcp.Dispose();
            throw;
        }
    }

    /// <summary>Removes session_id from a URL before it goes into a message or log.</summary>
    public static Uri Redact(Uri url)
    {
        if (string.IsNullOrEmpty(url.Query)) return url;
        var kept = url.Query.TrimStart('?').Split('&', StringSplitOptions.RemoveEmptyEntries)
            .Select(p => p.StartsWith("session_id=", StringComparison.Ordinal) ? "session_id=***" : p);
        return new UriBuilder(url) { Query = string.Join("&", kept) }.Uri;
    }

    public async Task WriteHeadAsync(string method, Uri url, IEnumerable<KeyValuePair<string, string>> headers, CancellationToken ct)
    {
        var sb = new StringBuilder(512);
        sb.Append(method).Append(' ').Append(url.PathAndQuery).Append(" HTTP/1.1\r\n");
        sb.Append("Host: ").Append(url.Authority).Append("\r\n");
        foreach (var (name, value) in headers)
        {
            if (name.Contains('\r') || name.Contains('\n') || value.Contains('\r') || value.Contains('\n'))
                throw new ArgumentException($"HTTP header {name} contains a line break.");
            sb.Append(name).Append(": ").Append(value).Append("\r\n");
        }
        sb.Append("\r\n");
        await _stream.WriteAsync(Encoding.ASCII.GetBytes(sb.ToString()), ct).ConfigureAwait(false);
        await _stream.FlushAsync(ct).ConfigureAwait(false);
    }

    public async Task<HttpResponseHead> ReadHeadAsync(CancellationToken ct)
    {
        var statusLine = await ReadLineAsync(ct).ConfigureAwait(false)
            ?? throw new XapiConnectionException($"{Redact(Url).GetLeftPart(UriPartial.Authority)} closed the connection without an HTTP response.", Redact(Url));
        var parts = statusLine.Split(' ', 3);
        if (parts.Length < 2 || !parts[0].StartsWith("HTTP/", StringComparison.Ordinal) || !int.TryParse(parts[1], out var status))
            throw new XapiConnectionException($"{Redact(Url).GetLeftPart(UriPartial.Authority)} sent '{statusLine}', not an HTTP status line.", Redact(Url));
        var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        var total = statusLine.Length;
        while (true)
        {
            var line = await ReadLineAsync(ct).ConfigureAwait(false)
                ?? throw new XapiConnectionException($"{Redact(Url).GetLeftPart(UriPartial.Authority)} closed the connection in the middle of the response headers.", Redact(Url));
            if (line.Length == 0) break;
            total += line.Length;
            if (total > MaxHeadBytes) throw new XapiConnectionException("The HTTP response headers are too long.", Redact(Url));
            var colon = line.IndexOf(':');
            if (colon <= 0) continue;
            var name = line[..colon].Trim();
            var value = line[(colon + 1)..].Trim();
            headers[name] = headers.TryGetValue(name, out var existing) ? existing + ", " + value : value;
        }
        return new HttpResponseHead(status, parts.Length > 2 ? parts[2] : "", headers);
    }

    /// <summary>One CRLF (or LF) terminated ASCII line; null at end of stream before any byte.</summary>
    public async Task<string?> ReadLineAsync(CancellationToken ct)
    {
        var line = new StringBuilder();
        while (true)
        {
            if (_pos == _len && !await FillAsync(ct).ConfigureAwait(false))
                return line.Length == 0 ? null : line.ToString();
            var span = _buffer.AsSpan(_pos, _len - _pos);
            var lf = span.IndexOf((byte)'\n');
            if (lf < 0)
            {
                line.Append(Encoding.ASCII.GetString(span));
                _pos = _len;
                if (line.Length > MaxHeadBytes) throw new XapiConnectionException("An HTTP line is too long.", Redact(Url));
                continue;
            }
            line.Append(Encoding.ASCII.GetString(span[..lf]));
            _pos += lf + 1;
            if (line.Length > 0 && line[^1] == '\r') line.Length--;
            return line.ToString();
        }
    }

    /// <summary>Reads body bytes: buffered ones first, then straight from the socket.</summary>
    public async ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken ct)
    {
        if (_pos < _len)
        {
            var n = Math.Min(destination.Length, _len - _pos);
            _buffer.AsMemory(_pos, n).CopyTo(destination);
            _pos += n;
            return n;
        }
        return await _stream.ReadAsync(destination, ct).ConfigureAwait(false);
    }

    private async Task<bool> FillAsync(CancellationToken ct)
    {
        _pos = 0;
        _len = await _stream.ReadAsync(_buffer, ct).ConfigureAwait(false);
        return _len > 0;
    }

    public async ValueTask DisposeAsync()
    {
        await _stream.DisposeAsync().ConfigureAwait(false);
        _tcp.Dispose();
    }
}
