using System.Globalization;
using System.Text;
using System.Xml;

namespace VProtect.Core.Xapi.Wire;

/// <summary>XML-RPC decoding: XmlReader with DTDs prohibited, no resolver, nesting bounded by <see cref="WireLimits.MaxNestingDepth"/>.</summary>
public static partial class XmlRpc
{

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
