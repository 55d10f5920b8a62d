using System.Collections;
using System.Globalization;
using System.Text;
using System.Xml;

namespace VProtect.Core.Xapi.Wire;

/// <summary>
/// XML-RPC as xapi speaks it. Values are plain .NET objects: <see cref="string"/>, <see cref="long"/>, <see cref="bool"/>,
/// <see cref="double"/>, <see cref="DateTime"/> (UTC), <c>object?[]</c> (array/set) and
/// <c>Dictionary&lt;string, object?&gt;</c> (struct/map/record).
/// Encoding follows xapi: strings and integers go out untyped (<c>&lt;value&gt;42&lt;/value&gt;</c>), null as the empty string.
/// Decoding never invents types: an untyped value is a string, so int64 fields arrive as strings (see <c>XapiValue</c>).
/// Parsing prohibits DTDs and external entities and rejects nesting deeper than <see cref="WireLimits.MaxNestingDepth"/>.
/// </summary>
public static class XmlRpc
{
    private const string XmlDeclaration = "<?xml version=\"1.0\"?>";

    // ---------------------------------------------------------------- encoding

    public static string EncodeMethodCall(string method, IReadOnlyList<object?> args)
    {
        ArgumentNullException.ThrowIfNull(method);
        ArgumentNullException.ThrowIfNull(args);
        var sb = new StringBuilder(256);
        sb.Append(XmlDeclaration).Append("<methodCall><methodName>");
        AppendEscaped(sb, method);
        sb.Append("</methodName><params>");
        foreach (var arg in args)
        {
            sb.Append("<param>");
            AppendValue(sb, arg, 0);
            sb.Append("</param>");
        }
        sb.Append("</params></methodCall>");
        return sb.ToString();
    }

    /// <summary>A <c>&lt;methodResponse&gt;</c> whose struct has Status=Success and Value (null encodes as xapi's void, the empty string).</summary>
    public static string EncodeSuccess(object? value)
    {
        var sb = new StringBuilder(256);
        sb.Append(XmlDeclaration).Append("<methodResponse><params><param><value><struct>")
          .Append("<member><name>Status</name><value>Success</value></member><member><name>Value</name>");
        AppendValue(sb, value, 1);
        sb.Append("</member></struct></value></param></params></methodResponse>");
        return sb.ToString();
    }

    /// <summary>A <c>&lt;methodResponse&gt;</c> whose struct has Status=Failure and ErrorDescription [code, params…].</summary>
    public static string EncodeFailure(IReadOnlyList<string> errorDescription)
    {
        ArgumentNullException.ThrowIfNull(errorDescription);
        var sb = new StringBuilder(256);
        sb.Append(XmlDeclaration).Append("<methodResponse><params><param><value><struct>")
          .Append("<member><name>Status</name><value>Failure</value></member><member><name>ErrorDescription</name>");
        AppendValue(sb, errorDescription, 1);
        sb.Append("</member></struct></value></param></params></methodResponse>");
        return sb.ToString();
    }

    /// <summary>A <c>&lt;value&gt;…&lt;/value&gt;</c> fragment in xapi style (as in task.result and ova.xml).</summary>
    public static string EncodeValue(object? value)
    {
        var sb = new StringBuilder(64);
        AppendValue(sb, value, 0);
        return sb.ToString();
    }

    /// <summary>Appends a value fragment to <paramref name="sb"/>; lets big documents (ova.xml) avoid intermediate strings.</summary>
    public static void AppendValue(StringBuilder sb, object? value) => AppendValue(sb, value, 0);

