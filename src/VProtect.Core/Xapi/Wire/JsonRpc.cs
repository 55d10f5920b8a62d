using System.Buffers;
using System.Collections;
using System.Text;
using System.Text.Json;

namespace VProtect.Core.Xapi.Wire;

/// <summary>
/// JSON-RPC as xapi speaks it on <c>/jsonrpc</c>. Values are the same plain .NET objects as <see cref="XmlRpc"/>:
/// integers decode to <see cref="long"/>, other numbers to <see cref="double"/>, datetimes stay strings (JSON has no date).
/// Version rules (xapi's): no <c>jsonrpc</c> member → V1, <c>"2.0"</c> → V2, anything else is malformed.
/// </summary>
public static class JsonRpc
{
    // The envelope object and the params array (or error object) sit above the value itself.
    private const int EnvelopeDepth = 2;

    private static readonly JsonWriterOptions WriterOptions = new() { SkipValidation = false, MaxDepth = WireLimits.MaxNestingDepth + EnvelopeDepth + 1 };
    private static readonly JsonDocumentOptions DocumentOptions = new() { MaxDepth = WireLimits.MaxNestingDepth + EnvelopeDepth + 1 };

    // ---------------------------------------------------------------- encoding

    public static string EncodeRequest(string method, IReadOnlyList<object?> args, object id, JsonRpcVersion version)
    {
        ArgumentNullException.ThrowIfNull(method);
        ArgumentNullException.ThrowIfNull(args);
        return Write(w =>
        {
            w.WriteStartObject();
            if (version == JsonRpcVersion.V2) w.WriteString("jsonrpc", "2.0");
            w.WriteString("method", method);
            w.WritePropertyName("params");
            w.WriteStartArray();
            foreach (var arg in args) WriteValue(w, arg, 0);
            w.WriteEndArray();
            WriteId(w, id);
            w.WriteEndObject();
        });
    }

    public static string EncodeSuccess(object? value, object id, JsonRpcVersion version) => Write(w =>
    {
        w.WriteStartObject();
        if (version == JsonRpcVersion.V2) w.WriteString("jsonrpc", "2.0");
        w.WritePropertyName("result");
        WriteValue(w, value, 0);
        if (version == JsonRpcVersion.V1) w.WriteNull("error");
        WriteId(w, id);
        w.WriteEndObject();
    });

    /// <summary>
    /// V1: <c>{"result":null,"error":["CODE","p1",…],"id":…}</c>.
    /// V2: <c>{"jsonrpc":"2.0","error":{"code":1,"message":"CODE","data":["p1",…]},"id":…}</c>.
    /// </summary>
    public static string EncodeFailure(IReadOnlyList<string> errorDescription, object id, JsonRpcVersion version)
    {
        ArgumentNullException.ThrowIfNull(errorDescription);
        if (errorDescription.Count == 0) throw new ArgumentException("An error description needs at least the error code.", nameof(errorDescription));
        return Write(w =>
        {
            w.WriteStartObject();
            if (version == JsonRpcVersion.V2)
            {
                w.WriteString("jsonrpc", "2.0");
                w.WritePropertyName("error");
                w.WriteStartObject();
                w.WriteNumber("code", 1);
                w.WriteString("message", errorDescription[0]);
                w.WritePropertyName("data");
                w.WriteStartArray();
                for (var i = 1; i < errorDescription.Count; i++) w.WriteStringValue(errorDescription[i]);
                w.WriteEndArray();
                w.WriteEndObject();
            }
            else
            {
                w.WriteNull("result");
                w.WritePropertyName("error");
                w.WriteStartArray();
                foreach (var part in errorDescription) w.WriteStringValue(part);
                w.WriteEndArray();
            }
            WriteId(w, id);
            w.WriteEndObject();
        });
    }

    private static string Write(Action<Utf8JsonWriter> body)
    {
        var buffer = new ArrayBufferWriter<byte>(256);
        using (var w = new Utf8JsonWriter(buffer, WriterOptions))
            body(w);
        return Encoding.UTF8.GetString(buffer.WrittenSpan);
    }

    private static void WriteId(Utf8JsonWriter w, object id)
    {
        w.WritePropertyName("id");
        switch (id)
        {
            case string s: w.WriteStringValue(s); break;
            case long or int or short or sbyte or byte or ushort or uint:
                w.WriteNumberValue(Convert.ToInt64(id, System.Globalization.CultureInfo.InvariantCulture)); break;
            case null: throw new ArgumentNullException(nameof(id), "xapi requires a JSON-RPC id (int or string).");
            default: throw new ArgumentException($"A JSON-RPC id must be an integer or a string, not {id.GetType().Name}.", nameof(id));
        }
    }

