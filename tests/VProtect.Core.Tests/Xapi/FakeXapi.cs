using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography.X509Certificates;
using System.Text;
using VProtect.Core.Xapi.Wire;

namespace VProtect.Core.Tests.Xapi;

internal sealed record RecordedCall(string Method, object?[] Args, string Path, JsonRpcVersion? JsonVersion);

/// <summary>
/// An in-process XAPI endpoint built on <see cref="FakeHttpServer"/>: decodes XML-RPC on "/" and JSON-RPC on "/jsonrpc"
/// with the real codec, records every call and answers from per-method handlers, in xapi's wire shapes.
/// Other paths go to <see cref="HttpHandler"/> (transfer tests).
/// </summary>
internal sealed class FakeXapi : IAsyncDisposable
{
    public const string PoolRef = "OpaqueRef:pool-1";
    public const string MasterRef = "OpaqueRef:host-1";

    private readonly FakeHttpServer _server;
    private int _sessionCounter;

    public FakeXapi(X509Certificate2? certificate = null, IPAddress? address = null, int port = 0)
    {
        _server = new FakeHttpServer(HandleAsync, certificate, address, port);
    }

    public Uri Url => _server.Url;
    public int Port => _server.Port;
    public ConcurrentQueue<RecordedCall> Calls { get; } = new();
    public ConcurrentDictionary<string, Func<object?[], XapiResult>> Methods { get; } = new(StringComparer.Ordinal);
    public HashSet<string> ValidSessions { get; } = new();
    public List<Exception> HandlerErrors => _server.HandlerErrors;

    /// <summary>Handles non-RPC requests; return true to keep the connection.</summary>
    public Func<FakeHttpRequest, CancellationToken, Task<bool>>? HttpHandler { get; set; }

    public string PoolName { get; set; } = "Fake pool";
    public long ApiMajor { get; set; } = 2;
    public long ApiMinor { get; set; } = 21;

    public static XapiResult Ok(object? value) => new(true, value, null);
    public static XapiResult Fail(params string[] description) => new(false, null, description);

    public IEnumerable<string> MethodNames => Calls.Select(c => c.Method);

    /// <summary>Login, the post-login reads and logout, with session checking like xapi.</summary>
    public FakeXapi WithStandardPool(string user = "root", string password = "secret")
    {
        Methods["session.login_with_password"] = args =>
        {
            if (args.Length < 2 || (string?)args[0] != user || (string?)args[1] != password)
                return Fail("SESSION_AUTHENTICATION_FAILED", (string?)args.ElementAtOrDefault(0) ?? "", "Authentication failure");
            var s = $"OpaqueRef:session-{Interlocked.Increment(ref _sessionCounter)}";
            lock (ValidSessions) ValidSessions.Add(s);
            return Ok(s);
        };
        Methods["session.logout"] = args => { lock (ValidSessions) ValidSessions.Remove((string)args[0]!); return Ok(""); };
        Methods["pool.get_all_records"] = _ => Ok(new Dictionary<string, object?>
        {
            [PoolRef] = new Dictionary<string, object?>
            {
                ["uuid"] = "0f6ad4a7-0000-0000-0000-000000000001", ["name_label"] = PoolName, ["master"] = MasterRef,
                ["default_SR"] = "OpaqueRef:sr-1", ["restrictions"] = new Dictionary<string, object?>(),
            },
        });
        Methods["host.get_record"] = args => (string?)args[1] == MasterRef
            ? Ok(new Dictionary<string, object?>
            {
                ["uuid"] = "5b5e2a9c-0000-0000-0000-000000000001", ["hostname"] = "xs-master", ["address"] = "127.0.0.1",
                ["API_version_major"] = ApiMajor, ["API_version_minor"] = ApiMinor, // int64: string on XML-RPC, number on JSON
            })
            : Fail("HANDLE_INVALID", "host", (string?)args[1] ?? "");
        Methods["session.get_is_local_superuser"] = _ => Ok(true);
        return this;
    }

    public ConcurrentDictionary<string, Dictionary<string, object?>> Tasks { get; } = new(StringComparer.Ordinal);
    private int _taskCounter;

