using System.Text;
using VProtect.Core.Xapi.Wire;
using Xunit;

namespace VProtect.Core.Tests.Xapi;

public class XmlRpcCodecTests
{
    // Recorded in the shape xapi writes (research/xapi.md §1): untyped strings and int64s, Status/Value struct.
    private const string LoginSuccess =
        "<?xml version=\"1.0\"?><methodResponse><params><param><value><struct>" +
        "<member><name>Status</name><value>Success</value></member>" +
        "<member><name>Value</name><value>OpaqueRef:1d5cbba2-4f5c-4bb7-9d3d-6c4b0c9b3f55</value></member>" +
        "</struct></value></param></params></methodResponse>";

    private const string AuthFailure =
        "<?xml version=\"1.0\"?><methodResponse><params><param><value><struct>" +
        "<member><name>Status</name><value>Failure</value></member>" +
        "<member><name>ErrorDescription</name><value><array><data>" +
        "<value>SESSION_AUTHENTICATION_FAILED</value><value>root</value><value>Authentication failure</value>" +
        "</data></array></value></member></struct></value></param></params></methodResponse>";

    [Fact]
    public void Decodes_xapi_success_with_untyped_string()
    {
        var r = XmlRpc.DecodeResponse(LoginSuccess);
        Assert.True(r.Success);
        Assert.Equal("OpaqueRef:1d5cbba2-4f5c-4bb7-9d3d-6c4b0c9b3f55", r.Value);
        Assert.Null(r.ErrorDescription);
    }

    [Fact]
    public void Decodes_xapi_failure_description()
    {
        var r = XmlRpc.DecodeResponse(AuthFailure);
        Assert.False(r.Success);
        Assert.Null(r.Value);
        Assert.Equal(new[] { "SESSION_AUTHENTICATION_FAILED", "root", "Authentication failure" }, r.ErrorDescription);
    }

    [Fact]
    public void Decodes_a_record_with_int64_strings_booleans_doubles_dates_and_nested_maps()
    {
        const string vdi =
            "<value><struct>" +
            "<member><name>virtual_size</name><value>10737418240</value></member>" +
            "<member><name>sharable</name><value><boolean>0</boolean></value></member>" +
            "<member><name>cbt_enabled</name><value><boolean>1</boolean></value></member>" +
            "<member><name>progress</name><value><double>0.25</double></value></member>" +
            "<member><name>snapshot_time</name><value><dateTime.iso8601>19700101T00:00:00Z</dateTime.iso8601></value></member>" +
            "<member><name>sm_config</name><value><struct><member><name>vhd-parent</name><value>abc</value></member></struct></value></member>" +
            "<member><name>VBDs</name><value><array><data/></array></value></member>" +
            "<member><name>tags</name><value><array><data></data></array></value></member>" +
            "<member><name>name_description</name><value></value></member>" +
            "<member><name>typed</name><value><string>  spaced  </string></value></member>" +
            "<member><name>i4</name><value><i4>-7</i4></value></member>" +
            "<member><name>int</name><value><int>42</int></value></member>" +
            "</struct></value>";
        var d = Assert.IsType<Dictionary<string, object?>>(XmlRpc.DecodeValue(vdi));
        Assert.Equal("10737418240", d["virtual_size"]); // int64 untyped -> string, never a guessed number
        Assert.Equal(false, d["sharable"]);
        Assert.Equal(true, d["cbt_enabled"]);
        Assert.Equal(0.25, d["progress"]);
        var t = Assert.IsType<DateTime>(d["snapshot_time"]);
        Assert.Equal(DateTimeKind.Utc, t.Kind);
        Assert.Equal(DateTime.UnixEpoch, t);
        Assert.Equal("abc", Assert.IsType<Dictionary<string, object?>>(d["sm_config"])["vhd-parent"]);
        Assert.Empty(Assert.IsType<object?[]>(d["VBDs"]));
        Assert.Empty(Assert.IsType<object?[]>(d["tags"]));
        Assert.Equal("", d["name_description"]);
        Assert.Equal("  spaced  ", d["typed"]);
        Assert.Equal(-7L, d["i4"]);
        Assert.Equal(42L, d["int"]);
    }

    [Fact]
    public void Untyped_value_keeps_its_whitespace_and_entities()
    {
        Assert.Equal(" a & b <c> ", XmlRpc.DecodeValue("<value> a &amp; b &lt;c&gt; </value>"));
        Assert.Equal("", XmlRpc.DecodeValue("<value/>"));
        Assert.Equal("", XmlRpc.DecodeValue("")); // void task.result
    }

