using System.Net;
using System.Text;

namespace VProtect.Simulator.Http;

/// <summary>A parsed request line and headers, with the body as a stream limited to Content-Length.</summary>
public sealed class HttpRequest
{
    public required string Method { get; init; }
    /// <summary>The request target exactly as sent (path and query).</summary>
    public required string Target { get; init; }
    public required string Path { get; init; }
    public required IReadOnlyDictionary<string, string> Query { get; init; }
    public required string Version { get; init; }
    public required IReadOnlyDictionary<string, string> Headers { get; init; }
    public required Stream Body { get; init; }
    /// <summary>Content-Length, or null when absent.</summary>
    public long? ContentLength { get; init; }
    public required bool IsHttps { get; init; }
    public required IPEndPoint LocalEndPoint { get; init; }
    public required IPEndPoint RemoteEndPoint { get; init; }

    public string? Header(string name) => Headers.TryGetValue(name, out var v) ? v : null;

    /// <summary>A cookie value (xapi accepts session_id and task_id as cookies too).</summary>
    public string? Cookie(string name)
    {
        var cookie = Header("Cookie");
        if (cookie is null) return null;
        foreach (var part in cookie.Split(';'))
        {
            int eq = part.IndexOf('=');
            if (eq > 0 && part[..eq].Trim() == name) return part[(eq + 1)..].Trim();
        }
        return null;
    }

    /// <summary>A query parameter, falling back to a cookie of the same name.</summary>
    public string? QueryOrCookie(string name) => Query.TryGetValue(name, out var v) ? v : Cookie(name);
}

/// <summary>
/// One request/response on a connection. Handlers either call <see cref="RespondAsync"/> (a complete body
/// with Content-Length; the connection may be kept alive) or take full control with <see cref="WriteHeadAsync"/>
/// and then write the body straight to <see cref="ResponseBody"/> (streams without Content-Length end with
/// connection close, as xapi's transfer handlers do).
/// </summary>
public sealed class HttpExchange
{
    private readonly Stream _connection;
    internal HttpExchange(HttpRequest request, Stream connection, object? host)
    {
        Request = request;
        _connection = connection;
        Host = host;
        KeepAlive = request.Version == "HTTP/1.1"
            ? !string.Equals(request.Header("Connection"), "close", StringComparison.OrdinalIgnoreCase)
            : string.Equals(request.Header("Connection"), "keep-alive", StringComparison.OrdinalIgnoreCase);
    }

    public HttpRequest Request { get; }
    /// <summary>Which simulated host's listener took the request (master or pool member).</summary>
    public object? Host { get; }
    /// <summary>Whether the connection stays open after this exchange; set false to close it.</summary>
    public bool KeepAlive { get; set; }
    public bool HeadWritten { get; private set; }
    /// <summary>Forces the status line's version (xapi answers /export with HTTP/1.0 whatever the request said).</summary>
    public string? ResponseVersion { get; set; }
    /// <summary>The raw connection, for streaming bodies after <see cref="WriteHeadAsync"/>.</summary>
    public Stream ResponseBody => HeadWritten ? _connection : throw new InvalidOperationException("Write the status line and headers first.");

    public async Task WriteHeadAsync(int status, string reason, IEnumerable<KeyValuePair<string, string>> headers, CancellationToken ct)
    {
        if (HeadWritten) throw new InvalidOperationException("The response head was already written.");
        var sb = new StringBuilder();
        sb.Append(ResponseVersion is { } forced ? forced + " " : Request.Version == "HTTP/1.0" ? "HTTP/1.0 " : "HTTP/1.1 ").Append(status).Append(' ').Append(reason).Append("\r\n");
        bool hasLength = false;
        foreach (var (k, v) in headers)
        {
            if (k.Equals("Content-Length", StringComparison.OrdinalIgnoreCase)) hasLength = true;
            if (k.Equals("Connection", StringComparison.OrdinalIgnoreCase)) { if (v.Equals("close", StringComparison.OrdinalIgnoreCase)) KeepAlive = false; continue; }
            sb.Append(k).Append(": ").Append(v).Append("\r\n");
        }
        if (!hasLength) KeepAlive = false; // the body ends when the connection closes
        sb.Append(KeepAlive ? "Connection: keep-alive\r\n" : "Connection: close\r\n").Append("\r\n");
        HeadWritten = true;
        await _connection.WriteAsync(Encoding.ASCII.GetBytes(sb.ToString()), ct).ConfigureAwait(false);
    }

    public async Task RespondAsync(int status, string reason, string contentType, ReadOnlyMemory<byte> body, CancellationToken ct, IEnumerable<KeyValuePair<string, string>>? extraHeaders = null)
    {
        var headers = new List<KeyValuePair<string, string>>
        {
            new("Content-Type", contentType),
            new("Content-Length", body.Length.ToString(System.Globalization.CultureInfo.InvariantCulture)),
        };
        if (extraHeaders is not null) headers.AddRange(extraHeaders);
        await WriteHeadAsync(status, reason, headers, ct).ConfigureAwait(false);
        if (Request.Method != "HEAD") await _connection.WriteAsync(body, ct).ConfigureAwait(false);
        await _connection.FlushAsync(ct).ConfigureAwait(false);
    }

    public Task RespondTextAsync(int status, string reason, string contentType, string body, CancellationToken ct, IEnumerable<KeyValuePair<string, string>>? extraHeaders = null)
        => RespondAsync(status, reason, contentType, Encoding.UTF8.GetBytes(body), ct, extraHeaders);

    /// <summary>An HTML error page, as xapi's http server sends for 4xx/5xx.</summary>
    public Task RespondErrorAsync(int status, string reason, string detail, CancellationToken ct)
        => RespondTextAsync(status, reason, "text/html",
            $"<html><body><h1>HTTP {status} {WebUtility.HtmlEncode(reason)}</h1>{WebUtility.HtmlEncode(detail)}</body></html>", ct);
}

/// <summary>A request handler; it owns the response.</summary>
public delegate Task HttpHandler(HttpExchange exchange, CancellationToken cancellationToken);
