using System.Net.Sockets;
using System.Text;
using VProtect.Simulator.Http;

namespace VProtect.Simulator.Tests;

public sealed class HttpServerTests
{
    private static async Task<string> ExchangeAsync(Uri url, string request, bool readToEnd = true)
    {
        using var tcp = new TcpClient();
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await tcp.ConnectAsync(url.Host, url.Port, cts.Token);
        var stream = tcp.GetStream();
        await stream.WriteAsync(Encoding.ASCII.GetBytes(request), cts.Token);
        var sb = new StringBuilder();
        var buffer = new byte[8192];
        int n;
        while ((n = await stream.ReadAsync(buffer, cts.Token)) > 0) sb.Append(Encoding.UTF8.GetString(buffer, 0, n));
        return sb.ToString();
    }

    private static string Post(string path, string body, string version = "HTTP/1.1", string connection = "keep-alive")
        => $"POST {path} {version}\r\nHost: x\r\nContent-Type: text/xml\r\nConnection: {connection}\r\nContent-Length: {Encoding.UTF8.GetByteCount(body)}\r\n\r\n{body}";

    [Fact]
    public async Task Keep_alive_serves_pipelined_requests_and_close_ends_the_connection()
    {
        await using var h = await SimHandle.StartAsync("empty");
        var login = Core.Xapi.Wire.XmlRpc.EncodeMethodCall("session.login_with_password", [h.Sim.User, h.Sim.Password]);
        // Two requests in one write: both answered on one connection, then the server closes after the second.
        var text = await ExchangeAsync(h.Sim.Url, Post("/", login) + Post("/RPC2", login, connection: "close"));
        Assert.Equal(2, text.Split("HTTP/1.1 200 OK").Length - 1);
        Assert.Equal(2, text.Split("OpaqueRef:").Length - 1);
        Assert.Contains("Connection: close", text);
    }

    [Fact]
    public async Task Rpc_without_content_length_is_411_not_a_hang()
    {
        await using var h = await SimHandle.StartAsync("empty");
        var text = await ExchangeAsync(h.Sim.Url, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        Assert.StartsWith("HTTP/1.1 411", text);
    }

    [Fact]
    public async Task Http_1_0_gets_a_1_0_answer_and_a_close()
    {
        await using var h = await SimHandle.StartAsync("empty");
        var login = Core.Xapi.Wire.XmlRpc.EncodeMethodCall("session.login_with_password", [h.Sim.User, h.Sim.Password]);
        var text = await ExchangeAsync(h.Sim.Url, Post("/", login, "HTTP/1.0", "close"));
        Assert.StartsWith("HTTP/1.0 200 OK", text);
        Assert.Contains("Content-Type: text/xml", text);
    }

    [Fact]
    public async Task Added_routes_win_by_longest_prefix_and_may_stream_without_length()
    {
        await using var h = await SimHandle.StartAsync("empty");
        h.Sim.Routes.Add("GET", "/import", (ex, ct) => ex.RespondTextAsync(200, "OK", "text/plain", "import", ct));
        h.Sim.Routes.Add("GET", "/import_raw_vdi", async (ex, ct) =>
        {
            await ex.WriteHeadAsync(200, "OK", [new("Content-Type", "application/octet-stream"), new("task-id", "OpaqueRef:t")], ct);
            for (int i = 0; i < 3; i++) await ex.ResponseBody.WriteAsync(Encoding.ASCII.GetBytes($"chunk{i};" + ex.Request.QueryOrCookie("session_id")), ct);
        });
        var raw = await ExchangeAsync(h.Sim.Url, "GET /import_raw_vdi?x=1 HTTP/1.1\r\nHost: x\r\nCookie: a=b; session_id=OpaqueRef:s\r\n\r\n");
        Assert.StartsWith("HTTP/1.1 200 OK", raw);
        Assert.DoesNotContain("Content-Length", raw);
        Assert.Contains("Connection: close", raw);
        Assert.EndsWith("chunk0;OpaqueRef:schunk1;OpaqueRef:schunk2;OpaqueRef:s", raw);
        var short_ = await ExchangeAsync(h.Sim.Url, "GET /import?vdi=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        Assert.EndsWith("\r\n\r\nimport", short_);
        var missing = await ExchangeAsync(h.Sim.Url, "GET /nothing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        Assert.StartsWith("HTTP/1.1 404", missing);
    }

    [Fact]
    public void Route_table_picks_the_longest_prefix()
    {
        var t = new RouteTable();
        HttpHandler a = (_, _) => Task.CompletedTask, b = (_, _) => Task.CompletedTask, c = (_, _) => Task.CompletedTask;
        t.Add("PUT", "/import", a);
        t.Add("PUT", "/import_raw_vdi", b);
        t.Add("*", "/", c);
        Assert.Same(b, t.Find("PUT", "/import_raw_vdi"));
        Assert.Same(a, t.Find("PUT", "/import"));
        Assert.Same(a, t.Find("PUT", "/import_metadata"));
        Assert.Same(c, t.Find("GET", "/import"));
    }
}
