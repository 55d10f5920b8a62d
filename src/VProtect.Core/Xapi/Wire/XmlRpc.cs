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
public static partial class XmlRpc
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
}
