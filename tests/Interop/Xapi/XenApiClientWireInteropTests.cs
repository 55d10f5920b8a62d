using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using VProtect.Core.Xapi.Wire;
using Xunit;

namespace VProtect.Interop.Tests.Xapi;

/// <summary>
/// Our wire codec (VProtect.Core.Xapi.Wire) behind a tiny HTTP endpoint, driven by Xen Orchestra's xen-api npm client
/// over both transports: the client must log in, read a record, see a failure code and echo typed values, and our decoder
/// must read what the client sent. Fails (never skips) when node or the npm peer is missing: CI installs them.
/// </summary>
public sealed class XenApiClientWireInteropTests
{
    private sealed record Seen(string Method, object?[] Args, string Path, JsonRpcVersion? Version);

    [Theory]
    [InlineData("xml-rpc")]
    [InlineData("json-rpc")]
    public async Task Xen_orchestra_client_talks_to_our_codec(string transport)
    {
        var nodeDir = FindNodeDirectory();
        var seen = new ConcurrentQueue<Seen>();
        var port = FreePort();
        using var listener = new HttpListener();
        listener.Prefixes.Add($"http://127.0.0.1:{port}/");
        listener.Start();
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var serving = ServeAsync(listener, seen, stop.Token);

        var (exitCode, stdout, stderr) = await RunNodeAsync(nodeDir, $"http://127.0.0.1:{port}", transport, stop.Token);
        stop.Cancel();
        listener.Stop();
        await serving;

        Assert.True(exitCode == 0, $"xen-api probe failed ({exitCode}): {stderr}");
        using var doc = JsonDocument.Parse(stdout.Trim().Split('\n')[^1]);
        var o = doc.RootElement;

        // The client accepted our responses.
        Assert.Equal("OpaqueRef:session-1", o.GetProperty("sessionId").GetString());
        Assert.Equal("Interop pool", o.GetProperty("poolName").GetString());
        Assert.Equal("OpaqueRef:host-1", o.GetProperty("poolMaster").GetString());
        var record = o.GetProperty("record");
        if (transport == "xml-rpc")
        {
            Assert.Equal("10737418240", record.GetProperty("virtual_size").GetString()); // xapi style: untyped int64
            Assert.Equal("Date:1970-01-01T00:00:00.000Z", record.GetProperty("snapshot_time").GetString());
        }
        else
        {
            Assert.Equal(10737418240L, record.GetProperty("virtual_size").GetInt64());
            Assert.Equal("19700101T00:00:00Z", record.GetProperty("snapshot_time").GetString());
        }
        Assert.False(record.GetProperty("sharable").GetBoolean());
        Assert.True(record.GetProperty("cbt_enabled").GetBoolean());
        Assert.Equal(0.25, record.GetProperty("progress").GetDouble());
        Assert.Equal("p", record.GetProperty("sm_config").GetProperty("vhd-parent").GetString());
        Assert.Equal(0, record.GetProperty("VBDs").GetArrayLength());
        Assert.Equal("", record.GetProperty("name_description").GetString());
        Assert.Equal("a & <b>", record.GetProperty("name_label").GetString());
        var error = o.GetProperty("error");
        Assert.Equal("VM_BAD_POWER_STATE", error.GetProperty("code").GetString());
        Assert.Equal(new[] { "OpaqueRef:vm-1", "halted", "running" }, error.GetProperty("params").EnumerateArray().Select(e => e.GetString()));

        // We decoded what the client sent.
        var calls = seen.ToArray();
        var login = Assert.Single(calls, c => c.Method == "session.login_with_password");
        Assert.Equal(new object?[] { "root", "p<a>ss&\"word" }, login.Args);
        var echo = Assert.Single(calls, c => c.Method == "test.echo");
        Assert.Equal("OpaqueRef:session-1", echo.Args[0]);
        if (transport == "xml-rpc")
        {
            Assert.Equal("/xmlrpc", echo.Path); // XO posts XML-RPC to /xmlrpc; xapi's longest-prefix routing sends it to XML-RPC
            Assert.Equal("42", echo.Args[1]);   // XO turns integers into strings, as xapi wants
            // XO's _prepareXmlRpcParams walks a Date's (zero) own keys, so it sends an empty struct: know this when reading XO requests.
            Assert.Empty(Assert.IsType<Dictionary<string, object?>>(echo.Args[6]));
        }
        else
        {
            Assert.Equal("/jsonrpc", echo.Path);
            Assert.Equal(JsonRpcVersion.V2, echo.Version);
            Assert.Equal(42L, echo.Args[1]);
            Assert.Equal("1970-01-01T00:00:00.000Z", echo.Args[6]);
        }
        Assert.Equal(1.5, echo.Args[2]);
        Assert.Equal(true, echo.Args[3]);
        Assert.Equal(new object?[] { "a", "" }, echo.Args[4]);
        var map = Assert.IsType<Dictionary<string, object?>>(echo.Args[5]);
        Assert.Equal("v", map["k"]);
        Assert.Equal("tab\there & <b>", echo.Args[7]);
        var echoed = o.GetProperty("echo");
        Assert.Equal(7, echoed.GetArrayLength());
        Assert.Equal("tab\there & <b>", echoed[6].GetString());
        Assert.Equal("42", echoed[0].ToString()); // untyped over XML-RPC, a number over JSON
        Assert.Equal(transport == "xml-rpc" ? JsonValueKind.String : JsonValueKind.Number, echoed[0].ValueKind);
    }

