using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;
using System.Text;

namespace VProtect.Core.Tests.Xapi;

/// <summary>A request as the fake server parsed it: the raw request line, headers and query, with the body left on the connection.</summary>
internal sealed class FakeHttpRequest
{
    public required string Method { get; init; }
    public required string Target { get; init; }
    public required string HttpVersion { get; init; }
    public required string Path { get; init; }
    public required Dictionary<string, string> Query { get; init; }
    public required Dictionary<string, string> Headers { get; init; }
    public required Stream Connection { get; init; }

    public long? ContentLength => Headers.TryGetValue("Content-Length", out var v) ? long.Parse(v) : null;

    public string? Cookie(string name)
    {
        if (!Headers.TryGetValue("Cookie", out var cookies)) return null;
        foreach (var part in cookies.Split(';'))
        {
            var kv = part.Trim().Split('=', 2);
            if (kv.Length == 2 && kv[0] == name) return kv[1];
        }
        return null;
    }

    public async Task<byte[]> ReadBodyAsync(CancellationToken ct)
    {
        var length = ContentLength ?? 0;
        var body = new byte[length];
        await Connection.ReadExactlyAsync(body, ct);
        return body;
    }
}

/// <summary>
/// A tiny HTTP/1.1 server on loopback for tests: parses each request head byte by byte (so the body stays unread on the
/// connection for the handler) and lets the handler write whatever raw response it wants. Handlers return true to keep
/// the connection open for another request.
/// </summary>
internal sealed class FakeHttpServer : IAsyncDisposable
{
    private readonly TcpListener _listener;
    private readonly Func<FakeHttpRequest, CancellationToken, Task<bool>> _handler;
    private readonly X509Certificate2? _certificate;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _acceptLoop;
    private readonly List<Task> _connections = new();

    public FakeHttpServer(Func<FakeHttpRequest, CancellationToken, Task<bool>> handler, X509Certificate2? certificate = null, IPAddress? address = null, int port = 0)
    {
        _handler = handler;
        _certificate = certificate;
        _listener = new TcpListener(address ?? IPAddress.Loopback, port);
        _listener.Start();
        _acceptLoop = AcceptLoopAsync();
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;
    public IPAddress Address => ((IPEndPoint)_listener.LocalEndpoint).Address;

    public Uri Url
    {
        get
        {
            var host = Address.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{Address}]" : Address.ToString();
            return new Uri($"{(_certificate is null ? "http" : "https")}://{host}:{Port}/");
        }
    }

    /// <summary>Exceptions thrown by handlers (assertion failures inside the server surface in the test this way).</summary>
    public List<Exception> HandlerErrors { get; } = new();

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            TcpClient client;
            try { client = await _listener.AcceptTcpClientAsync(_stop.Token); }
            catch (Exception) { return; }
            lock (_connections) _connections.Add(ServeAsync(client));
        }
    }

    private async Task ServeAsync(TcpClient client)
    {
        using var _ = client;
        Stream stream = client.GetStream();
        try
        {
            if (_certificate is not null)
            {
                var ssl = new SslStream(stream);
                await ssl.AuthenticateAsServerAsync(_certificate);
                stream = ssl;
            }
            while (!_stop.IsCancellationRequested)
            {
                var request = await ReadHeadAsync(stream, _stop.Token);
                if (request is null) return;
                if (!await _handler(request, _stop.Token)) return;
            }
        }
        catch (Exception ex) when (ex is IOException or OperationCanceledException or ObjectDisposedException or System.Security.Authentication.AuthenticationException)
        {
            // client went away, or TLS was refused by the client: normal in tests
        }
        catch (Exception ex)
        {
            lock (HandlerErrors) HandlerErrors.Add(ex);
        }
        finally
        {
            await stream.DisposeAsync();
        }
    }

    private static async Task<FakeHttpRequest?> ReadHeadAsync(Stream stream, CancellationToken ct)
    {
        var head = new List<byte>(512);
        var one = new byte[1];
        while (true)
        {
            var n = await stream.ReadAsync(one, ct);
            if (n == 0) return null;
            head.Add(one[0]);
            var c = head.Count;
            if (c >= 4 && head[c - 4] == '\r' && head[c - 3] == '\n' && head[c - 2] == '\r' && head[c - 1] == '\n') break;
            if (c > 64 * 1024) throw new InvalidDataException("request head too long");
        }
        var lines = Encoding.ASCII.GetString(head.ToArray()).Split("\r\n");
        var parts = lines[0].Split(' ');
        var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var line in lines.Skip(1))
        {
            if (line.Length == 0) continue;
            var colon = line.IndexOf(':');
            headers[line[..colon].Trim()] = line[(colon + 1)..].Trim();
        }
        var target = parts[1];
        var q = target.IndexOf('?');
        var query = new Dictionary<string, string>(StringComparer.Ordinal);
        if (q >= 0)
            foreach (var pair in target[(q + 1)..].Split('&', StringSplitOptions.RemoveEmptyEntries))
            {
                var kv = pair.Split('=', 2);
                query[Uri.UnescapeDataString(kv[0])] = kv.Length > 1 ? Uri.UnescapeDataString(kv[1]) : "";
            }
        return new FakeHttpRequest
        {
            Method = parts[0], Target = target, HttpVersion = parts[2], Path = q >= 0 ? target[..q] : target,
            Query = query, Headers = headers, Connection = stream,
        };
    }

    public static async Task WriteResponseAsync(Stream stream, int status, string reason, IEnumerable<(string, string)> headers, byte[]? body, CancellationToken ct)
    {
        var sb = new StringBuilder($"HTTP/1.1 {status} {reason}\r\n");
        foreach (var (k, v) in headers) sb.Append(k).Append(": ").Append(v).Append("\r\n");
        if (body is not null) sb.Append("Content-Length: ").Append(body.Length).Append("\r\n");
        sb.Append("\r\n");
        await stream.WriteAsync(Encoding.ASCII.GetBytes(sb.ToString()), ct);
        if (body is not null) await stream.WriteAsync(body, ct);
        await stream.FlushAsync(ct);
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        _listener.Stop();
        await _acceptLoop;
        Task[] open;
        lock (_connections) open = _connections.ToArray();
        await Task.WhenAll(open);
        _stop.Dispose();
    }
}