    private static void WriteValue(Utf8JsonWriter w, object? value, int depth)
    {
        switch (value)
        {
            case null: w.WriteNullValue(); break;
            case string s: w.WriteStringValue(s); break;
            case bool b: w.WriteBooleanValue(b); break;
            case long l: w.WriteNumberValue(l); break;
            case int or short or sbyte or byte or ushort or uint:
                w.WriteNumberValue(Convert.ToInt64(value, System.Globalization.CultureInfo.InvariantCulture)); break;
            case ulong ul: w.WriteNumberValue(ul); break;
            case double d:
                if (!double.IsFinite(d)) throw new ArgumentException($"JSON cannot carry the number {d}; XAPI numbers are finite.");
                w.WriteNumberValue(d); break;
            case float f:
                if (!float.IsFinite(f)) throw new ArgumentException($"JSON cannot carry the number {f}; XAPI numbers are finite.");
                w.WriteNumberValue(f); break;
            case decimal m: w.WriteNumberValue(m); break;
            case DateTime dt: w.WriteStringValue(XapiDateTime.Format(dt)); break;
            case DateTimeOffset dto: w.WriteStringValue(XapiDateTime.Format(dto.UtcDateTime)); break;
            case Enum e: w.WriteStringValue(e.ToString()); break;
            case byte[] bytes: w.WriteBase64StringValue(bytes); break;
            case IDictionary dict:
                EnterContainer(depth);
                w.WriteStartObject();
                foreach (DictionaryEntry entry in dict)
                {
                    w.WritePropertyName(KeyText(entry.Key));
                    WriteValue(w, entry.Value, depth + 1);
                }
                w.WriteEndObject();
                break;
            case IEnumerable<KeyValuePair<string, object?>> pairs:
                EnterContainer(depth);
                w.WriteStartObject();
                foreach (var pair in pairs)
                {
                    w.WritePropertyName(pair.Key);
                    WriteValue(w, pair.Value, depth + 1);
                }
                w.WriteEndObject();
                break;
            case IEnumerable items:
                EnterContainer(depth);
                w.WriteStartArray();
                foreach (var item in items) WriteValue(w, item, depth + 1);
                w.WriteEndArray();
                break;
            default:
                throw new ArgumentException(
                    $"Cannot encode a {value.GetType().FullName} as an XAPI value; pass a string, integer, bool, double, DateTime, array or string-keyed dictionary.");
        }
    }

    private static string KeyText(object? key) => key switch
    {
        string s => s,
        IFormattable f => f.ToString(null, System.Globalization.CultureInfo.InvariantCulture),
        null => throw new ArgumentException("A struct member name cannot be null."),
        _ => key.ToString() ?? "",
    };

    private static void EnterContainer(int depth)
    {
        if (depth >= WireLimits.MaxNestingDepth)
            throw new ArgumentException($"The value nests arrays/structs deeper than {WireLimits.MaxNestingDepth} levels (a cycle?); XAPI values are shallow.");
    }

    // ---------------------------------------------------------------- decoding

    /// <summary>Decodes a request, applying xapi's rules; anything it would call malformed throws <see cref="XapiWireException"/>.</summary>
    public static JsonRpcRequest DecodeRequest(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        return Guard(() => DecodeRequestCore(json));
    }

    private static JsonRpcRequest DecodeRequestCore(string json)
    {
        using var doc = ParseDocument(json);
        var root = doc.RootElement;
        if (root.ValueKind != JsonValueKind.Object) throw Malformed("the request is not a JSON object");

        var version = JsonRpcVersion.V1;
        if (root.TryGetProperty("jsonrpc", out var v))
        {
            if (v.ValueKind == JsonValueKind.String && v.GetString() == "2.0") version = JsonRpcVersion.V2;
            else throw Malformed($"unsupported jsonrpc member {v.GetRawText()} (omit it for 1.0, or send \"2.0\")");
        }

        if (!root.TryGetProperty("method", out var m) || m.ValueKind != JsonValueKind.String || string.IsNullOrEmpty(m.GetString()))
            throw Malformed("the request has no method string");

        if (!root.TryGetProperty("id", out var idElement)) throw Malformed("the request has no id (notifications are not supported)");
        object id = idElement.ValueKind switch
        {
            JsonValueKind.String => idElement.GetString()!,
            JsonValueKind.Number when idElement.TryGetInt64(out var n) => n,
            _ => throw Malformed($"the id must be an integer or a string, not {idElement.GetRawText()}"),
        };

        object?[] args;
        if (!root.TryGetProperty("params", out var p))
        {
            if (version == JsonRpcVersion.V1) throw Malformed("a JSON-RPC 1.0 request needs a params array");
            args = Array.Empty<object?>();
        }
        else if (p.ValueKind == JsonValueKind.Array)
        {
            args = new object?[p.GetArrayLength()];
            var i = 0;
            foreach (var item in p.EnumerateArray()) args[i++] = ToValue(item, 0);
        }
        else if (p.ValueKind == JsonValueKind.Object && version == JsonRpcVersion.V2)
        {
            args = new[] { ToValue(p, 0) }; // v2 by-name params become one struct parameter
        }
        else throw Malformed(version == JsonRpcVersion.V1 ? "params must be an array in JSON-RPC 1.0" : "params must be an array or an object");

        return new JsonRpcRequest(m.GetString()!, args, id, version);
    }

