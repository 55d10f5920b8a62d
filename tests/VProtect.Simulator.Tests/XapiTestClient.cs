using System.Net.Http.Headers;
using System.Text;
using VProtect.Core.Xapi.Wire;

namespace VProtect.Simulator.Tests;

public enum Protocol { XmlRpc, JsonRpcV1, JsonRpcV2 }

/// <summary>Thrown when the simulator answers a XAPI Failure.</summary>
public sealed class XapiFailure(IReadOnlyList<string> description) : Exception(string.Join(" ", description))
{
    public IReadOnlyList<string> Description { get; } = description;
    public string Code => Description[0];
}

/// <summary>
/// A minimal XAPI client over real HTTP with the project's wire codec, so every test exercises the same
/// bytes a client sends. Calls return decoded values or throw <see cref="XapiFailure"/>.
/// </summary>
public sealed class XapiTestClient : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    private readonly HttpClient _http;
    private readonly Uri _url;
    private readonly Protocol _protocol;
    private int _id;

    public XapiTestClient(Uri url, Protocol protocol = Protocol.XmlRpc, HttpMessageHandler? handler = null)
    {
        _http = handler is null ? new HttpClient() : new HttpClient(handler);
        _http.Timeout = Timeout;
        _url = url;
        _protocol = protocol;
    }

    public string? Session { get; private set; }

    public async Task<string> LoginAsync(string user, string password)
    {
        Session = (string)(await CallNoSessionAsync("session.login_with_password", user, password, "1.1", "tests"))!;
        return Session;
    }

    public Task<object?> CallAsync(string method, params object?[] args) => CallNoSessionAsync(method, [Session, .. args]);

    public async Task<object?> CallNoSessionAsync(string method, params object?[] args)
    {
        var r = await RawCallAsync(method, args);
        if (!r.Success) throw new XapiFailure(r.ErrorDescription!);
        return r.Value;
    }

    public async Task<XapiResult> RawCallAsync(string method, object?[] args)
    {
        HttpResponseMessage response;
        if (_protocol == Protocol.XmlRpc)
        {
            var body = new StringContent(XmlRpc.EncodeMethodCall(method, args), Encoding.UTF8);
            body.Headers.ContentType = new MediaTypeHeaderValue("text/xml");
            response = await _http.PostAsync(_url, body);
        }
        else
        {
            var version = _protocol == Protocol.JsonRpcV1 ? JsonRpcVersion.V1 : JsonRpcVersion.V2;
            var body = new StringContent(JsonRpc.EncodeRequest(method, args, (long)Interlocked.Increment(ref _id), version), Encoding.UTF8);
            body.Headers.ContentType = new MediaTypeHeaderValue("application/json");
            response = await _http.PostAsync(new Uri(_url, "jsonrpc"), body);
        }
        using (response)
        {
            var text = await response.Content.ReadAsStringAsync();
            if ((int)response.StatusCode != 200) throw new HttpRequestException($"HTTP {(int)response.StatusCode}: {text}");
            return _protocol == Protocol.XmlRpc ? XmlRpc.DecodeResponse(text) : JsonRpc.DecodeResponse(text);
        }
    }

    public async Task<XapiFailure> FailsAsync(string method, params object?[] args)
    {
        try { await CallAsync(method, args); }
        catch (XapiFailure f) { return f; }
        throw new Xunit.Sdk.XunitException($"{method} succeeded; a failure was expected.");
    }

    public async Task<Dictionary<string, object?>> RecordAsync(string cls, string reference)
        => (Dictionary<string, object?>)(await CallAsync($"{cls}.get_record", reference))!;

    public async Task<string> RefByNameAsync(string cls, string name)
        => (string)((object?[])(await CallAsync($"{cls}.get_by_name_label", name))!).Single()!;

    public void Dispose() => _http.Dispose();
}

/// <summary>Helpers for values that arrive untyped over XML-RPC.</summary>
public static class V
{
    public static long Long(object? v) => v switch { long l => l, string s => long.Parse(s), _ => throw new InvalidCastException($"{v} is not an int") };
    public static bool Bool(object? v) => v switch { bool b => b, string s => s is "1" or "true", _ => throw new InvalidCastException($"{v} is not a bool") };
    public static string Str(object? v) => (string)v!;
    public static object?[] Arr(object? v) => (object?[])v!;
    public static Dictionary<string, object?> Map(object? v) => (Dictionary<string, object?>)v!;
}

/// <summary>A started simulator per test (state changes never leak between tests).</summary>
public sealed class SimHandle : IAsyncDisposable
{
    private SimHandle(XenSimulator sim) => Sim = sim;
    public XenSimulator Sim { get; }

    public static async Task<SimHandle> StartAsync(string scenario = "default", string? stateDirectory = null)
        => new(await XenSimulator.StartAsync(new SimulatorOptions { Scenario = scenario, StateDirectory = stateDirectory, HttpsPort = null }));

    public async Task<XapiTestClient> LoginAsync(Protocol protocol = Protocol.XmlRpc)
    {
        var c = new XapiTestClient(Sim.Url, protocol);
        await c.LoginAsync(Sim.User, Sim.Password);
        return c;
    }

    public ValueTask DisposeAsync() => Sim.DisposeAsync();
}