    [Theory]
    [InlineData("19700101T00:00:00Z", 1970, 1, 1, 0, 0, 0)]
    [InlineData("20240229T13:45:07Z", 2024, 2, 29, 13, 45, 7)]
    [InlineData("20240229T13:45:07", 2024, 2, 29, 13, 45, 7)]
    [InlineData("2024-02-29T13:45:07Z", 2024, 2, 29, 13, 45, 7)]
    [InlineData("2024-02-29T13:45:07.5Z", 2024, 2, 29, 13, 45, 7)]
    [InlineData("2024-02-29T15:45:07+02:00", 2024, 2, 29, 13, 45, 7)]
    public void Accepts_xapi_and_sdk_datetime_forms(string text, int y, int mo, int d, int h, int mi, int s)
    {
        var dt = Assert.IsType<DateTime>(XmlRpc.DecodeValue($"<value><dateTime.iso8601>{text}</dateTime.iso8601></value>"));
        Assert.Equal(DateTimeKind.Utc, dt.Kind);
        Assert.Equal(new DateTime(y, mo, d, h, mi, s, DateTimeKind.Utc), dt.AddTicks(-(dt.Ticks % TimeSpan.TicksPerSecond)));
    }

    [Fact]
    public void Encodes_values_in_xapi_style()
    {
        Assert.Equal("<value>OpaqueRef:NULL</value>", XmlRpc.EncodeValue("OpaqueRef:NULL"));
        Assert.Equal("<value>10737418240</value>", XmlRpc.EncodeValue(10737418240L));
        Assert.Equal("<value><boolean>1</boolean></value>", XmlRpc.EncodeValue(true));
        Assert.Equal("<value><double>0.5</double></value>", XmlRpc.EncodeValue(0.5));
        Assert.Equal("<value><dateTime.iso8601>19700101T00:00:00Z</dateTime.iso8601></value>", XmlRpc.EncodeValue(DateTime.UnixEpoch));
        Assert.Equal("<value><array><data></data></array></value>", XmlRpc.EncodeValue(Array.Empty<object?>()));
        Assert.Equal("<value>a &amp; &lt;b&gt;&#13;\n</value>", XmlRpc.EncodeValue("a & <b>\r\n"));
        Assert.Equal("<value></value>", XmlRpc.EncodeValue(null));
        Assert.Equal("<value><struct><member><name>k</name><value>v</value></member></struct></value>",
            XmlRpc.EncodeValue(new Dictionary<string, string> { ["k"] = "v" }));
    }

    [Fact]
    public void Values_round_trip_except_that_integers_come_back_as_strings()
    {
        var value = new Dictionary<string, object?>
        {
            ["s"] = "tab\there\r\nand unicode ü 🙂",
            ["n"] = 42L,
            ["b"] = false,
            ["d"] = 1.0 / 3,
            ["t"] = new DateTime(2026, 11, 27, 10, 11, 12, DateTimeKind.Utc),
            ["a"] = new object?[] { "x", new object?[0], new Dictionary<string, object?>() },
        };
        var back = Assert.IsType<Dictionary<string, object?>>(XmlRpc.DecodeValue(XmlRpc.EncodeValue(value)));
        Assert.Equal(value["s"], back["s"]);
        Assert.Equal("42", back["n"]);
        Assert.Equal(false, back["b"]);
        Assert.Equal(1.0 / 3, back["d"]);
        Assert.Equal(value["t"], back["t"]);
        var a = Assert.IsType<object?[]>(back["a"]);
        Assert.Equal("x", a[0]);
        Assert.Empty(Assert.IsType<object?[]>(a[1]));
        Assert.Empty(Assert.IsType<Dictionary<string, object?>>(a[2]));
    }

    [Fact]
    public void Method_call_round_trips()
    {
        var xml = XmlRpc.EncodeMethodCall("session.login_with_password", new object?[] { "root", "p<w>&d", "1.1", "VProtect" });
        Assert.StartsWith("<?xml version=\"1.0\"?><methodCall><methodName>session.login_with_password</methodName>", xml);
        var call = XmlRpc.DecodeMethodCall(xml);
        Assert.Equal("session.login_with_password", call.Method);
        Assert.Equal(new object?[] { "root", "p<w>&d", "1.1", "VProtect" }, call.Args);
    }

    [Fact]
    public void Method_call_with_whitespace_and_no_params_decodes()
    {
        var call = XmlRpc.DecodeMethodCall("<?xml version='1.0'?>\n<methodCall>\n  <methodName>pool.get_all</methodName>\n  <params>\n    <param>\n      <value><string>OpaqueRef:x</string></value>\n    </param>\n  </params>\n</methodCall>\n");
        Assert.Equal("pool.get_all", call.Method);
        Assert.Equal(new object?[] { "OpaqueRef:x" }, call.Args);
        Assert.Empty(XmlRpc.DecodeMethodCall("<methodCall><methodName>m</methodName></methodCall>").Args);
    }

