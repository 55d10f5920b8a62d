using System.Net;
using System.Net.Sockets;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;
using VProtect.Core.Xapi.Wire;
using Xunit;

namespace VProtect.Core.Tests.Xapi;

public class XapiSessionTests
{
    private static readonly TimeSpan TestTimeout = TimeSpan.FromSeconds(20);

    private static XapiConnectionOptions Options(XapiProtocol protocol) => new() { Protocol = protocol, Timeout = TimeSpan.FromSeconds(10) };

    private static CancellationToken Bounded() => new CancellationTokenSource(TestTimeout).Token;

    [Fact]
    public async Task Json_login_uses_v1_then_switches_to_v2_and_reads_pool_info()
    {
        await using var fake = new FakeXapi().WithStandardPool();
        await using (var session = await XapiSession.LoginAsync(fake.Url, "root", "secret", Options(XapiProtocol.JsonRpc), Bounded()))
        {
            Assert.StartsWith("OpaqueRef:session-", session.OpaqueRef);
            Assert.Equal("Fake pool", session.PoolName);
            Assert.Equal("xs-master", session.MasterHostName);
            Assert.Equal("127.0.0.1", session.MasterAddress);
            Assert.Equal(2, session.ApiVersionMajor);
            Assert.Equal(21, session.ApiVersionMinor);
            Assert.Equal(true, session.IsLocalSuperuser);
            Assert.Null(session.RedirectedFrom);
            Assert.Equal("root", session.UserName);

            await session.CallAsync("pool.get_all_records", Array.Empty<object?>(), Bounded());
        }

        var calls = fake.Calls.ToArray();
        Assert.All(calls, c => Assert.Equal("/jsonrpc", c.Path));
        var login = calls[0];
        Assert.Equal("session.login_with_password", login.Method);
        Assert.Equal(JsonRpcVersion.V1, login.JsonVersion);
        Assert.Equal(new object?[] { "root", "secret", "1.1", "VProtect.PowerShell" }, login.Args);
        Assert.Equal(new[] { "session.login_with_password", "pool.get_all_records", "host.get_record", "session.get_is_local_superuser", "pool.get_all_records", "session.logout" },
            calls.Select(c => c.Method));
        // API 2.21 >= 2.8: calls after the version is known go out as JSON-RPC 2.0.
        Assert.Equal(JsonRpcVersion.V2, calls[4].JsonVersion);
        Assert.Equal(JsonRpcVersion.V2, calls[5].JsonVersion);
        Assert.Equal(calls[0 + 1].Args[0], calls[5].Args[0]); // logout with the session it got
        Assert.Empty(fake.ValidSessions);
    }

    [Fact]
    public async Task Network_credential_login_sends_domain_user()
    {
        await using var fake = new FakeXapi().WithStandardPool(user: "CORP\\backup", password: "pw");
        await using var session = await XapiSession.LoginAsync(fake.Url, new System.Net.NetworkCredential("backup", "pw", "CORP"), Options(XapiProtocol.XmlRpc), Bounded());
        Assert.Equal("CORP\\backup", session.UserName);
        Assert.Equal("CORP\\backup", fake.Calls.First().Args[0]);
    }

    [Fact]
    public async Task Old_api_stays_on_json_v1()
    {
        await using var fake = new FakeXapi { ApiMajor = 2, ApiMinor = 7 }.WithStandardPool();
        await using (var session = await XapiSession.LoginAsync(fake.Url, "root", "secret", Options(XapiProtocol.JsonRpc), Bounded()))
            await session.CallAsync("pool.get_all_records", Array.Empty<object?>(), Bounded());
        Assert.All(fake.Calls, c => Assert.Equal(JsonRpcVersion.V1, c.JsonVersion));
    }

