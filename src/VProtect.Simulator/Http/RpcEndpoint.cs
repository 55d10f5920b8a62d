using System.Text;
using VProtect.Core.Xapi.Wire;
using VProtect.Simulator.Xapi;

namespace VProtect.Simulator.Http;

/// <summary>
/// XML-RPC (POST /, /RPC2 and any unmatched POST) and JSON-RPC (POST /jsonrpc) in front of the dispatcher.
/// API errors are HTTP 200 with a Failure body; a malformed body is HTTP 500 with an HTML page (wire-protocol.md).
/// </summary>
internal sealed class RpcEndpoint
{
    private const int MaxBodyBytes = 64 * 1024 * 1024;
    private static readonly KeyValuePair<string, string>[] Cors = [new("Access-Control-Allow-Origin", "*")];
    private readonly SimulatorCore _core;

    public RpcEndpoint(SimulatorCore core) => _core = core;

    public void AddRoutes(RouteTable routes)
    {
        routes.Add("POST", "/", XmlRpcAsync);
        routes.Add("POST", "/RPC2", XmlRpcAsync);
        routes.Add("POST", "/jsonrpc", JsonRpcAsync);
        routes.Fallback = XmlRpcAsync;
    }

    private async Task XmlRpcAsync(HttpExchange ex, CancellationToken ct)
    {
        var body = await ReadBodyAsync(ex, ct).ConfigureAwait(false);
        if (body is null) return;
        XapiCall call;
        try { call = XmlRpc.DecodeMethodCall(body); }
        catch (XapiWireException e)
        {
            await ex.RespondErrorAsync(500, "Internal Server Error", $"Xmlrpc.Parse_error({e.Message})", ct).ConfigureAwait(false);
            return;
        }
        string response;
        try { response = XmlRpc.EncodeSuccess(await InvokeAsync(ex, call.Method, call.Args, ct).ConfigureAwait(false)); }
        catch (XapiError e) { response = XmlRpc.EncodeFailure(e.ErrorDescription); }
        catch (Exception e) when (e is not OperationCanceledException) { response = XmlRpc.EncodeFailure(["INTERNAL_ERROR", e.Message]); }
        await ex.RespondTextAsync(200, "OK", "text/xml", response, ct, Cors).ConfigureAwait(false);
    }

    private async Task JsonRpcAsync(HttpExchange ex, CancellationToken ct)
    {
        var body = await ReadBodyAsync(ex, ct).ConfigureAwait(false);
        if (body is null) return;
        JsonRpcRequest request;
        try { request = JsonRpc.DecodeRequest(body); }
        catch (XapiWireException e)
        {
            await ex.RespondErrorAsync(500, "Internal Server Error", $"Jsonrpc.Malformed_method_request({e.Message})", ct).ConfigureAwait(false);
            return;
        }
        string response;
        try { response = JsonRpc.EncodeSuccess(await InvokeAsync(ex, request.Method, request.Args, ct).ConfigureAwait(false), request.Id, request.Version); }
        catch (XapiError e) { response = JsonRpc.EncodeFailure(e.ErrorDescription, request.Id, request.Version); }
        catch (Exception e) when (e is not OperationCanceledException) { response = JsonRpc.EncodeFailure(["INTERNAL_ERROR", e.Message], request.Id, request.Version); }
        await ex.RespondTextAsync(200, "OK", "application/json", response, ct, Cors).ConfigureAwait(false);
    }

    private Task<object?> InvokeAsync(HttpExchange ex, string method, object?[] args, CancellationToken ct)
        => _core.Dispatcher.InvokeAsync(method, args, ex.Host as CallOrigin ?? CallOrigin.Internal, ct);

    private static async Task<string?> ReadBodyAsync(HttpExchange ex, CancellationToken ct)
    {
        if (ex.Request.ContentLength is null)
        {
            // Without a length the body would only end when the client closes; RPC clients always send one.
            await ex.RespondErrorAsync(411, "Length Required", "RPC requests need a Content-Length.", ct).ConfigureAwait(false);
            ex.KeepAlive = false;
            return null;
        }
        if (ex.Request.ContentLength is > MaxBodyBytes)
        {
            await ex.RespondErrorAsync(413, "Request Entity Too Large", "RPC bodies are limited to 64 MiB.", ct).ConfigureAwait(false);
            ex.KeepAlive = false;
            return null;
        }
        using var ms = new MemoryStream();
        var buffer = new byte[16 * 1024];
        int n;
        while ((n = await ex.Request.Body.ReadAsync(buffer, ct).ConfigureAwait(false)) > 0)
        {
            ms.Write(buffer, 0, n);
            if (ms.Length > MaxBodyBytes) throw new InvalidDataException("RPC body too large.");
        }
        return Encoding.UTF8.GetString(ms.GetBuffer(), 0, (int)ms.Length);
    }
}