    [Fact]
    public void Success_and_failure_encoders_decode_back()
    {
        var ok = XmlRpc.DecodeResponse(XmlRpc.EncodeSuccess(new object?[] { "OpaqueRef:a", "OpaqueRef:b" }));
        Assert.True(ok.Success);
        Assert.Equal(new object?[] { "OpaqueRef:a", "OpaqueRef:b" }, ok.Value);

        var voidOk = XmlRpc.DecodeResponse(XmlRpc.EncodeSuccess(null));
        Assert.True(voidOk.Success);
        Assert.Equal("", voidOk.Value);

        var fail = XmlRpc.DecodeResponse(XmlRpc.EncodeFailure(new[] { "HOST_IS_SLAVE", "192.0.2.10" }));
        Assert.False(fail.Success);
        Assert.Equal(new[] { "HOST_IS_SLAVE", "192.0.2.10" }, fail.ErrorDescription);
    }

    [Fact]
    public void Encoded_failure_has_xapi_structure()
    {
        Assert.Equal(
            "<?xml version=\"1.0\"?><methodResponse><params><param><value><struct>" +
            "<member><name>Status</name><value>Failure</value></member>" +
            "<member><name>ErrorDescription</name><value><array><data><value>MESSAGE_REMOVED</value></data></array></value></member>" +
            "</struct></value></param></params></methodResponse>",
            XmlRpc.EncodeFailure(new[] { "MESSAGE_REMOVED" }));
    }

    [Fact]
    public void Standard_fault_maps_to_a_failure()
    {
        var r = XmlRpc.DecodeResponse("<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>4</int></value></member>" +
                                      "<member><name>faultString</name><value>Too many parameters.</value></member></struct></value></fault></methodResponse>");
        Assert.False(r.Success);
        Assert.Equal(new[] { "XMLRPC_FAULT", "4", "Too many parameters." }, r.ErrorDescription);
    }

    [Theory]
    [InlineData("")]
    [InlineData("not xml at all")]
    [InlineData("<methodResponse><params><param><value><struct>")] // truncated
    [InlineData("<methodResponse><params><param><value>x</value></param></params></methodResponse>")] // no Status struct
    [InlineData("<methodResponse><params><param><value><struct><member><name>Status</name><value>Maybe</value></member></struct></value></param></params></methodResponse>")]
    [InlineData("<methodResponse><params><param><value><struct><member><name>Status</name><value>Failure</value></member></struct></value></param></params></methodResponse>")]
    [InlineData("<methodResponse><params></params></methodResponse>")]
    [InlineData("<methodResponse><params><param><value><i4>12x</i4></value></param></params></methodResponse>")]
    [InlineData("<other/>")]
    public void Malformed_responses_throw_wire_exception(string xml)
    {
        Assert.Throws<XapiWireException>(() => XmlRpc.DecodeResponse(xml));
    }

    [Theory]
    [InlineData("<value><boolean>2</boolean></value>")]
    [InlineData("<value><double>abc</double></value>")]
    [InlineData("<value><dateTime.iso8601>yesterday</dateTime.iso8601></value>")]
    [InlineData("<value>text<string>x</string></value>")]
    [InlineData("<value><unknown>x</unknown></value>")]
    [InlineData("<value><string><b>x</b></string></value>")]
    [InlineData("<value><struct><member><value>x</value></member></struct></value>")]
    [InlineData("<value>x</value><value>y</value>")]
    [InlineData("<value>&undefined;</value>")]
    public void Malformed_values_throw_wire_exception(string xml)
    {
        Assert.Throws<XapiWireException>(() => XmlRpc.DecodeValue(xml));
    }

    [Theory]
    [InlineData("<methodCall></methodCall>")]
    [InlineData("<methodCall><methodName></methodName></methodCall>")]
    [InlineData("<methodCall><methodName>m</methodName><params><param></param></params></methodCall>")]
    [InlineData("<methodCall><methodName>m</methodName><params><value>x</value></params></methodCall>")]
    public void Malformed_calls_throw_wire_exception(string xml)
    {
        Assert.Throws<XapiWireException>(() => XmlRpc.DecodeMethodCall(xml));
    }

    [Fact]
    public void Dtd_is_rejected_and_no_entity_is_expanded()
    {
        const string billionLaughs =
            "<?xml version=\"1.0\"?><!DOCTYPE lolz [<!ENTITY lol \"lol\"><!ENTITY lol2 \"&lol;&lol;&lol;&lol;\">]>" +
            "<value>&lol2;</value>";
        Assert.Throws<XapiWireException>(() => XmlRpc.DecodeValue(billionLaughs));
        const string external = "<?xml version=\"1.0\"?><!DOCTYPE v [<!ENTITY x SYSTEM \"file:///etc/passwd\">]><value>&x;</value>";
        Assert.Throws<XapiWireException>(() => XmlRpc.DecodeValue(external));
        const string inCall = "<!DOCTYPE methodCall><methodCall><methodName>m</methodName></methodCall>";
        Assert.Throws<XapiWireException>(() => XmlRpc.DecodeMethodCall(inCall));
    }