    private static void AppendValue(StringBuilder sb, object? value, int depth)
    {
        sb.Append("<value>");
        switch (value)
        {
            case null:
                break; // xapi has no null; void is the empty string
            case string s:
                AppendEscaped(sb, s);
                break;
            case bool b:
                sb.Append(b ? "<boolean>1</boolean>" : "<boolean>0</boolean>");
                break;
            case long or int or short or sbyte or byte or ushort or uint or ulong:
                sb.Append(((IFormattable)value).ToString(null, CultureInfo.InvariantCulture));
                break;
            case double d:
                sb.Append("<double>").Append(FormatDouble(d)).Append("</double>");
                break;
            case float f:
                sb.Append("<double>").Append(FormatDouble(f)).Append("</double>");
                break;
            case decimal m:
                sb.Append("<double>").Append(m.ToString(CultureInfo.InvariantCulture)).Append("</double>");
                break;
            case DateTime dt:
                sb.Append("<dateTime.iso8601>").Append(XapiDateTime.Format(dt)).Append("</dateTime.iso8601>");
                break;
            case DateTimeOffset dto:
                sb.Append("<dateTime.iso8601>").Append(XapiDateTime.Format(dto.UtcDateTime)).Append("</dateTime.iso8601>");
                break;
            case Enum e:
                AppendEscaped(sb, e.ToString());
                break;
            case byte[] bytes:
                sb.Append("<base64>").Append(Convert.ToBase64String(bytes)).Append("</base64>");
                break;
            case IDictionary dict:
                EnterContainer(depth);
                sb.Append("<struct>");
                foreach (DictionaryEntry entry in dict)
                    AppendMember(sb, entry.Key, entry.Value, depth + 1);
                sb.Append("</struct>");
                break;
            case IEnumerable<KeyValuePair<string, object?>> pairs:
                EnterContainer(depth);
                sb.Append("<struct>");
                foreach (var pair in pairs)
                    AppendMember(sb, pair.Key, pair.Value, depth + 1);
                sb.Append("</struct>");
                break;
            case IEnumerable items:
                EnterContainer(depth);
                sb.Append("<array><data>");
                foreach (var item in items)
                    AppendValue(sb, item, depth + 1);
                sb.Append("</data></array>");
                break;
            default:
                throw new ArgumentException(
                    $"Cannot encode a {value.GetType().FullName} as an XAPI value; pass a string, integer, bool, double, DateTime, array or string-keyed dictionary.");
        }
        sb.Append("</value>");
    }

    private static void EnterContainer(int depth)
    {
        if (depth >= WireLimits.MaxNestingDepth)
            throw new ArgumentException($"The value nests arrays/structs deeper than {WireLimits.MaxNestingDepth} levels (a cycle?); XAPI values are shallow.");
    }

    private static void AppendMember(StringBuilder sb, object? key, object? value, int depth)
    {
        var name = key switch
        {
            string s => s,
            IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
            null => throw new ArgumentException("A struct member name cannot be null."),
            _ => key.ToString() ?? "",
        };
        sb.Append("<member><name>");
        AppendEscaped(sb, name);
        sb.Append("</name>");
        AppendValue(sb, value, depth);
        sb.Append("</member>");
    }

    internal static string FormatDouble(double d)
    {
        // OCaml's %.16g spells the specials nan/inf/-inf; "R" round-trips every finite double.
        if (double.IsNaN(d)) return "nan";
        if (double.IsPositiveInfinity(d)) return "inf";
        if (double.IsNegativeInfinity(d)) return "-inf";
        return d.ToString("R", CultureInfo.InvariantCulture);
    }

