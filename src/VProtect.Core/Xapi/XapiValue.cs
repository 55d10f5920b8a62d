using System.Globalization;
using VProtect.Core.Xapi.Wire;

namespace VProtect.Core.Xapi;

/// <summary>
/// Converts decoded wire values to .NET types in one place. The same field arrives differently per protocol
/// (an int64 is a string over XML-RPC and a number over JSON; a datetime is typed over XML-RPC and a string over JSON).
/// Missing (null) values convert to the type's default.
/// </summary>
public static class XapiValue
{
    public static string AsString(object? value) => value switch
    {
        null => "",
        string s => s,
        _ => XmlRpcText(value),
    };

    public static long AsLong(object? value, string field = "value") => value switch
    {
        null => 0,
        long l => l,
        int i => i,
        double d when d == Math.Floor(d) && Math.Abs(d) < 9.2e18 => (long)d,
        string s when s.Length == 0 => 0,
        string s when long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var l) => l,
        string s when double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) && d == Math.Floor(d) => (long)d,
        _ => throw Unexpected(field, value, "an integer"),
    };

    public static bool AsBool(object? value, string field = "value") => value switch
    {
        null => false,
        bool b => b,
        string s when s is "true" or "1" => true,
        string s when s is "false" or "0" or "" => false,
        long l => l != 0,
        _ => throw Unexpected(field, value, "a boolean"),
    };

    public static double AsDouble(object? value, string field = "value") => value switch
    {
        null => 0,
        double d => d,
        long l => l,
        int i => i,
        string s when s.Length == 0 => 0,
        string s when XmlRpcDouble(s, out var d) => d,
        _ => throw Unexpected(field, value, "a number"),
    };

    /// <summary>UTC; an empty or missing value is <see cref="DateTime.UnixEpoch"/> (xapi's "never").</summary>
    public static DateTime AsDateTime(object? value, string field = "value") => value switch
    {
        null => DateTime.UnixEpoch,
        DateTime dt => dt.Kind == DateTimeKind.Utc ? dt : dt.ToUniversalTime(),
        string s when s.Length == 0 => DateTime.UnixEpoch,
        string s when XapiDateTime.TryParse(s, out var dt) => dt,
        _ => throw Unexpected(field, value, "a datetime"),
    };

    public static IReadOnlyList<string> AsStringList(object? value, string field = "value") => value switch
    {
        null => Array.Empty<string>(),
        object?[] items => items.Select(AsString).ToArray(),
        string s when s.Length == 0 => Array.Empty<string>(),
        _ => throw Unexpected(field, value, "an array"),
    };

    public static IReadOnlyDictionary<string, string> AsStringMap(object? value, string field = "value") => value switch
    {
        null => new Dictionary<string, string>(),
        IReadOnlyDictionary<string, object?> d => d.ToDictionary(kv => kv.Key, kv => AsString(kv.Value), StringComparer.Ordinal),
        string s when s.Length == 0 => new Dictionary<string, string>(),
        _ => throw Unexpected(field, value, "a map"),
    };

    public static IReadOnlyDictionary<string, object?> AsStruct(object? value, string field = "value") => value switch
    {
        null => new Dictionary<string, object?>(),
        IReadOnlyDictionary<string, object?> d => d,
        _ => throw Unexpected(field, value, "a struct"),
    };

    /// <summary>True for the null reference (<c>OpaqueRef:NULL</c>) and for empty refs.</summary>
    public static bool IsNullRef(string? opaqueRef) => string.IsNullOrEmpty(opaqueRef) || opaqueRef == NullRef;

    public const string NullRef = "OpaqueRef:NULL";

    private static string XmlRpcText(object value) => value switch
    {
        bool b => b ? "true" : "false",
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        DateTime dt => XapiDateTime.Format(dt),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => value.ToString() ?? "",
    };

    private static bool XmlRpcDouble(string s, out double d) =>
        double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out d);

    private static XapiWireException Unexpected(string field, object value, string expected) =>
        new($"XAPI field '{field}' holds a {value.GetType().Name} ('{value}'), not {expected}; the host's API does not match this client.");
}