    private static string NestedArrays(int levels)
    {
        var sb = new StringBuilder();
        for (var i = 0; i < levels; i++) sb.Append("<value><array><data>");
        sb.Append("<value>leaf</value>");
        for (var i = 0; i < levels; i++) sb.Append("</data></array></value>");
        return sb.ToString();
    }

    [Fact]
    public void Nesting_up_to_64_is_accepted_and_deeper_is_rejected()
    {
        var ok = XmlRpc.DecodeValue(NestedArrays(64));
        for (var i = 0; i < 64; i++) ok = Assert.Single(Assert.IsType<object?[]>(ok));
        Assert.Equal("leaf", ok);

        var ex = Assert.Throws<XapiWireException>(() => XmlRpc.DecodeValue(NestedArrays(65)));
        Assert.Contains("64", ex.Message);
        // Very deep hostile input fails cleanly instead of overflowing the stack.
        Assert.Throws<XapiWireException>(() => XmlRpc.DecodeValue(NestedArrays(100_000)));
    }

    [Fact]
    public void Deep_structs_in_a_response_are_rejected()
    {
        var sb = new StringBuilder();
        for (var i = 0; i < 70; i++) sb.Append("<value><struct><member><name>n</name>");
        sb.Append("<value>x</value>");
        for (var i = 0; i < 70; i++) sb.Append("</member></struct></value>");
        Assert.Throws<XapiWireException>(() => XmlRpc.DecodeResponse(
            $"<methodResponse><params><param>{sb}</param></params></methodResponse>"));
    }

    [Fact]
    public void Encoding_rejects_what_xml_cannot_carry()
    {
        Assert.Throws<ArgumentException>(() => XmlRpc.EncodeValue("nul\0byte"));
        Assert.Throws<ArgumentException>(() => XmlRpc.EncodeValue("lone \uD800 surrogate"));
        Assert.Throws<ArgumentException>(() => XmlRpc.EncodeValue(new object()));
        var cycle = new List<object?>();
        cycle.Add(cycle);
        Assert.Throws<ArgumentException>(() => XmlRpc.EncodeValue(cycle));
    }

    [Fact]
    public void Doubles_keep_special_values_in_ocaml_spelling()
    {
        Assert.Equal("<value><double>nan</double></value>", XmlRpc.EncodeValue(double.NaN));
        Assert.Equal(double.PositiveInfinity, XmlRpc.DecodeValue("<value><double>inf</double></value>"));
        Assert.Equal(1e-300, XmlRpc.DecodeValue(XmlRpc.EncodeValue(1e-300)));
    }

    [Fact]
    public void Task_result_set_of_refs_decodes()
    {
        // /import task result (research/xapi.md §2)
        var v = XmlRpc.DecodeValue("<value><array><data><value>OpaqueRef:vm1</value><value>OpaqueRef:vm2</value></data></array></value>");
        Assert.Equal(new object?[] { "OpaqueRef:vm1", "OpaqueRef:vm2" }, v);
    }

    [Fact]
    public void Value_document_decodes_from_a_stream_with_declaration()
    {
        var xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" + XmlRpc.EncodeValue(new Dictionary<string, object?>
        {
            ["version"] = new Dictionary<string, object?> { ["export_vsn"] = 2L, ["hostname"] = "xs1" },
            ["objects"] = new object?[] { new Dictionary<string, object?> { ["class"] = "VM", ["id"] = "Ref:12", ["snapshot"] = new Dictionary<string, object?>() } },
        });
        using var ms = new MemoryStream(Encoding.UTF8.GetBytes(xml));
        var ova = Assert.IsType<Dictionary<string, object?>>(XmlRpc.DecodeValue(ms));
        Assert.Equal("2", Assert.IsType<Dictionary<string, object?>>(ova["version"])["export_vsn"]);
        Assert.Equal("Ref:12", Assert.IsType<Dictionary<string, object?>>(Assert.Single(Assert.IsType<object?[]>(ova["objects"])))["id"]);
        using var hostile = new MemoryStream(Encoding.UTF8.GetBytes("<!DOCTYPE v [<!ENTITY e \"x\">]><value>&e;</value>"));
        Assert.Throws<XapiWireException>(() => XmlRpc.DecodeValue(hostile));
    }

    [Fact]
    public void Response_decodes_from_a_stream()
    {
        using var ms = new MemoryStream(Encoding.UTF8.GetBytes(LoginSuccess));
        Assert.Equal("OpaqueRef:1d5cbba2-4f5c-4bb7-9d3d-6c4b0c9b3f55", XmlRpc.DecodeResponse(ms).Value);
    }
}