    internal static bool TryParseDouble(string text, out double d)
    {
        switch (text.Trim().ToLowerInvariant())
        {
            case "nan": d = double.NaN; return true;
            case "inf" or "+inf" or "infinity": d = double.PositiveInfinity; return true;
            case "-inf" or "-infinity": d = double.NegativeInfinity; return true;
        }
        return double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out d);
    }

    private static void AppendEscaped(StringBuilder sb, string text)
    {
        for (var i = 0; i < text.Length; i++)
        {
            var c = text[i];
            switch (c)
            {
                case '&': sb.Append("&amp;"); break;
                case '<': sb.Append("&lt;"); break;
                case '>': sb.Append("&gt;"); break;
                case '\r': sb.Append("&#13;"); break; // a raw CR would be normalised away by the parser
                case '\t' or '\n': sb.Append(c); break;
                case < ' ' or '\uFFFE' or '\uFFFF':
                    throw new ArgumentException(
                        $"The text contains U+{(int)c:X4}, which XML 1.0 cannot carry; remove control characters before sending it to XAPI.");
                default:
                    if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
                    {
                        sb.Append(c).Append(text[++i]);
                    }
                    else if (char.IsSurrogate(c))
                    {
                        throw new ArgumentException("The text contains a lone UTF-16 surrogate, which XML cannot carry.");
                    }
                    else sb.Append(c);
                    break;
            }
        }
    }

    // ---------------------------------------------------------------- decoding

    public static XapiCall DecodeMethodCall(string xml)
    {
        ArgumentNullException.ThrowIfNull(xml);
        return Parse(xml, DecodeMethodCall);
    }

    public static XapiResult DecodeResponse(string xml)
    {
        ArgumentNullException.ThrowIfNull(xml);
        return Parse(xml, DecodeResponse);
    }

    /// <summary>Decodes a response straight from a stream (large get_all_records answers need no intermediate string).</summary>
    public static XapiResult DecodeResponse(Stream xml)
    {
        ArgumentNullException.ThrowIfNull(xml);
        return Parse(xml, DecodeResponse);
    }

    /// <summary>
    /// Decodes one <c>&lt;value&gt;</c> fragment. The empty string decodes to "" because xapi's task.result is empty
    /// for some void methods.
    /// </summary>
    public static object? DecodeValue(string fragment)
    {
        ArgumentNullException.ThrowIfNull(fragment);
        if (string.IsNullOrWhiteSpace(fragment)) return "";
        return Parse(fragment, r =>
        {
            MoveToRoot(r, "value");
            var v = ReadValue(r, 0);
            ExpectDocumentEnd(r);
            return v;
        });
    }

    /// <summary>Decodes one <c>&lt;value&gt;</c> document from a stream (e.g. ova.xml read from a tar entry), without a string copy.</summary>
    public static object? DecodeValue(Stream fragment)
    {
        ArgumentNullException.ThrowIfNull(fragment);
        return Parse(fragment, r =>
        {
            MoveToRoot(r, "value");
            var v = ReadValue(r, 0);
            ExpectDocumentEnd(r);
            return v;
        });
    }

    internal static XmlReaderSettings ReaderSettings() => new()
    {
        DtdProcessing = DtdProcessing.Prohibit,
        XmlResolver = null,
        IgnoreComments = true,
        IgnoreProcessingInstructions = true,
        IgnoreWhitespace = false, // whitespace inside an untyped <value> is data
        MaxCharactersFromEntities = 1024,
        CloseInput = false,
    };

    private static T Parse<T>(string xml, Func<XmlReader, T> body)
    {
        using var sr = new StringReader(xml);
        using var reader = XmlReader.Create(sr, ReaderSettings());
        return Run(reader, body);
    }

    private static T Parse<T>(Stream xml, Func<XmlReader, T> body)
    {
        using var reader = XmlReader.Create(xml, ReaderSettings());
        return Run(reader, body);
    }

    private static T Run<T>(XmlReader reader, Func<XmlReader, T> body)
    {
        try
        {
            return body(reader);
        }
        catch (XmlException ex)
        {
            throw new XapiWireException($"Malformed XML-RPC: {ex.Message}", ex);
        }
    }

    private static XapiCall DecodeMethodCall(XmlReader r)
    {
        MoveToRoot(r, "methodCall");
        if (r.IsEmptyElement) throw Malformed("<methodCall> has no <methodName>");
        r.Read();
        SkipBlank(r);
        ExpectStart(r, "methodName");
        var method = ReadText(r);
        if (method.Length == 0) throw Malformed("<methodName> is empty");
        SkipBlank(r);
        var args = new List<object?>();
        if (r.NodeType == XmlNodeType.Element)
        {
            ExpectStart(r, "params");
            ReadParams(r, args);
            SkipBlank(r);
        }
        ExpectEnd(r, "methodCall");
        r.Read();
        ExpectDocumentEnd(r);
        return new XapiCall(method, args.ToArray());
    }

    private static void ReadParams(XmlReader r, List<object?> into)
    {
        if (r.IsEmptyElement) { r.Read(); return; }
        r.Read();
        while (true)
        {
            SkipBlank(r);
            if (r.NodeType == XmlNodeType.EndElement) { r.Read(); return; }
            ExpectStart(r, "param");
            if (r.IsEmptyElement) throw Malformed("<param> has no <value>");
            r.Read();
            SkipBlank(r);
            into.Add(ReadValue(r, 0));
            SkipBlank(r);
            ExpectEnd(r, "param");
            r.Read();
        }
    }

    private static XapiResult DecodeResponse(XmlReader r)
    {
        MoveToRoot(r, "methodResponse");
        if (r.IsEmptyElement) throw Malformed("<methodResponse> is empty");
        r.Read();
        SkipBlank(r);
        XapiResult result;
        if (r.NodeType == XmlNodeType.Element && r.LocalName == "fault")
        {
            // Standard XML-RPC fault: xapi never sends one, but a proxy or another server might.
            if (r.IsEmptyElement) throw Malformed("<fault> has no <value>");
            r.Read();
            SkipBlank(r);
            var fault = ReadValue(r, 0) as Dictionary<string, object?>;
            SkipBlank(r);
            ExpectEnd(r, "fault");
            r.Read();
            var code = fault is not null && fault.TryGetValue("faultCode", out var c) ? Convert.ToString(c, CultureInfo.InvariantCulture) : "";
            var text = fault is not null && fault.TryGetValue("faultString", out var t) ? Convert.ToString(t, CultureInfo.InvariantCulture) : "";
            result = new XapiResult(false, null, new[] { "XMLRPC_FAULT", code ?? "", text ?? "" });
        }
        else
        {
            var values = new List<object?>(1);
            ExpectStart(r, "params");
            ReadParams(r, values);
            if (values.Count != 1) throw Malformed($"a methodResponse must carry exactly one param, found {values.Count}");
            result = ToResult(values[0]);
        }
        SkipBlank(r);
        ExpectEnd(r, "methodResponse");
        r.Read();
        ExpectDocumentEnd(r);
        return result;
    }

    private static XapiResult ToResult(object? value)
    {
        if (value is not Dictionary<string, object?> envelope || !envelope.TryGetValue("Status", out var status) || status is not string s)
            throw Malformed("the response is not xapi's {Status, Value | ErrorDescription} struct");
        switch (s)
        {
            case "Success":
                return new XapiResult(true, envelope.TryGetValue("Value", out var v) ? v : "", null);
            case "Failure":
                if (!envelope.TryGetValue("ErrorDescription", out var e) || e is not object?[] items)
                    throw Malformed("a Failure response has no ErrorDescription array");
                var description = new string[items.Length];
                for (var i = 0; i < items.Length; i++)
                    description[i] = XapiValueText(items[i]);
                return new XapiResult(false, null, description);
            default:
                throw Malformed($"unknown Status '{s}' (expected Success or Failure)");
        }
    }

    internal static string XapiValueText(object? item) => item switch
    {
        null => "",
        string str => str,
        bool b => b ? "true" : "false",
        double d => FormatDouble(d),
        DateTime dt => XapiDateTime.Format(dt),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => item.ToString() ?? "",
    };

    private static object? ReadValue(XmlReader r, int depth)
    {
        ExpectStart(r, "value");
        if (r.IsEmptyElement) { r.Read(); return ""; }
        r.Read();
        StringBuilder? text = null;
        while (true)
        {
            switch (r.NodeType)
            {
                case XmlNodeType.Text or XmlNodeType.CDATA or XmlNodeType.Whitespace or XmlNodeType.SignificantWhitespace:
                    (text ??= new StringBuilder()).Append(r.Value);
                    r.Read();
                    break;
                case XmlNodeType.EndElement:
                    r.Read();
                    return text?.ToString() ?? ""; // untyped: a string (xapi's strings and int64s)
                case XmlNodeType.Element:
                    if (text is not null && !IsBlank(text))
                        throw Malformed($"text mixed with <{r.LocalName}> inside a <value>");
                    var typed = ReadTyped(r, depth);
                    SkipBlank(r);
                    ExpectEnd(r, "value");
                    r.Read();
                    return typed;
                default:
                    throw Malformed($"unexpected {r.NodeType} inside a <value>");
            }
        }
    }

    private static object? ReadTyped(XmlReader r, int depth)
    {
        var name = r.LocalName;
        switch (name)
        {
            case "string":
                return ReadText(r);
            case "i4" or "int" or "i8":
            {
                var text = ReadText(r).Trim();
                if (!long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var l))
                    throw Malformed($"<{name}> holds '{Truncate(text)}', not an integer");
                return l;
            }
            case "boolean":
            {
                var text = ReadText(r).Trim();
                return text switch
                {
                    "1" or "true" => true,
                    "0" or "false" => false,
                    _ => throw Malformed($"<boolean> holds '{Truncate(text)}', not 0 or 1"),
                };
            }
            case "double":
            {
                var text = ReadText(r);
                if (!TryParseDouble(text, out var d)) throw Malformed($"<double> holds '{Truncate(text)}', not a number");
                return d;
            }
            case "dateTime.iso8601":
            {
                var text = ReadText(r);
                if (!XapiDateTime.TryParse(text, out var dt)) throw Malformed($"<dateTime.iso8601> holds '{Truncate(text)}', not a date");
                return dt;
            }
            case "base64":
            {
                var text = ReadText(r);
                try { return Convert.FromBase64String(text); }
                catch (FormatException ex) { throw new XapiWireException("Malformed XML-RPC: <base64> is not valid base64.", ex); }
            }
            case "nil":
                ReadText(r);
                return null;
            case "array":
                return ReadArray(r, depth + 1);
            case "struct":
                return ReadStruct(r, depth + 1);
            default:
                throw Malformed($"unknown value type <{name}>");
        }
    }

    private static object?[] ReadArray(XmlReader r, int depth)
    {
        CheckDepth(depth);
        if (r.IsEmptyElement) { r.Read(); return Array.Empty<object?>(); }
        r.Read();
        SkipBlank(r);
        ExpectStart(r, "data");
        var items = new List<object?>();
        if (r.IsEmptyElement) r.Read();
        else
        {
            r.Read();
            while (true)
            {
                SkipBlank(r);
                if (r.NodeType == XmlNodeType.EndElement) { r.Read(); break; }
                items.Add(ReadValue(r, depth));
            }
        }
        SkipBlank(r);
        ExpectEnd(r, "array");
        r.Read();
        return items.ToArray();
    }

    private static Dictionary<string, object?> ReadStruct(XmlReader r, int depth)
    {
        CheckDepth(depth);
        var members = new Dictionary<string, object?>(StringComparer.Ordinal);
        if (r.IsEmptyElement) { r.Read(); return members; }
        r.Read();
        while (true)
        {
            SkipBlank(r);
            if (r.NodeType == XmlNodeType.EndElement) { r.Read(); return members; }
            ExpectStart(r, "member");
            if (r.IsEmptyElement) throw Malformed("<member> has no <name>");
            r.Read();
            SkipBlank(r);
            ExpectStart(r, "name");
            var name = ReadText(r);
            SkipBlank(r);
            members[name] = ReadValue(r, depth); // a repeated name keeps the last value, as a map would
            SkipBlank(r);
            ExpectEnd(r, "member");
            r.Read();
        }
    }

    private static void CheckDepth(int depth)
    {
        if (depth > WireLimits.MaxNestingDepth)
            throw new XapiWireException(
                $"Malformed XML-RPC: arrays/structs nest deeper than {WireLimits.MaxNestingDepth} levels; the document is rejected as hostile.");
    }

    /// <summary>Reads the text of a simple element (positioned on its start tag) and moves past its end tag.</summary>
    private static string ReadText(XmlReader r)
    {
        var name = r.LocalName;
        if (r.IsEmptyElement) { r.Read(); return ""; }
        r.Read();
        StringBuilder? text = null;
        while (r.NodeType != XmlNodeType.EndElement)
        {
            if (r.NodeType is XmlNodeType.Text or XmlNodeType.CDATA or XmlNodeType.Whitespace or XmlNodeType.SignificantWhitespace)
            {
                (text ??= new StringBuilder()).Append(r.Value);
                r.Read();
            }
            else throw Malformed($"<{name}> must hold only text, found {r.NodeType} {r.LocalName}");
        }
        r.Read();
        return text?.ToString() ?? "";
    }

    private static void MoveToRoot(XmlReader r, string name)
    {
        if (!r.Read()) throw Malformed("the document is empty");
        while (r.NodeType is XmlNodeType.XmlDeclaration or XmlNodeType.Whitespace or XmlNodeType.SignificantWhitespace)
            if (!r.Read()) throw Malformed("the document has no root element");
        if (r.NodeType == XmlNodeType.DocumentType) throw Malformed("a DTD is not allowed");
        ExpectStart(r, name);
    }

    private static void ExpectDocumentEnd(XmlReader r)
    {
        while (!r.EOF)
        {
            if (r.NodeType is XmlNodeType.Whitespace or XmlNodeType.SignificantWhitespace or XmlNodeType.None) { r.Read(); continue; }
            throw Malformed($"unexpected {r.NodeType} after the root element");
        }
    }

    private static void SkipBlank(XmlReader r)
    {
        while (true)
        {
            switch (r.NodeType)
            {
                case XmlNodeType.Whitespace or XmlNodeType.SignificantWhitespace:
                    r.Read();
                    break;
                case XmlNodeType.Text or XmlNodeType.CDATA:
                    if (!string.IsNullOrWhiteSpace(r.Value)) throw Malformed($"unexpected text '{Truncate(r.Value)}'");
                    r.Read();
                    break;
                default:
                    return;
            }
        }
    }

    private static void ExpectStart(XmlReader r, string name)
    {
        if (r.NodeType != XmlNodeType.Element || r.LocalName != name)
            throw Malformed($"expected <{name}>, found {Describe(r)}");
    }

    private static void ExpectEnd(XmlReader r, string name)
    {
        if (r.NodeType != XmlNodeType.EndElement || r.LocalName != name)
            throw Malformed($"expected </{name}>, found {Describe(r)}");
    }

    private static string Describe(XmlReader r) => r.NodeType switch
    {
        XmlNodeType.Element => $"<{r.LocalName}>",
        XmlNodeType.EndElement => $"</{r.LocalName}>",
        XmlNodeType.None => "the end of the document",
        _ => r.NodeType.ToString(),
    };

    private static bool IsBlank(StringBuilder sb)
    {
        foreach (var chunk in sb.GetChunks())
            foreach (var c in chunk.Span)
                if (!char.IsWhiteSpace(c)) return false;
        return true;
    }

    private static string Truncate(string s) => s.Length <= 40 ? s : s[..40] + "…";

    private static XapiWireException Malformed(string what) => new($"Malformed XML-RPC: {what}.");
}