    private static async Task ServeAsync(HttpListener listener, ConcurrentQueue<Seen> seen, CancellationToken ct)
    {
        while (!ct.IsCancellationRequested)
        {
            HttpListenerContext context;
            try { context = await listener.GetContextAsync().WaitAsync(ct); }
            catch (Exception) { return; }
            try
            {
                await HandleAsync(context, seen);
            }
            catch (Exception ex)
            {
                context.Response.StatusCode = 500;
                var bytes = Encoding.UTF8.GetBytes(ex.Message);
                await context.Response.OutputStream.WriteAsync(bytes, CancellationToken.None);
                context.Response.Close();
            }
        }
    }

    private static async Task HandleAsync(HttpListenerContext context, ConcurrentQueue<Seen> seen)
    {
        string body;
        using (var reader = new StreamReader(context.Request.InputStream, Encoding.UTF8)) body = await reader.ReadToEndAsync();
        var path = context.Request.Url!.AbsolutePath;
        string answer;
        string contentType;
        if (path == "/jsonrpc")
        {
            var request = JsonRpc.DecodeRequest(body);
            seen.Enqueue(new Seen(request.Method, request.Args, path, request.Version));
            var result = Dispatch(request.Method, request.Args);
            answer = result.Success ? JsonRpc.EncodeSuccess(result.Value, request.Id, request.Version) : JsonRpc.EncodeFailure(result.ErrorDescription!, request.Id, request.Version);
            contentType = "application/json";
        }
        else
        {
            var call = XmlRpc.DecodeMethodCall(body);
            seen.Enqueue(new Seen(call.Method, call.Args, path, null));
            var result = Dispatch(call.Method, call.Args);
            answer = result.Success ? XmlRpc.EncodeSuccess(result.Value) : XmlRpc.EncodeFailure(result.ErrorDescription!);
            contentType = "text/xml"; // exactly: xen-api compares the header verbatim
        }
        var bytes = Encoding.UTF8.GetBytes(answer);
        context.Response.ContentType = contentType;
        context.Response.ContentLength64 = bytes.Length;
        await context.Response.OutputStream.WriteAsync(bytes);
        context.Response.Close();
    }

    private static XapiResult Dispatch(string method, object?[] args) => method switch
    {
        "session.login_with_password" => new(true, "OpaqueRef:session-1", null),
        "session.logout" => new(true, "", null),
        "pool.get_all_records" => new(true, new Dictionary<string, object?>
        {
            ["OpaqueRef:pool-1"] = new Dictionary<string, object?>
            {
                ["uuid"] = "p-1", ["name_label"] = "Interop pool", ["master"] = "OpaqueRef:host-1",
                ["other_config"] = new Dictionary<string, object?>(),
            },
        }, null),
        "system.listMethods" => new(true, new object?[] { "VM.get_all_records", "VDI.get_all_records", "pool.get_all_records" }, null),
        "VDI.get_record" => new(true, new Dictionary<string, object?>
        {
            ["uuid"] = "v-1", ["name_label"] = "a & <b>", ["name_description"] = "", ["virtual_size"] = 10737418240L,
            ["sharable"] = false, ["cbt_enabled"] = true, ["progress"] = 0.25, ["snapshot_time"] = DateTime.UnixEpoch,
            ["sm_config"] = new Dictionary<string, object?> { ["vhd-parent"] = "p" }, ["VBDs"] = Array.Empty<object?>(),
        }, null),
        "VM.start" => new(false, null, new[] { "VM_BAD_POWER_STATE", "OpaqueRef:vm-1", "halted", "running" }),
        "test.echo" => new(true, args.Skip(1).ToArray(), null),
        _ => new(false, null, new[] { "MESSAGE_METHOD_UNKNOWN", method }),
    };

    private static async Task<(int ExitCode, string Stdout, string Stderr)> RunNodeAsync(string nodeDir, string url, string transport, CancellationToken ct)
    {
        var start = new ProcessStartInfo("node")
        {
            WorkingDirectory = nodeDir,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(Path.Combine(nodeDir, "xapi-wire-probe.mjs"));
        start.ArgumentList.Add(url);
        start.ArgumentList.Add(transport);
        Process process;
        try
        {
            process = Process.Start(start) ?? throw new InvalidOperationException("node did not start");
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            throw new InvalidOperationException("node (Node.js 18+) is required for this interop test; install it (CI does, see .ci/run).", ex);
        }
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync(ct);
            var stderr = process.StandardError.ReadToEndAsync(ct);
            try
            {
                await process.WaitForExitAsync(ct);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                throw;
            }
            return (process.ExitCode, await stdout, await stderr);
        }
    }

    private static string FindNodeDirectory()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "tests", "Interop", "node");
            if (File.Exists(Path.Combine(candidate, "package.json")))
            {
                Assert.True(Directory.Exists(Path.Combine(candidate, "node_modules", "xen-api")),
                    $"The npm peer xen-api is missing: run 'npm ci' in {candidate} (CI does).");
                return candidate;
            }
        }
        throw new InvalidOperationException("tests/Interop/node not found above " + AppContext.BaseDirectory);
    }

    private static int FreePort()
    {
        var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        var port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }
}
