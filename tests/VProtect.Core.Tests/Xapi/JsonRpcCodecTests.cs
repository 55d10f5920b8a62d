using System.Text;
using System.Text.Json;
using VProtect.Core.Xapi.Wire;
using Xunit;

namespace VProtect.Core.Tests.Xapi;

public class JsonRpcCodecTests
{
    [Fact]
    public void V1_request_omits_the_jsonrpc_member()
    {
        var json = JsonRpc.EncodeRequest("session.login_with_password", new object?[] { "root", "pw" }, 1L, JsonRpcVersion.V1);
        using var doc = JsonDocument.Parse(json);
        Assert.False(doc.RootElement.TryGetProperty("jsonrpc", out _));
        Assert.Equal("session.login_with_password", doc.RootElement.GetProperty("method").GetString());
        Assert.Equal(2, doc.RootElement.GetProperty("params").GetArrayLength());
        Assert.Equal(1, doc.RootElement.GetProperty("id").GetInt64());
    }

    [Fact]
    public void V2_request_round_trips_with_typed_values()
    {
        var args = new object?[] { "OpaqueRef:s", 10737418240L, true, 0.5, new object?[] { "vm" }, new Dictionary<string, object?> { ["k"] = "v" } };
        var json = JsonRpc.EncodeRequest("VDI.create", args, "abc", JsonRpcVersion.V2);
        Assert.Contains("\"jsonrpc\":\"2.0\"", json);
        var req = JsonRpc.DecodeRequest(json);
        Assert.Equal(JsonRpcVersion.V2, req.Version);
        Assert.Equal("VDI.create", req.Method);
        Assert.Equal("abc", req.Id);
        Assert.Equal("OpaqueRef:s", req.Args[0]);
        Assert.Equal(10737418240L, req.Args[1]); // int64 is a JSON integer literal
        Assert.Equal(true, req.Args[2]);
        Assert.Equal(0.5, req.Args[3]);
        Assert.Equal(new object?[] { "vm" }, req.Args[4]);
        Assert.Equal("v", Assert.IsType<Dictionary<string, object?>>(req.Args[5])["k"]);
    }