    /// <summary>task.create/get_record/cancel/destroy over <see cref="Tasks"/>, as xapi keeps them.</summary>
    public FakeXapi WithTasks()
    {
        Methods["task.create"] = args =>
        {
            var t = $"OpaqueRef:task-{Interlocked.Increment(ref _taskCounter)}";
            Tasks[t] = new Dictionary<string, object?>
            {
                ["uuid"] = Guid.NewGuid().ToString(), ["name_label"] = args[1], ["status"] = "pending", ["progress"] = 0.0,
                ["result"] = "", ["error_info"] = Array.Empty<object?>(),
            };
            return Ok(t);
        };
        Methods["task.get_record"] = args =>
        {
            if (!Tasks.TryGetValue((string)args[1]!, out var r)) return Fail("HANDLE_INVALID", "task", (string)args[1]!);
            lock (r) return Ok(new Dictionary<string, object?>(r));
        };
        Methods["task.cancel"] = args =>
        {
            if (!Tasks.TryGetValue((string)args[1]!, out var r)) return Fail("HANDLE_INVALID", "task", (string)args[1]!);
            lock (r)
                if ((string?)r["status"] == "pending") { r["status"] = "cancelled"; r["error_info"] = new object?[] { "TASK_CANCELLED", args[1] }; }
            return Ok("");
        };
        Methods["task.destroy"] = args => Tasks.TryRemove((string)args[1]!, out _) ? Ok("") : Fail("HANDLE_INVALID", "task", (string)args[1]!);
        return this;
    }

    public void CompleteTask(string taskRef, string resultXml)
    {
        var r = Tasks[taskRef];
        lock (r)
        {
            r["result"] = resultXml;
            r["progress"] = 1.0;
            r["status"] = "success";
        }
    }

    public void FailTask(string taskRef, params string[] errorInfo)
    {
        var r = Tasks[taskRef];
        lock (r)
        {
            r["error_info"] = errorInfo.Cast<object?>().ToArray();
            r["progress"] = 1.0;
            r["status"] = "failure";
        }
    }

    public void InvalidateAllSessions()
    {
        lock (ValidSessions) ValidSessions.Clear();
    }

    private static readonly HashSet<string> SessionlessMethods = new(StringComparer.Ordinal) { "session.login_with_password" };

    private XapiResult Dispatch(string method, object?[] args)
    {
        if (!SessionlessMethods.Contains(method))
        {
            var session = args.Length > 0 ? args[0] as string : null;
            bool valid;
            lock (ValidSessions) valid = session is not null && ValidSessions.Contains(session);
            if (!valid) return Fail("SESSION_INVALID", session ?? "");
        }
        return Methods.TryGetValue(method, out var handler) ? handler(args) : Fail("MESSAGE_METHOD_UNKNOWN", method);
    }

    private async Task<bool> HandleAsync(FakeHttpRequest request, CancellationToken ct)
    {
        var isRpc = request.Method == "POST" && (request.Path == "/" || request.Path == "/jsonrpc");
        if (!isRpc)
        {
            if (HttpHandler is null)
            {
                await FakeHttpServer.WriteResponseAsync(request.Connection, 404, "Not Found", new[] { ("Connection", "close") }, Array.Empty<byte>(), ct);
                return false;
            }
            return await HttpHandler(request, ct);
        }

        var body = Encoding.UTF8.GetString(await request.ReadBodyAsync(ct));
        string responseBody;
        string contentType;
        try
        {
            if (request.Path == "/jsonrpc")
            {
                var call = JsonRpc.DecodeRequest(body);
                Calls.Enqueue(new RecordedCall(call.Method, call.Args, request.Path, call.Version));
                var result = Dispatch(call.Method, call.Args);
                responseBody = result.Success
                    ? JsonRpc.EncodeSuccess(result.Value, call.Id, call.Version)
                    : JsonRpc.EncodeFailure(result.ErrorDescription!, call.Id, call.Version);
                contentType = "application/json";
            }
            else
            {
                var call = XmlRpc.DecodeMethodCall(body);
                Calls.Enqueue(new RecordedCall(call.Method, call.Args, request.Path, null));
                var result = Dispatch(call.Method, call.Args);
                responseBody = result.Success ? XmlRpc.EncodeSuccess(result.Value) : XmlRpc.EncodeFailure(result.ErrorDescription!);
                contentType = "text/xml";
            }
        }
        catch (XapiWireException ex)
        {
            var html = Encoding.UTF8.GetBytes($"<html><body><h1>HTTP 500 internal server error</h1>{WebUtility.HtmlEncode(ex.Message)}</body></html>");
            await FakeHttpServer.WriteResponseAsync(request.Connection, 500, "Internal Server Error", new[] { ("Content-Type", "text/html"), ("Connection", "close") }, html, ct);
            return false;
        }
        await FakeHttpServer.WriteResponseAsync(request.Connection, 200, "OK",
            new[] { ("Content-Type", contentType), ("Access-Control-Allow-Origin", "*") }, Encoding.UTF8.GetBytes(responseBody), ct);
        return true;
    }

    public ValueTask DisposeAsync() => _server.DisposeAsync();
}