    [Fact]
    public async Task Xml_login_posts_to_root_and_parses_int64_strings()
    {
        await using var fake = new FakeXapi().WithStandardPool();
        await using var session = await XapiSession.LoginAsync(fake.Url, "root", "secret", Options(XapiProtocol.XmlRpc), Bounded());
        Assert.Equal(2, session.ApiVersionMajor);
        Assert.Equal(21, session.ApiVersionMinor);
        Assert.Equal(XapiProtocol.XmlRpc, session.Protocol);
        Assert.All(fake.Calls, c => Assert.Equal("/", c.Path));
    }

    [Theory]
    [InlineData(XapiProtocol.JsonRpc)]
    [InlineData(XapiProtocol.XmlRpc)]
    public async Task Login_falls_back_to_fewer_arguments_on_parameter_count_mismatch(XapiProtocol protocol)
    {
        await using var fake = new FakeXapi().WithStandardPool();
        var standard = fake.Methods["session.login_with_password"];
        fake.Methods["session.login_with_password"] = args => args.Length == 2
            ? standard(args)
            : FakeXapi.Fail("MESSAGE_PARAMETER_COUNT_MISMATCH", "session.login_with_password", "2", (args.Length).ToString());
        await using var session = await XapiSession.LoginAsync(fake.Url, "root", "secret", Options(protocol), Bounded());
        Assert.StartsWith("OpaqueRef:session-", session.OpaqueRef);
        var loginArgCounts = fake.Calls.Where(c => c.Method == "session.login_with_password").Select(c => c.Args.Length);
        Assert.Equal(new[] { 4, 3, 2 }, loginArgCounts);
    }

    [Fact]
    public async Task Wrong_password_is_an_xapi_exception_with_the_code()
    {
        await using var fake = new FakeXapi().WithStandardPool();
        var ex = await Assert.ThrowsAsync<XapiException>(() => XapiSession.LoginAsync(fake.Url, "root", "wrong", Options(XapiProtocol.JsonRpc), Bounded()));
        Assert.Equal("SESSION_AUTHENTICATION_FAILED", ex.ErrorCode);
        Assert.Equal(new[] { "root", "Authentication failure" }, ex.ErrorParameters);
        Assert.DoesNotContain("wrong", ex.Message);
        Assert.Single(fake.Calls); // no fallback on other errors
    }

    [Theory]
    [InlineData(XapiProtocol.JsonRpc)]
    [InlineData(XapiProtocol.XmlRpc)]
    public async Task Host_is_slave_redirects_login_to_the_master(XapiProtocol protocol)
    {
        // Master on [::1]:P, member on 127.0.0.1:P: the redirect keeps scheme and port and changes only the host.
        await using var master = new FakeXapi(address: IPAddress.IPv6Loopback).WithStandardPool();
        await using var member = new FakeXapi(address: IPAddress.Loopback, port: master.Port);
        member.Methods["session.login_with_password"] = _ => FakeXapi.Fail("HOST_IS_SLAVE", "::1");

        await using var session = await XapiSession.LoginAsync(member.Url, "root", "secret", Options(protocol), Bounded());
        Assert.Equal(member.Url, session.RedirectedFrom);
        Assert.Equal(master.Url, session.Url);
        Assert.Equal("Fake pool", session.PoolName);
        Assert.Single(member.Calls);
        Assert.Equal("session.login_with_password", master.Calls.First().Method);
    }

    [Fact]
    public async Task Redirect_loops_are_bounded()
    {
        await using var member = new FakeXapi();
        member.Methods["session.login_with_password"] = _ => FakeXapi.Fail("HOST_IS_SLAVE", "127.0.0.1");
        var ex = await Assert.ThrowsAsync<XapiException>(() => XapiSession.LoginAsync(member.Url, "root", "secret", Options(XapiProtocol.JsonRpc), Bounded()));
        Assert.Equal("HOST_IS_SLAVE", ex.ErrorCode);
        Assert.Equal(4, member.Calls.Count);
    }

