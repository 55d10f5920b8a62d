using System.Net;
using System.Text;

namespace VProtect.Simulator.Tests;

public sealed class SessionAndWireTests
{
    [Theory]
    [InlineData(Protocol.XmlRpc)]
    [InlineData(Protocol.JsonRpcV1)]
    [InlineData(Protocol.JsonRpcV2)]
    public async Task Login_works_on_every_protocol_and_the_session_is_shared(Protocol protocol)
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = await h.LoginAsync(protocol);
        Assert.StartsWith("OpaqueRef:", c.Session);
        // A session from one protocol is valid on the others.
        using var other = new XapiTestClient(h.Sim.Url, protocol == Protocol.XmlRpc ? Protocol.JsonRpcV2 : Protocol.XmlRpc);
        var pools = V.Arr(await other.CallNoSessionAsync("pool.get_all", c.Session));
        Assert.Single(pools);
    }

    [Theory]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public async Task Login_accepts_two_to_four_arguments(int count)
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = new XapiTestClient(h.Sim.Url);
        object?[] args = new object?[] { h.Sim.User, h.Sim.Password, "1.1", "tests" }[..count];
        Assert.StartsWith("OpaqueRef:", V.Str(await c.CallNoSessionAsync("session.login_with_password", args)));
    }

    [Fact]
    public async Task Login_with_five_arguments_is_a_count_mismatch()
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = new XapiTestClient(h.Sim.Url);
        var r = await c.RawCallAsync("session.login_with_password", ["root", "x", "1.1", "o", "extra"]);
        Assert.Equal(["MESSAGE_PARAMETER_COUNT_MISMATCH", "session.login_with_password", "2", "5"], r.ErrorDescription);
    }

    [Fact]
    public async Task Wrong_password_is_authentication_failed()
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = new XapiTestClient(h.Sim.Url, Protocol.JsonRpcV2);
        var r = await c.RawCallAsync("session.login_with_password", [h.Sim.User, h.Sim.Password + "x"]);
        Assert.False(r.Success);
        Assert.Equal(["SESSION_AUTHENTICATION_FAILED"], r.ErrorDescription);
    }

    [Fact]
    public async Task Member_answers_host_is_slave_with_the_master_address_on_the_same_port()
    {
        await using var h = await SimHandle.StartAsync("empty");
        Assert.Equal(h.Sim.Url.Port, h.Sim.MemberUrl.Port);
        Assert.Equal(h.Sim.Url.Scheme, h.Sim.MemberUrl.Scheme);
        using var c = new XapiTestClient(h.Sim.MemberUrl);
        var r = await c.RawCallAsync("session.login_with_password", [h.Sim.User, h.Sim.Password]);
        Assert.Equal(["HOST_IS_SLAVE", "127.0.0.1"], r.ErrorDescription);
        // The master address is what host.address says for the master.
        using var m = await h.LoginAsync();
        var pool = V.Map(V.Map(await m.CallAsync("pool.get_all_records")).Values.Single());
        Assert.Equal("127.0.0.1", V.Str(await m.CallAsync("host.get_address", V.Str(pool["master"]))));
        // Calls with a valid session on the member are answered (xapi forwards them to the master).
        Assert.Single(V.Arr(await new XapiTestClient(h.Sim.MemberUrl).CallNoSessionAsync("pool.get_all", m.Session)));
    }

    [Fact]
    public async Task Logout_invalidates_the_session()
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = await h.LoginAsync();
        var s = c.Session!;
        await c.CallAsync("session.logout");
        var f = await c.FailsAsync("pool.get_all");
        Assert.Equal(["SESSION_INVALID", s], f.Description);
    }

    [Fact]
    public async Task At_most_500_sessions_per_originator_the_oldest_goes_first()
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = new XapiTestClient(h.Sim.Url, Protocol.JsonRpcV2);
        var first = V.Str(await c.CallNoSessionAsync("session.login_with_password", h.Sim.User, h.Sim.Password, "1.1", "leaky"));
        var second = V.Str(await c.CallNoSessionAsync("session.login_with_password", h.Sim.User, h.Sim.Password, "1.1", "leaky"));
        var other = V.Str(await c.CallNoSessionAsync("session.login_with_password", h.Sim.User, h.Sim.Password, "1.1", "careful"));
        for (int i = 2; i < 500; i++) await c.CallNoSessionAsync("session.login_with_password", h.Sim.User, h.Sim.Password, "1.1", "leaky");
        Assert.Single(V.Arr(await c.CallNoSessionAsync("pool.get_all", first))); // 500 sessions: all still valid
        await c.CallNoSessionAsync("session.login_with_password", h.Sim.User, h.Sim.Password, "1.1", "leaky");
        Assert.Equal(["SESSION_INVALID", first], (await c.RawCallAsync("pool.get_all", [first])).ErrorDescription);
        Assert.Single(V.Arr(await c.CallNoSessionAsync("pool.get_all", second)));
        Assert.Single(V.Arr(await c.CallNoSessionAsync("pool.get_all", other)));
    }

    [Fact]
    public async Task The_csharp_sdk_post_login_calls_answer()
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = await h.LoginAsync(Protocol.JsonRpcV1);
        var pools = V.Map(await c.CallAsync("pool.get_all_records"));
        var pool = V.Map(pools.Values.Single());
        var master = V.Str(pool["master"]);
        var host = await c.RecordAsync("host", master);
        Assert.Equal(2, V.Long(host["API_version_major"]));
        Assert.True(V.Long(host["API_version_minor"]) >= 8, "API >= 2.8 makes the SDK switch to JSON-RPC v2");
        Assert.Equal("127.0.0.1", V.Str(host["address"]));
        Assert.True(V.Bool(await c.CallAsync("session.get_is_local_superuser", c.Session)));
        Assert.Equal("OpaqueRef:NULL", V.Str(await c.CallAsync("session.get_subject", c.Session)));
        Assert.Equal("", V.Str(await c.CallAsync("session.get_auth_user_sid", c.Session)));
        Assert.Contains("vdi.list_changed_blocks", V.Arr(await c.CallAsync("session.get_rbac_permissions", c.Session)));
    }

    [Theory]
    [InlineData("/", "text/xml", "<methodCall><methodName>x</methodName")]
    [InlineData("/RPC2", "text/xml", "not xml at all")]
    [InlineData("/jsonrpc", "application/json", "{\"method\": ")]
    [InlineData("/jsonrpc", "application/json", "{\"jsonrpc\":\"1.0\",\"method\":\"pool.get_all\",\"params\":[],\"id\":1}")]
    public async Task Malformed_bodies_are_http_500_with_html(string path, string contentType, string body)
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        using var response = await http.PostAsync(new Uri(h.Sim.Url, path), new StringContent(body, Encoding.UTF8, contentType));
        Assert.Equal(HttpStatusCode.InternalServerError, response.StatusCode);
        Assert.Equal("text/html", response.Content.Headers.ContentType?.MediaType);
        // The connection handling survives: a good call on the same client still works.
        using var c = await h.LoginAsync();
        Assert.NotNull(c.Session);
    }

    [Fact]
    public async Task Unmatched_post_paths_reach_xml_rpc_like_xo_xmlrpc()
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = new XapiTestClient(new Uri(h.Sim.Url, "/xmlrpc"));
        Assert.StartsWith("OpaqueRef:", await c.LoginAsync(h.Sim.User, h.Sim.Password));
    }

    [Fact]
    public async Task Unknown_methods_and_count_mismatches_use_xapi_error_codes()
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = await h.LoginAsync();
        Assert.Equal(["MESSAGE_METHOD_UNKNOWN", "VM.frobnicate"], (await c.FailsAsync("VM.frobnicate")).Description);
        Assert.Equal(["MESSAGE_METHOD_UNKNOWN", "Nope.get_all"], (await c.FailsAsync("Nope.get_all")).Description);
        Assert.Equal(["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.get_record", "1", "0"], (await c.FailsAsync("VM.get_record")).Description);
        Assert.Equal(["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.snapshot", "2", "4"], (await c.FailsAsync("VM.snapshot", "a", "b", new object?[0], "d")).Description);
    }

    [Fact]
    public async Task Bad_refs_and_uuids_are_handle_invalid_and_uuid_invalid()
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = await h.LoginAsync();
        Assert.Equal(["HANDLE_INVALID", "VM", "OpaqueRef:nope"], (await c.FailsAsync("VM.get_record", "OpaqueRef:nope")).Description);
        var u = Guid.NewGuid().ToString();
        Assert.Equal(["UUID_INVALID", "VDI", u], (await c.FailsAsync("VDI.get_by_uuid", u)).Description);
        // A ref of another class is also invalid for this class.
        var host = V.Str(V.Arr(await c.CallAsync("host.get_all"))[0]);
        Assert.Equal("HANDLE_INVALID", (await c.FailsAsync("VM.get_record", host)).Code);
    }

    [Fact]
    public async Task Generic_getters_setters_and_map_edits_round_trip()
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = await h.LoginAsync();
        var sr = await c.RefByNameAsync("SR", Scenario.DefaultScenario.SharedSr);
        var uuid = V.Str(await c.CallAsync("SR.get_uuid", sr));
        Assert.Equal(sr, V.Str(await c.CallAsync("SR.get_by_uuid", uuid)));
        await c.CallAsync("SR.set_name_description", sr, "renamed");
        Assert.Equal("renamed", V.Str(await c.CallAsync("SR.get_name_description", sr)));
        await c.CallAsync("SR.add_to_other_config", sr, "k", "v");
        Assert.Equal("MAP_DUPLICATE_KEY", (await c.FailsAsync("SR.add_to_other_config", sr, "k", "w")).Code);
        Assert.Equal("v", V.Map(await c.CallAsync("SR.get_other_config", sr))["k"]);
        await c.CallAsync("SR.remove_from_other_config", sr, "k");
        Assert.False(V.Map(await c.CallAsync("SR.get_other_config", sr)).ContainsKey("k"));
        // Read-only fields have no setter.
        Assert.Equal("MESSAGE_METHOD_UNKNOWN", (await c.FailsAsync("SR.set_physical_size", sr, "1")).Code);
    }

    [Fact]
    public async Task Https_listener_serves_xapi_with_the_host_certificate()
    {
        await using var sim = await XenSimulator.StartAsync(new SimulatorOptions { Scenario = "empty" });
        Assert.NotNull(sim.HttpsUrl);
        string? seenThumbprint = null;
        using var handler = new HttpClientHandler
        {
            ServerCertificateCustomValidationCallback = (_, cert, _, _) => { seenThumbprint = cert?.Thumbprint; return true; },
        };
        using var c = new XapiTestClient(sim.HttpsUrl!, Protocol.JsonRpcV2, handler);
        Assert.StartsWith("OpaqueRef:", await c.LoginAsync(sim.User, sim.Password));
        Assert.Equal(sim.Certificate.Thumbprint, seenThumbprint);
        var san = sim.Certificate.Extensions.OfType<System.Security.Cryptography.X509Certificates.X509SubjectAlternativeNameExtension>().Single();
        Assert.Contains(IPAddress.Loopback, san.EnumerateIPAddresses());
        Assert.Contains(Scenario.DefaultScenario.MasterName, san.EnumerateDnsNames());
        // host.get_server_certificate returns the same certificate as PEM.
        var host = V.Str(V.Arr(await c.CallAsync("host.get_all"))[0]);
        var pem = V.Str(await c.CallAsync("host.get_server_certificate", host));
        Assert.Equal(sim.Certificate.Thumbprint, System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPem(pem).Thumbprint);
    }
}
