using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Text;
using VProtect.Core.Xapi.Wire;

namespace VProtect.Core.Xapi.Transport;

/// <summary>Sends one XAPI call over HTTP(S) in the chosen protocol and returns the decoded result.</summary>
internal sealed class RpcTransport : IDisposable
{
    private readonly HttpClient _http;
    private readonly CertificatePolicy _certificates;
    private readonly TimeSpan _timeout;
    private long _nextId;

    public RpcTransport(Uri hostUrl, XapiProtocol protocol, XapiConnectionOptions options)
    {
        HostUrl = hostUrl;
        Protocol = protocol;
        _timeout = options.Timeout;
        _certificates = new CertificatePolicy(options);
        var handler = new SocketsHttpHandler
        {
            AllowAutoRedirect = false,
            UseCookies = false,
            UseProxy = false,
            AutomaticDecompression = DecompressionMethods.None,
            PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
            ConnectTimeout = options.Timeout,
            SslOptions = { RemoteCertificateValidationCallback = _certificates.Validate },
        };
        _http = new HttpClient(handler) { Timeout = System.Threading.Timeout.InfiniteTimeSpan };
    }

    public Uri HostUrl { get; }
    public XapiProtocol Protocol { get; set; }

    /// <summary>JSON-RPC flavour: V1 until login tells us the host is new enough for V2 (as the C# SDK does).</summary>
    public JsonRpcVersion JsonVersion { get; set; } = JsonRpcVersion.V1;

    internal CertificatePolicy Certificates => _certificates;

    public Uri Endpoint => new(HostUrl, Protocol == XapiProtocol.JsonRpc ? "/jsonrpc" : "/");

    public async Task<XapiResult> InvokeAsync(string method, IReadOnlyList<object?> args, CancellationToken cancellationToken)
    {
        var endpoint = Endpoint;
        string body;
        string mediaType;
        if (Protocol == XapiProtocol.JsonRpc)
        {
            body = JsonRpc.EncodeRequest(method, args, Interlocked.Increment(ref _nextId), JsonVersion);
            mediaType = "application/json";
        }
        else
        {
            body = XmlRpc.EncodeMethodCall(method, args);
            mediaType = "text/xml";
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(_timeout);
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, endpoint)
            {
                Content = new StringContent(body, Encoding.UTF8, mediaType),
            };
            request.Headers.UserAgent.Add(new ProductInfoHeaderValue("VProtect", "1.0"));
            using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token).ConfigureAwait(false);
            if (response.StatusCode != HttpStatusCode.OK)
            {
                var text = await SafeReadAsync(response, timeout.Token).ConfigureAwait(false);
                throw new XapiConnectionException(
                    $"{endpoint} answered {(int)response.StatusCode} {response.ReasonPhrase} to {method}: {text}. " +
                    (Protocol == XapiProtocol.JsonRpc && response.StatusCode == HttpStatusCode.NotFound
                        ? "The host may not support JSON-RPC; connect with the XmlRpc protocol."
                        : "Check that the URL points at a XenServer/XCP-ng pool master."),
                    endpoint, null, (int)response.StatusCode);
            }
            if (Protocol == XapiProtocol.JsonRpc && !IsJson(response.Content.Headers.ContentType))
                throw new XapiConnectionException(
                    $"{endpoint} answered {method} with content type '{response.Content.Headers.ContentType}', not JSON; the host may not support JSON-RPC (use the XmlRpc protocol).",
                    endpoint, null, (int)response.StatusCode);

            await using var stream = await response.Content.ReadAsStreamAsync(timeout.Token).ConfigureAwait(false);
            // Buffer into a pooled-free MemoryStream: the decoders need the whole document, and responses are metadata-sized.
            using var buffer = new MemoryStream();
            await CopyBoundedAsync(stream, buffer, endpoint, method, timeout.Token).ConfigureAwait(false);
            buffer.Position = 0;
            try
            {
                return Protocol == XapiProtocol.JsonRpc ? JsonRpc.DecodeResponse(buffer) : XmlRpc.DecodeResponse(buffer);
            }
            catch (XapiWireException ex)
            {
                throw new XapiConnectionException($"{endpoint} sent an unreadable answer to {method}: {ex.Message}", endpoint, ex);
            }
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new XapiConnectionException(
                $"{endpoint} did not answer {method} within {_timeout.TotalSeconds:0.#} s; check the host is up or raise the timeout.", endpoint);
        }
        catch (HttpRequestException ex)
        {
            throw new XapiConnectionException(DescribeFailure(endpoint, ex), endpoint, ex);
        }
    }

    /// <summary>Largest RPC answer accepted; a pool's get_all_records is megabytes, so this only stops a runaway peer.</summary>
    internal const long MaxResponseBytes = 512L * 1024 * 1024;

    private static async Task CopyBoundedAsync(Stream source, MemoryStream destination, Uri endpoint, string method, CancellationToken ct)
    {
        var buffer = System.Buffers.ArrayPool<byte>.Shared.Rent(81920);
        try
        {
            int n;
            while ((n = await source.ReadAsync(buffer, ct).ConfigureAwait(false)) > 0)
            {
                if (destination.Length + n > MaxResponseBytes)
                    throw new XapiConnectionException($"{endpoint} sent more than {MaxResponseBytes >> 20} MiB in answer to {method}; refusing to buffer it.", endpoint);
                destination.Write(buffer, 0, n);
            }
        }
        finally
        {
            System.Buffers.ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private string DescribeFailure(Uri endpoint, HttpRequestException ex)
    {
        if (ex.InnerException is AuthenticationException || ex.HttpRequestError == HttpRequestError.SecureConnectionError)
            return $"TLS with {endpoint} failed: {_certificates.LastRejection ?? ex.Message}.";
        if (ex.InnerException is SocketException se)
            return se.SocketErrorCode switch
            {
                SocketError.ConnectionRefused => $"{endpoint} refused the connection; check the address and that xapi is running.",
                SocketError.HostNotFound or SocketError.NoData => $"The host name in {endpoint} could not be resolved; check the URL.",
                _ => $"Could not connect to {endpoint}: {se.Message}.",
            };
        return $"Could not call {endpoint}: {ex.Message}.";
    }

    private static bool IsJson(MediaTypeHeaderValue? contentType) =>
        contentType?.MediaType is { } m && (m.Equals("application/json", StringComparison.OrdinalIgnoreCase) || m.EndsWith("+json", StringComparison.OrdinalIgnoreCase));

    private static async Task<string> SafeReadAsync(HttpResponseMessage response, CancellationToken ct)
    {
        try
        {
            var text = await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
            text = text.ReplaceLineEndings(" ").Trim();
            return text.Length <= 200 ? text : text[..200] + "…";
        }
        catch (Exception) when (!ct.IsCancellationRequested)
        {
            return "(no readable body)";
        }
    }

    public void Dispose() => _http.Dispose();
}
