using System.Globalization;
using VProtect.Simulator.Database;

namespace VProtect.Simulator.Xapi;

/// <summary>Which simulated host's listener a call arrived on (resolved to a host ref at use: refs change on reset).</summary>
internal sealed record CallOrigin(bool IsMaster)
{
    public static readonly CallOrigin Internal = new(true);
}

/// <summary>
/// One decoded call: the session (when the method takes one) and the remaining arguments, with coercions
/// for values that arrive untyped (XML-RPC sends int64 as strings, so "1024" must be read as a number).
/// </summary>
internal sealed class CallContext
{
    public CallContext(string method, string? session, object?[] args, CallOrigin origin, CancellationToken ct)
    {
        Method = method;
        Session = session;
        Args = args;
        Origin = origin;
        CancellationToken = ct;
    }

    public string Method { get; }
    public string? Session { get; }
    /// <summary>The arguments after the session.</summary>
    public object?[] Args { get; }
    public CallOrigin Origin { get; }
    public CancellationToken CancellationToken { get; }
    /// <summary>The task this call runs under when called as Async.*, else null.</summary>
    public string? TaskRef { get; init; }

    public int Count => Args.Length;
    public string Str(int i) => ToStr(Args[i]);
    public long Long(int i) => ToLong(Args[i], Method);
    public double Double(int i) => ToDouble(Args[i], Method);
    public bool Bool(int i) => ToBool(Args[i], Method);
    public Dictionary<string, object?> Map(int i) => Args[i] as Dictionary<string, object?> ?? throw new XapiError("FIELD_TYPE_ERROR", $"argument {i + 1} of {Method} must be a struct");
    public List<string> Set(int i) => Args[i] switch
    {
        object?[] a => a.Select(ToStr).ToList(),
        "" or null => new List<string>(),
        var v => throw new XapiError("FIELD_TYPE_ERROR", $"argument {i + 1} of {Method} must be an array, not {v.GetType().Name}"),
    };

    public static string ToStr(object? v) => v switch
    {
        null => "",
        string s => s,
        bool b => b ? "true" : "false",
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => v.ToString() ?? "",
    };

    public static long ToLong(object? v, string field) => v switch
    {
        long l => l,
        int i => i,
        double d when d == Math.Floor(d) => (long)d,
        string s when long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out var l) => l,
        _ => throw new XapiError("FIELD_TYPE_ERROR", field),
    };

    public static double ToDouble(object? v, string field) => v switch
    {
        double d => d,
        long l => l,
        int i => i,
        string s when double.TryParse(s, NumberStyles.Float, CultureInfo.InvariantCulture, out var d) => d,
        _ => throw new XapiError("FIELD_TYPE_ERROR", field),
    };

    public static bool ToBool(object? v, string field) => v switch
    {
        bool b => b,
        string s when s is "true" or "1" or "True" => true,
        string s when s is "false" or "0" or "False" => false,
        long l => l != 0,
        _ => throw new XapiError("FIELD_TYPE_ERROR", field),
    };

    /// <summary>Converts a wire value to the stored type of a field (for set_*, constructors, reloads).</summary>
    public static object? Coerce(FieldSpec f, object? v) => f.Type switch
    {
        FieldType.Int => ToLong(v, f.Name),
        FieldType.Float => ToDouble(v, f.Name),
        FieldType.Bool => ToBool(v, f.Name),
        FieldType.DateTime => v switch
        {
            DateTime d => d,
            string s when s.Length == 0 => DateTime.UnixEpoch,
            string s when VProtect.Core.Xapi.Wire.XapiDateTime.TryParse(s, out var d) => d,
            _ => throw new XapiError("FIELD_TYPE_ERROR", f.Name),
        },
        FieldType.RefSet or FieldType.StringSet => v switch
        {
            object?[] a => a.Select(x => (object?)ToStr(x)).ToArray(),
            "" or null => Array.Empty<object?>(),
            _ => throw new XapiError("FIELD_TYPE_ERROR", f.Name),
        },
        FieldType.Map => v switch
        {
            Dictionary<string, object?> m => m.ToDictionary(kv => kv.Key, kv => (object?)ToStr(kv.Value), StringComparer.Ordinal),
            "" or null => new Dictionary<string, object?>(),
            _ => throw new XapiError("FIELD_TYPE_ERROR", f.Name),
        },
        FieldType.Ref => v is string s && s.Length > 0 ? s : Schema.NullRef,
        _ => ToStr(v),
    };
}