    [Fact]
    public async Task Existing_session_that_is_invalid_surfaces_session_invalid()
    {
        await using var fake = new FakeXapi().WithStandardPool();
        await using var session = XapiSession.FromExisting(fake.Url, "OpaqueRef:expired", Options(XapiProtocol.JsonRpc));
        var ex = await Assert.ThrowsAsync<XapiException>(() => session.CallAsync("VM.get_all", Array.Empty<object?>(), Bounded()));
        Assert.Equal("SESSION_INVALID", ex.ErrorCode);
        Assert.Equal(new[] { "OpaqueRef:expired" }, ex.ErrorParameters);
        Assert.Equal("VM.get_all", ex.Method);
        Assert.DoesNotContain(fake.Calls, c => c.Method == "session.login_with_password");
    }

    [Fact]
    public async Task Existing_session_is_used_and_not_logged_out()
    {
        await using var fake = new FakeXapi().WithStandardPool();
        fake.ValidSessions.Add("OpaqueRef:from-sdk");
        fake.Methods["VM.get_all"] = _ => FakeXapi.Ok(new object?[] { "OpaqueRef:vm-1" });
        await using (var session = XapiSession.FromExisting(fake.Url, "OpaqueRef:from-sdk", Options(XapiProtocol.XmlRpc)))
        {
            await session.RefreshPoolInfoAsync(Bounded());
            Assert.Equal("Fake pool", session.PoolName);
            Assert.Equal(new object?[] { "OpaqueRef:vm-1" }, await session.CallAsync("VM.get_all", Array.Empty<object?>(), Bounded()));
            Assert.Null(session.UserName);
        }
        Assert.DoesNotContain(fake.Calls, c => c.Method == "session.logout");
        Assert.Contains("OpaqueRef:from-sdk", fake.ValidSessions);
    }

    [Fact]
    public async Task Expired_session_with_credentials_logs_in_again_and_retries_once()
    {
        await using var fake = new FakeXapi().WithStandardPool();
        fake.Methods["VM.get_all"] = _ => FakeXapi.Ok(Array.Empty<object?>());
        await using var session = await XapiSession.LoginAsync(fake.Url, "root", "secret", Options(XapiProtocol.JsonRpc), Bounded());
        var first = session.OpaqueRef;
        fake.InvalidateAllSessions();

        await session.CallAsync("VM.get_all", Array.Empty<object?>(), Bounded());

        Assert.NotEqual(first, session.OpaqueRef);
        var vmCalls = fake.Calls.Where(c => c.Method == "VM.get_all").ToArray();
        Assert.Equal(2, vmCalls.Length);
        Assert.Equal(first, vmCalls[0].Args[0]);
        Assert.Equal(session.OpaqueRef, vmCalls[1].Args[0]);
    }

