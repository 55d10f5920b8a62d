using System.Net;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Cryptography.X509Certificates;

namespace VProtect.Simulator.Http;

/// <summary>
/// Routes by the longest matching path prefix, as xapi's Http_svr does (Radix_tree.longest_prefix), so
/// "/import_raw_vdi" wins over "/import" and any unmatched POST reaches the fallback (XML-RPC).
/// </summary>
public sealed class RouteTable
{
    private readonly List<(string Method, string Prefix, HttpHandler Handler)> _routes = new();

    /// <summary>Method "*" matches every method.</summary>
    public void Add(string method, string prefix, HttpHandler handler)
    {
        lock (_routes)
        {
            _routes.RemoveAll(r => r.Method == method && r.Prefix == prefix);
            _routes.Add((method, prefix, handler));
        }
    }

    public HttpHandler? Fallback { get; set; }

    public HttpHandler? Find(string method, string path)
    {
        lock (_routes)
        {
            HttpHandler? best = null; int bestLength = -1;
            foreach (var (m, prefix, h) in _routes)
                if ((m == "*" || m == method) && path.StartsWith(prefix, StringComparison.Ordinal) && prefix.Length > bestLength)
                {
                    best = h; bestLength = prefix.Length;
                }
            return best;
        }
    }
}

/// <summary>
/// A small HTTP/1.0 and 1.1 server over <see cref="TcpListener"/> (plus <see cref="SslStream"/> for HTTPS):
/// keep-alive, no request chunking, handlers in full control of the response. Ours rather than Kestrel so
/// the transfer handlers can reproduce xapi's raw framing (no Content-Length, close to end).
/// </summary>
public sealed class HttpServer : IAsyncDisposable
{
    private const int MaxHeaderBytes = 64 * 1024;
    private readonly TcpListener _listener;
    private readonly RouteTable _routes;
    private readonly X509Certificate2? _certificate;
    private readonly object? _host;
    private readonly CancellationTokenSource _stop = new();
    private readonly HashSet<TcpClient> _clients = new();
    private readonly List<Task> _connections = new();
    private Task? _acceptLoop;

    public HttpServer(IPAddress address, int port, RouteTable routes, X509Certificate2? certificate, object? host)
    {
        _listener = new TcpListener(address, port);
        _routes = routes;
        _certificate = certificate;
        _host = host;
    }

    public IPEndPoint EndPoint => (IPEndPoint)_listener.LocalEndpoint;
    public bool IsHttps => _certificate is not null;