    public static XapiResult DecodeResponse(string json)
    {
        ArgumentNullException.ThrowIfNull(json);
        return Guard(() =>
        {
            using var doc = ParseDocument(json);
            return ToResult(doc.RootElement);
        });
    }

    /// <summary>Decodes a response straight from UTF-8 bytes in a stream.</summary>
    public static XapiResult DecodeResponse(Stream utf8Json)
    {
        ArgumentNullException.ThrowIfNull(utf8Json);
        return Guard(() =>
        {
            using var doc = JsonDocument.Parse(utf8Json, DocumentOptions);
            return ToResult(doc.RootElement);
        });
    }

    /// <summary>Converts a JSON value to the plain .NET model (used by callers that hold a <see cref="JsonElement"/>).</summary>
    public static object? ToValue(JsonElement element) => Guard(() => ToValue(element, 0));

    /// <summary>Every way System.Text.Json can reject bytes (bad syntax, depth, invalid UTF-8 inside strings) becomes one exception type.</summary>
    private static T Guard<T>(Func<T> decode)
    {
        try
        {
            return decode();
        }
        catch (JsonException ex)
        {
            throw new XapiWireException($"Malformed JSON-RPC: {ex.Message}", ex);
        }
        catch (InvalidOperationException ex)
        {
            throw new XapiWireException($"Malformed JSON-RPC: {ex.Message}", ex);
        }
    }

    private static JsonDocument ParseDocument(string json)
    {
        try { return JsonDocument.Parse(json, DocumentOptions); }
        catch (JsonException ex) { throw new XapiWireException($"Malformed JSON-RPC: {ex.Message}", ex); }
    }

    private static XapiResult ToResult(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object) throw Malformed("the response is not a JSON object");
        if (root.TryGetProperty("error", out var error) && error.ValueKind != JsonValueKind.Null)
        {
            switch (error.ValueKind)
            {
                case JsonValueKind.Array: // v1: ["CODE", "p1", …]
                {
                    var parts = new List<string>();
                    foreach (var item in error.EnumerateArray()) parts.Add(XmlRpc.XapiValueText(ToValue(item, 1)));
                    if (parts.Count == 0) throw Malformed("the error array is empty");
                    return new XapiResult(false, null, parts);
                }
                case JsonValueKind.Object: // v2: {code, message: "CODE", data: [params]}
                {
                    var parts = new List<string>();
                    if (error.TryGetProperty("message", out var message) && message.ValueKind == JsonValueKind.String)
                        parts.Add(message.GetString()!);
                    else throw Malformed("the error object has no message");
                    if (error.TryGetProperty("data", out var data))
                    {
                        if (data.ValueKind == JsonValueKind.Array)
                            foreach (var item in data.EnumerateArray()) parts.Add(XmlRpc.XapiValueText(ToValue(item, 1)));
                        else if (data.ValueKind != JsonValueKind.Null)
                            parts.Add(XmlRpc.XapiValueText(ToValue(data, 1)));
                    }
                    return new XapiResult(false, null, parts);
                }
                case JsonValueKind.String:
                    return new XapiResult(false, null, new[] { error.GetString()! });
                default:
                    throw Malformed($"unexpected error member {error.GetRawText()}");
            }
        }
        if (!root.TryGetProperty("result", out var result))
            throw Malformed("the response has neither result nor error");
        return new XapiResult(true, ToValue(result, 0), null);
    }

    private static object? ToValue(JsonElement e, int depth)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.String: return e.GetString();
            case JsonValueKind.True: return true;
            case JsonValueKind.False: return false;
            case JsonValueKind.Null: return null;
            case JsonValueKind.Number:
                if (e.TryGetInt64(out var l)) return l;
                if (e.TryGetDouble(out var d)) return d;
                throw Malformed($"number {e.GetRawText()} is out of range");
            case JsonValueKind.Array:
            {
                CheckDepth(depth + 1);
                var items = new object?[e.GetArrayLength()];
                var i = 0;
                foreach (var item in e.EnumerateArray()) items[i++] = ToValue(item, depth + 1);
                return items;
            }
            case JsonValueKind.Object:
            {
                CheckDepth(depth + 1);
                var members = new Dictionary<string, object?>(StringComparer.Ordinal);
                foreach (var prop in e.EnumerateObject()) members[prop.Name] = ToValue(prop.Value, depth + 1);
                return members;
            }
            default:
                throw Malformed($"unexpected JSON {e.ValueKind}");
        }
    }

    private static void CheckDepth(int depth)
    {
        if (depth > WireLimits.MaxNestingDepth)
            throw new XapiWireException($"Malformed JSON-RPC: arrays/objects nest deeper than {WireLimits.MaxNestingDepth} levels; the document is rejected as hostile.");
    }

    private static XapiWireException Malformed(string what) => new($"Malformed JSON-RPC: {what}.");
}