    [Fact]
    public async Task Concurrent_calls_on_an_expired_session_log_in_again_only_once()
    {
        await using var fake = new FakeXapi().WithStandardPool();
        fake.Methods["VM.get_all"] = _ => FakeXapi.Ok(Array.Empty<object?>());
        await using var session = await XapiSession.LoginAsync(fake.Url, "root", "secret", Options(XapiProtocol.XmlRpc), Bounded());
        fake.InvalidateAllSessions();

        await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => session.CallAsync("VM.get_all", Array.Empty<object?>(), Bounded())));

        Assert.Equal(2, fake.Calls.Count(c => c.Method == "session.login_with_password"));
        // Every call succeeded exactly once, on the one new session.
        Assert.Equal(8, fake.Calls.Count(c => c.Method == "VM.get_all" && (string?)c.Args[0] == session.OpaqueRef));
        Assert.Contains(session.OpaqueRef, fake.ValidSessions);
    }

    [Fact]
    public async Task Concurrent_json_calls_get_distinct_ids_and_answers()
    {
        await using var fake = new FakeXapi().WithStandardPool();
        fake.Methods["VM.get_name_label"] = args => FakeXapi.Ok("name-of-" + args[1]);
        await using var session = await XapiSession.LoginAsync(fake.Url, "root", "secret", Options(XapiProtocol.JsonRpc), Bounded());
        var refs = Enumerable.Range(0, 16).Select(i => $"OpaqueRef:vm-{i}").ToArray();
        var names = await Task.WhenAll(refs.Select(r => session.CallAsync("VM.get_name_label", new object?[] { r }, Bounded())));
        Assert.Equal(refs.Select(r => "name-of-" + r), names);
    }

    [Fact]
    public async Task Refused_connection_is_a_connection_exception_naming_the_url()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        var url = new Uri($"http://127.0.0.1:{port}/");
        var ex = await Assert.ThrowsAsync<XapiConnectionException>(() => XapiSession.LoginAsync(url, "root", "secret", Options(XapiProtocol.JsonRpc), Bounded()));
        Assert.Contains($"127.0.0.1:{port}", ex.Message);
        Assert.Contains("refused", ex.Message);
    }

    [Fact]
    public async Task Http_500_with_html_is_a_connection_exception()
    {
        await using var server = new FakeHttpServer(async (req, ct) =>
        {
            await req.ReadBodyAsync(ct);
            await FakeHttpServer.WriteResponseAsync(req.Connection, 500, "Internal Server Error", new[] { ("Content-Type", "text/html") },
                "<html>Jsonrpc.Malformed_method_request</html>"u8.ToArray(), ct);
            return false;
        });
        var ex = await Assert.ThrowsAsync<XapiConnectionException>(() => XapiSession.LoginAsync(server.Url, "root", "secret", Options(XapiProtocol.JsonRpc), Bounded()));
        Assert.Equal(500, ex.HttpStatusCode);
        Assert.Contains("Malformed_method_request", ex.Message);
    }

    [Fact]
    public async Task Non_json_answer_on_jsonrpc_says_to_use_xmlrpc()
    {
        await using var server = new FakeHttpServer(async (req, ct) =>
        {
            await req.ReadBodyAsync(ct);
            await FakeHttpServer.WriteResponseAsync(req.Connection, 200, "OK", new[] { ("Content-Type", "text/html") }, "<html/>"u8.ToArray(), ct);
            return false;
        });
        var ex = await Assert.ThrowsAsync<XapiConnectionException>(() => XapiSession.LoginAsync(server.Url, "root", "secret", Options(XapiProtocol.JsonRpc), Bounded()));
        Assert.Contains("XmlRpc", ex.Message);
    }

    [Fact]
    public async Task A_host_that_never_answers_times_out_as_a_connection_exception()
    {
        var release = new TaskCompletionSource();
        await using var server = new FakeHttpServer(async (req, ct) =>
        {
            await release.Task.WaitAsync(ct); // holds the request until the test ends
            return false;
        });
        var options = Options(XapiProtocol.XmlRpc);
        options.Timeout = TimeSpan.FromMilliseconds(300);
        var ex = await Assert.ThrowsAsync<XapiConnectionException>(() => XapiSession.LoginAsync(server.Url, "root", "secret", options, Bounded()));
        Assert.Contains("did not answer", ex.Message);
        release.SetResult();
    }

    [Fact]
    public async Task Logout_invalidates_and_dispose_after_logout_is_harmless()
    {
        await using var fake = new FakeXapi().WithStandardPool();
        var session = await XapiSession.LoginAsync(fake.Url, "root", "secret", Options(XapiProtocol.JsonRpc), Bounded());
        await session.LogoutAsync(Bounded());
        Assert.Empty(fake.ValidSessions);
        await session.DisposeAsync();
        await Assert.ThrowsAsync<ObjectDisposedException>(() => session.CallAsync("VM.get_all", Array.Empty<object?>()));
        Assert.Equal(2, fake.Calls.Count(c => c.Method == "session.logout")); // dispose still tries; SESSION_INVALID is ignored
    }

    [Theory]
    [InlineData(XapiProtocol.JsonRpc)]
    [InlineData(XapiProtocol.XmlRpc)]
    public async Task Typed_records_read_the_same_over_both_protocols(XapiProtocol protocol)
    {
        await using var fake = new FakeXapi().WithStandardPool();
        fake.Methods["VDI.get_all_records"] = _ => FakeXapi.Ok(new Dictionary<string, object?>
        {
            ["OpaqueRef:vdi-1"] = new Dictionary<string, object?>
            {
                ["uuid"] = "7d0b1c1e-0000-0000-0000-000000000001", ["name_label"] = "disk0", ["virtual_size"] = 10737418240L,
                ["physical_utilisation"] = 4096L, ["type"] = "user", ["sharable"] = false, ["read_only"] = false,
                ["cbt_enabled"] = true, ["is_a_snapshot"] = false, ["snapshot_of"] = "OpaqueRef:NULL",
                ["snapshot_time"] = new DateTime(2026, 11, 27, 12, 0, 0, DateTimeKind.Utc), ["SR"] = "OpaqueRef:sr-1",
                ["VBDs"] = new object?[] { "OpaqueRef:vbd-1" }, ["sm_config"] = new Dictionary<string, object?> { ["vhd-parent"] = "p" },
            },
        });
        fake.Methods["VM.get_by_uuid"] = args => (string?)args[1] == "u-1" ? FakeXapi.Ok("OpaqueRef:vm-1") : FakeXapi.Fail("UUID_INVALID", "VM", (string?)args[1] ?? "");
        fake.Methods["VM.get_by_name_label"] = _ => FakeXapi.Ok(new object?[] { "OpaqueRef:vm-1", "OpaqueRef:vm-2" });
        fake.Methods["VM.get_record"] = _ => FakeXapi.Ok(new Dictionary<string, object?>
        {
            ["uuid"] = "u-1", ["name_label"] = "web01", ["power_state"] = "Running", ["memory_static_max"] = 4294967296L,
            ["VCPUs_max"] = 4L, ["is_a_template"] = false, ["VBDs"] = Array.Empty<object?>(),
        });
        await using var session = await XapiSession.LoginAsync(fake.Url, "root", "secret", Options(protocol), Bounded());

        var vdi = Assert.Single(await session.GetAllRecordsAsync<VdiRecord>(Bounded()));
        Assert.Equal("OpaqueRef:vdi-1", vdi.OpaqueRef);
        Assert.Equal(10737418240L, vdi.VirtualSize);
        Assert.Equal(4096L, vdi.PhysicalUtilisation);
        Assert.True(vdi.CbtEnabled);
        Assert.False(vdi.Sharable);
        Assert.Equal(new DateTime(2026, 11, 27, 12, 0, 0, DateTimeKind.Utc), vdi.SnapshotTime);
        Assert.Equal(new[] { "OpaqueRef:vbd-1" }, vdi.VBDs);
        Assert.Equal("p", vdi.SmConfig["vhd-parent"]);
        Assert.True(XapiValue.IsNullRef(vdi.SnapshotOf));
        Assert.Empty(vdi.Tags); // missing field reads as default
        Assert.True(vdi.Raw.ContainsKey("sm_config"));

        Assert.Equal("OpaqueRef:vm-1", await session.GetByUuidAsync("VM", "u-1", Bounded()));
        var missing = await Assert.ThrowsAsync<XapiException>(() => session.GetByUuidAsync("VM", "nope", Bounded()));
        Assert.Equal("UUID_INVALID", missing.ErrorCode);
        Assert.Equal(2, (await session.GetByNameLabelAsync("VM", "web01", Bounded())).Count);

        var vm = await session.GetRecordByUuidAsync<VmRecord>("u-1", Bounded());
        Assert.Equal("OpaqueRef:vm-1", vm.OpaqueRef);
        Assert.Equal("Running", vm.PowerState);
        Assert.Equal(4294967296L, vm.MemoryStaticMax);
        Assert.Equal(4L, vm.VcpusMax);
    }

    [Fact]
    public void Malformed_pin_is_rejected_up_front()
    {
        Assert.Throws<ArgumentException>(() => XapiSession.FromExisting(new Uri("https://127.0.0.1/"), "OpaqueRef:x",
            new XapiConnectionOptions { CertificateThumbprint = "abc" }));
        Assert.Throws<ArgumentException>(() => XapiSession.FromExisting(new Uri("ftp://127.0.0.1/"), "OpaqueRef:x"));
    }
}