    public void Start()
    {
        _listener.Server.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, false);
        _listener.Start(128);
        _acceptLoop = AcceptLoopAsync();
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stop.IsCancellationRequested)
        {
            TcpClient client;
            try { client = await _listener.AcceptTcpClientAsync(_stop.Token).ConfigureAwait(false); }
            catch (Exception) when (_stop.IsCancellationRequested) { return; }
            catch (SocketException) { continue; }
            client.NoDelay = true;
            lock (_clients)
            {
                _clients.Add(client);
                _connections.RemoveAll(t => t.IsCompleted);
                _connections.Add(Task.Run(() => ServeAsync(client)));
            }
        }
    }

    private async Task ServeAsync(TcpClient client)
    {
        var ct = _stop.Token;
        try
        {
            using var _ = client;
            Stream stream = client.GetStream();
            if (_certificate is not null)
            {
                var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
                await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
                {
                    ServerCertificate = _certificate,
                    ClientCertificateRequired = false,
                }, ct).ConfigureAwait(false);
                stream = ssl;
            }
            await using var __ = stream;
            var reader = new ConnectionReader(stream);
            var local = (IPEndPoint)client.Client.LocalEndPoint!;
            var remote = (IPEndPoint)client.Client.RemoteEndPoint!;
            while (!ct.IsCancellationRequested)
            {
                var request = await ReadRequestAsync(reader, local, remote, IsHttps, ct).ConfigureAwait(false);
                if (request is null) return;
                var exchange = new HttpExchange(request, stream, _host);
                var handler = _routes.Find(request.Method, request.Path) ?? (request.Method == "POST" ? _routes.Fallback : null);
                try
                {
                    if (handler is null) await exchange.RespondErrorAsync(404, "Not Found", $"No handler for {request.Method} {request.Path}.", ct).ConfigureAwait(false);
                    else await handler(exchange, ct).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is not OperationCanceledException && !exchange.HeadWritten)
                {
                    await exchange.RespondErrorAsync(500, "Internal Server Error", ex.Message, ct).ConfigureAwait(false);
                    exchange.KeepAlive = false;
                }
                await stream.FlushAsync(ct).ConfigureAwait(false);
                if (!exchange.KeepAlive || !exchange.HeadWritten) return;
                // Skip whatever body the handler did not read so the next request starts at its first byte.
                var body = (RequestBodyStream)request.Body;
                if (!body.Exhausted)
                {
                    if (request.ContentLength is null) return;
                    await body.CopyToAsync(Stream.Null, ct).ConfigureAwait(false);
                }
            }
        }
        catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or ObjectDisposedException
                                   or InvalidDataException or System.Security.Authentication.AuthenticationException)
        {
            // The peer went away or spoke something else; nothing to answer.
        }
        finally
        {
            lock (_clients) _clients.Remove(client);
        }
    }

    private static async Task<HttpRequest?> ReadRequestAsync(ConnectionReader reader, IPEndPoint local, IPEndPoint remote, bool isHttps, CancellationToken ct)
    {
        string? line;
        do { line = await reader.ReadLineAsync(MaxHeaderBytes, ct).ConfigureAwait(false); if (line is null) return null; }
        while (line.Length == 0); // tolerate stray CRLF between requests (RFC 9112 §2.2)
        var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length != 3 || !parts[2].StartsWith("HTTP/1.", StringComparison.Ordinal)) throw new InvalidDataException($"Bad request line: {line}");
        var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        int total = 0;
        while (true)
        {
            var h = await reader.ReadLineAsync(MaxHeaderBytes, ct).ConfigureAwait(false) ?? throw new EndOfStreamException();
            if (h.Length == 0) break;
            total += h.Length;
            if (total > MaxHeaderBytes) throw new InvalidDataException("Headers too large.");
            int colon = h.IndexOf(':');
            if (colon <= 0) continue;
            var name = h[..colon].Trim();
            var value = h[(colon + 1)..].Trim();
            headers[name] = headers.TryGetValue(name, out var prev) ? prev + ", " + value : value;
        }
        long? length = headers.TryGetValue("Content-Length", out var cl) && long.TryParse(cl, out var l) && l >= 0 ? l : null;
        string method = parts[0].ToUpperInvariant();
        var target = parts[1];
        int q = target.IndexOf('?');
        string path = Uri.UnescapeDataString(q < 0 ? target : target[..q]);
        var query = new Dictionary<string, string>(StringComparer.Ordinal);
        if (q >= 0)
            foreach (var pair in target[(q + 1)..].Split('&', StringSplitOptions.RemoveEmptyEntries))
            {
                int eq = pair.IndexOf('=');
                var k = Uri.UnescapeDataString((eq < 0 ? pair : pair[..eq]).Replace('+', ' '));
                var v = eq < 0 ? "" : Uri.UnescapeDataString(pair[(eq + 1)..].Replace('+', ' '));
                query.TryAdd(k, v);
            }
        // Without Content-Length only PUT/POST bodies run to connection close; other methods have none.
        long? bodyLength = length ?? (method is "PUT" or "POST" ? null : 0);
        return new HttpRequest
        {
            Method = method, Target = target, Path = path, Query = query, Version = parts[2], Headers = headers,
            Body = new RequestBodyStream(reader, bodyLength), ContentLength = length,
            IsHttps = isHttps, LocalEndPoint = local, RemoteEndPoint = remote,
        };
    }

    public async ValueTask DisposeAsync()
    {
        _stop.Cancel();
        try { _listener.Stop(); } catch (SocketException) { }
        if (_acceptLoop is not null) await _acceptLoop.ConfigureAwait(false);
        Task[] pending;
        lock (_clients)
        {
            foreach (var c in _clients) c.Dispose();
            pending = _connections.ToArray();
        }
        await Task.WhenAll(pending).ConfigureAwait(false);
        _stop.Dispose();
    }
}
