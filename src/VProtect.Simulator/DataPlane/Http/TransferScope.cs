using System.Globalization;
using System.Text;
using VProtect.Simulator.Database;
using VProtect.Simulator.Faults;
using VProtect.Simulator.Http;
using VProtect.Simulator.Xapi;

namespace VProtect.Simulator.DataPlane.Http;

/// <summary>
/// What every xapi HTTP transfer handler does around its body (xapi_http.ml with_context, research xapi.md §6):
/// authenticate (session_id query/cookie, else Basic = a temporary session logged out afterwards, else 401),
/// attach to the client's task (task_id query/cookie) or make one, fail or complete that task, and send the
/// common headers (Connection: close, Cache-Control, task-id). Faults from the registry apply to the body.
/// </summary>
internal sealed class TransferScope : IAsyncDisposable
{
    private readonly SimulatorCore _core;
    private readonly bool _temporarySession;

    private TransferScope(SimulatorCore core, HttpExchange exchange, string session, bool temporary, XapiObject task)
    {
        _core = core;
        Exchange = exchange;
        Session = session;
        _temporarySession = temporary;
        Task = task;
    }

    public HttpExchange Exchange { get; }
    public HttpRequest Request => Exchange.Request;
    public string Session { get; }
    public XapiObject Task { get; }
    public CallOrigin Origin => Exchange.Host as CallOrigin ?? CallOrigin.Internal;
    public bool Finished => Task.Str("status") != "pending";

    /// <summary>Authenticates and finds or makes the task; null when a 401 was sent (the client's task is failed).</summary>
    public static async Task<TransferScope?> BeginAsync(SimulatorCore core, HttpExchange ex, string taskLabel, CancellationToken ct)
    {
        var req = ex.Request;
        string? session = req.QueryOrCookie("session_id");
        bool temporary = false;
        if (session is null || !core.Sessions.IsValid(session))
        {
            session = null;
            if (TryBasic(req, out var user, out var password) && user == core.User && password == core.Password)
            {
                // xapi logs in for the request and logs out at the end (xapi_http.ml, Basic branch).
                session = (string)(await core.Dispatcher.InvokeAsync("session.login_with_password", [user, password, "1.0", "http-basic"], CallOrigin.Internal, ct).ConfigureAwait(false))!;
                temporary = true;
            }
        }
        var clientTask = req.QueryOrCookie("task_id") is { } tid && core.Db.TryGet(tid) is { Class: "task" } t ? t : null;
        if (session is null)
        {
            if (clientTask is not null) core.Tasks.Fail(clientTask, ["SESSION_AUTHENTICATION_FAILED"]);
            await ex.RespondAsync(401, "Unauthorised", "text/html", Encoding.UTF8.GetBytes("<html><body><h1>HTTP 401 Unauthorised</h1>Authentication required.</body></html>"), ct,
                [new("WWW-Authenticate", "Basic realm=\"xapi\"")]).ConfigureAwait(false);
            ex.KeepAlive = false;
            return null;
        }
        core.Sessions.Validate(session);
        var task = clientTask ?? core.Tasks.Create(taskLabel, "", session, ex.Host as CallOrigin ?? CallOrigin.Internal);
        return new TransferScope(core, ex, session, temporary, task);
    }

    private static bool TryBasic(HttpRequest req, out string user, out string password)
    {
        user = password = "";
        var h = req.Header("Authorization");
        if (h is null || !h.StartsWith("Basic ", StringComparison.OrdinalIgnoreCase)) return false;
        string decoded;
        try { decoded = Encoding.UTF8.GetString(Convert.FromBase64String(h[6..].Trim())); }
        catch (FormatException) { return false; }
        int colon = decoded.IndexOf(':');
        if (colon < 0) return false;
        user = decoded[..colon];
        password = decoded[(colon + 1)..];
        return true;
    }

    /// <summary>Headers every transfer answer carries (http.ml http_200_ok ~keep_alive:false, plus task-id).</summary>
    public List<KeyValuePair<string, string>> Headers(string? contentType, string? filename = null)
    {
        var h = new List<KeyValuePair<string, string>>
        {
            new("Connection", "close"),
            new("Cache-Control", "no-cache, no-store"),
            new("task-id", Task.Ref),
        };
        if (contentType is not null) h.Add(new("Content-Type", contentType));
        if (filename is not null) h.Add(new("Content-Disposition", $"attachment; filename=\"{filename}\""));
        return h;
    }

    /// <summary>Fails the task and, when no head was sent yet, answers the status xapi uses for that error.</summary>
    public async Task FailAsync(int status, string reason, string[] errorInfo, CancellationToken ct)
    {
        _core.Tasks.Fail(Task, errorInfo);
        if (Exchange.HeadWritten) return;
        var body = Encoding.UTF8.GetBytes($"<html><body><h1>HTTP {status} {reason}</h1>{System.Net.WebUtility.HtmlEncode(string.Join(" ", errorInfo))}</body></html>");
        var headers = Headers("text/html");
        headers.Add(new("Content-Length", body.Length.ToString(CultureInfo.InvariantCulture)));
        await Exchange.WriteHeadAsync(status, reason, headers, ct).ConfigureAwait(false);
        await Exchange.ResponseBody.WriteAsync(body, ct).ConfigureAwait(false);
    }

    public Task FailAsync(int status, string reason, XapiError error, CancellationToken ct) => FailAsync(status, reason, error.ErrorDescription, ct);

    public void Succeed(object? result) => _core.Tasks.Succeed(Task, result);

    public void Progress(double fraction) => _core.Tasks.SetProgress(Task.Ref, fraction);

    /// <summary>The response body with the registry's HTTP faults applied (drop after B bytes, latency per write).</summary>
    public Stream FaultedResponse() => new FaultInjectingStream(Exchange.ResponseBody, _core.Faults, TransferChannel.Http);

    /// <summary>The request body with the registry's HTTP faults applied.</summary>
    public Stream FaultedRequest() => new FaultInjectingStream(Request.Body, _core.Faults, TransferChannel.Http);

    /// <summary>A method fault registered for this HTTP action (e.g. "http/get_export") fails the transfer.</summary>
    public void ThrowIfFault(string action) => _core.Faults.ThrowIfXapiFault(action);

    public async ValueTask DisposeAsync()
    {
        if (_temporarySession)
        {
            try { await _core.Dispatcher.InvokeAsync("session.logout", [Session], CallOrigin.Internal, CancellationToken.None).ConfigureAwait(false); }
            catch (XapiError) { /* already gone */ }
        }
    }
}