    [Fact]
    public void Version_rules_follow_xapi()
    {
        Assert.Equal(JsonRpcVersion.V1, JsonRpc.DecodeRequest("{\"method\":\"m\",\"params\":[],\"id\":7}").Version);
        Assert.Equal(7L, JsonRpc.DecodeRequest("{\"method\":\"m\",\"params\":[],\"id\":7}").Id);
        Assert.Equal(JsonRpcVersion.V2, JsonRpc.DecodeRequest("{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":\"x\"}").Version);
        Assert.Empty(JsonRpc.DecodeRequest("{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"id\":\"x\"}").Args);
        var byName = JsonRpc.DecodeRequest("{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":{\"a\":1},\"id\":1}");
        Assert.Equal(1L, Assert.IsType<Dictionary<string, object?>>(Assert.Single(byName.Args))["a"]);
    }

    [Theory]
    [InlineData("{\"jsonrpc\":\"1.0\",\"method\":\"m\",\"params\":[],\"id\":1}")] // only absent or "2.0"
    [InlineData("{\"jsonrpc\":2.0,\"method\":\"m\",\"params\":[],\"id\":1}")]
    [InlineData("{\"method\":\"m\",\"params\":[]}")]                              // no id
    [InlineData("{\"method\":\"m\",\"params\":[],\"id\":null}")]                  // null id
    [InlineData("{\"method\":\"m\",\"params\":[],\"id\":1.5}")]                   // non-integer id
    [InlineData("{\"method\":\"m\",\"params\":[],\"id\":[1]}")]
    [InlineData("{\"method\":\"m\",\"id\":1}")]                                   // v1 needs params
    [InlineData("{\"method\":\"m\",\"params\":{\"a\":1},\"id\":1}")]              // v1 params must be an array
    [InlineData("{\"jsonrpc\":\"2.0\",\"method\":\"m\",\"params\":\"x\",\"id\":1}")]
    [InlineData("{\"params\":[],\"id\":1}")]                                      // no method
    [InlineData("[1,2]")]
    [InlineData("{\"method\":\"m\",")]
    [InlineData("")]
    public void Malformed_requests_throw_wire_exception(string json)
    {
        Assert.Throws<XapiWireException>(() => JsonRpc.DecodeRequest(json));
    }

    [Fact]
    public void V1_responses_have_xapi_shape()
    {
        Assert.Equal("{\"result\":\"OpaqueRef:x\",\"error\":null,\"id\":3}", JsonRpc.EncodeSuccess("OpaqueRef:x", 3L, JsonRpcVersion.V1));
        Assert.Equal("{\"result\":null,\"error\":[\"HOST_IS_SLAVE\",\"10.0.0.2\"],\"id\":3}",
            JsonRpc.EncodeFailure(new[] { "HOST_IS_SLAVE", "10.0.0.2" }, 3L, JsonRpcVersion.V1));
    }

    [Fact]
    public void V2_responses_have_xapi_shape()
    {
        Assert.Equal("{\"jsonrpc\":\"2.0\",\"result\":true,\"id\":\"a\"}", JsonRpc.EncodeSuccess(true, "a", JsonRpcVersion.V2));
        Assert.Equal("{\"jsonrpc\":\"2.0\",\"error\":{\"code\":1,\"message\":\"SESSION_INVALID\",\"data\":[\"OpaqueRef:s\"]},\"id\":\"a\"}",
            JsonRpc.EncodeFailure(new[] { "SESSION_INVALID", "OpaqueRef:s" }, "a", JsonRpcVersion.V2));
    }

    [Fact]
    public void Decodes_recorded_v1_and_v2_failures_to_the_same_description()
    {
        var v1 = JsonRpc.DecodeResponse("{\"result\":null,\"error\":[\"MESSAGE_PARAMETER_COUNT_MISMATCH\",\"session.login_with_password\",\"2\",\"4\"],\"id\":1}");
        var v2 = JsonRpc.DecodeResponse("{\"jsonrpc\":\"2.0\",\"error\":{\"code\":1,\"message\":\"MESSAGE_PARAMETER_COUNT_MISMATCH\",\"data\":[\"session.login_with_password\",\"2\",\"4\"]},\"id\":1}");
        var expected = new[] { "MESSAGE_PARAMETER_COUNT_MISMATCH", "session.login_with_password", "2", "4" };
        Assert.False(v1.Success);
        Assert.False(v2.Success);
        Assert.Equal(expected, v1.ErrorDescription);
        Assert.Equal(expected, v2.ErrorDescription);
    }

    [Fact]
    public void Decodes_recorded_success_with_records()
    {
        const string json = "{\"jsonrpc\":\"2.0\",\"result\":{\"OpaqueRef:v\":{\"uuid\":\"u\",\"virtual_size\":10737418240," +
                            "\"sharable\":false,\"snapshot_time\":\"19700101T00:00:00Z\",\"VBDs\":[],\"sm_config\":{},\"progress\":0.5}},\"id\":2}";
        var r = JsonRpc.DecodeResponse(json);
        Assert.True(r.Success);
        var rec = Assert.IsType<Dictionary<string, object?>>(Assert.IsType<Dictionary<string, object?>>(r.Value)["OpaqueRef:v"]);
        Assert.Equal(10737418240L, rec["virtual_size"]);
        Assert.Equal(false, rec["sharable"]);
        Assert.Equal("19700101T00:00:00Z", rec["snapshot_time"]); // JSON has no datetime type
        Assert.Empty(Assert.IsType<object?[]>(rec["VBDs"]));
        Assert.Empty(Assert.IsType<Dictionary<string, object?>>(rec["sm_config"]));
        Assert.Equal(0.5, rec["progress"]);
    }

    [Fact]
    public void Void_success_in_v1_is_null_result_with_null_error()
    {
        var r = JsonRpc.DecodeResponse("{\"result\":\"\",\"error\":null,\"id\":1}");
        Assert.True(r.Success);
        Assert.Equal("", r.Value);
        Assert.True(JsonRpc.DecodeResponse(JsonRpc.EncodeSuccess(null, 1L, JsonRpcVersion.V1)).Success);
    }

    [Theory]
    [InlineData("{\"id\":1}")]
    [InlineData("{\"error\":{\"code\":1},\"id\":1}")]
    [InlineData("{\"error\":[],\"id\":1}")]
    [InlineData("<html>500 Internal Server Error</html>")]
    [InlineData("\"just a string\"")]
    public void Malformed_responses_throw_wire_exception(string json)
    {
        Assert.Throws<XapiWireException>(() => JsonRpc.DecodeResponse(json));
    }

    private static string NestedArrays(int levels) => new string('[', levels) + "\"leaf\"" + new string(']', levels);

    [Fact]
    public void Nesting_up_to_64_is_accepted_and_deeper_is_rejected()
    {
        var ok = JsonRpc.DecodeRequest($"{{\"method\":\"m\",\"params\":[{NestedArrays(64)}],\"id\":1}}").Args[0];
        for (var i = 0; i < 64; i++) ok = Assert.Single(Assert.IsType<object?[]>(ok));
        Assert.Equal("leaf", ok);
        Assert.Throws<XapiWireException>(() => JsonRpc.DecodeRequest($"{{\"method\":\"m\",\"params\":[{NestedArrays(65)}],\"id\":1}}"));
        Assert.Throws<XapiWireException>(() => JsonRpc.DecodeResponse($"{{\"result\":{NestedArrays(65)},\"id\":1}}"));
        Assert.Throws<XapiWireException>(() => JsonRpc.DecodeResponse($"{{\"result\":{NestedArrays(10_000)},\"id\":1}}"));
    }

    [Fact]
    public void Dates_encode_as_xapi_strings_and_bad_values_are_refused()
    {
        Assert.Contains("\"20261127T10:11:12Z\"",
            JsonRpc.EncodeRequest("m", new object?[] { new DateTime(2026, 11, 27, 10, 11, 12, DateTimeKind.Utc) }, 1L, JsonRpcVersion.V2));
        Assert.Throws<ArgumentException>(() => JsonRpc.EncodeRequest("m", new object?[] { double.NaN }, 1L, JsonRpcVersion.V2));
        Assert.Throws<ArgumentException>(() => JsonRpc.EncodeRequest("m", new object?[] { new object() }, 1L, JsonRpcVersion.V2));
        Assert.Throws<ArgumentException>(() => JsonRpc.EncodeRequest("m", Array.Empty<object?>(), 1.5, JsonRpcVersion.V2));
    }

    [Fact]
    public void Response_decodes_from_a_stream()
    {
        using var ms = new MemoryStream(Encoding.UTF8.GetBytes("{\"result\":[\"a\"],\"error\":null,\"id\":1}"));
        Assert.Equal(new object?[] { "a" }, JsonRpc.DecodeResponse(ms).Value);
    }
}
