namespace VProtect.Core.Xapi.Records;

/// <summary>Implemented by every typed record so generic getters know the XAPI class name.</summary>
public interface IXapiRecord
{
    /// <summary>The XAPI class name as used in method names, e.g. <c>VM</c>, <c>VDI</c>, <c>network</c>.</summary>
    static abstract string XapiClass { get; }
}

/// <summary>
/// A XAPI object's record: its ref, the raw field map as decoded from the wire, and typed accessors for the fields
/// backup and restore use. Missing fields read as defaults, so records from older hosts still load.
/// </summary>
public abstract class XapiRecord
{
    private IReadOnlyDictionary<string, object?> _raw = new Dictionary<string, object?>();

    public string OpaqueRef { get; private set; } = "";
    public IReadOnlyDictionary<string, object?> Raw => _raw;

    public string Uuid => Str("uuid");

    internal void Load(string opaqueRef, IReadOnlyDictionary<string, object?> raw)
    {
        OpaqueRef = opaqueRef;
        _raw = raw;
    }

    /// <summary>Builds a typed record from a ref and the raw struct returned by get_record / get_all_records.</summary>
    public static T Create<T>(string opaqueRef, IReadOnlyDictionary<string, object?> raw) where T : XapiRecord, new()
    {
        var record = new T();
        record.Load(opaqueRef, raw);
        return record;
    }

    protected object? Field(string name) => _raw.TryGetValue(name, out var v) ? v : null;
    protected string Str(string name) => XapiValue.AsString(Field(name));
    protected long Long(string name) => XapiValue.AsLong(Field(name), name);
    protected bool Bool(string name) => XapiValue.AsBool(Field(name), name);
    protected double Double(string name) => XapiValue.AsDouble(Field(name), name);
    protected DateTime Date(string name) => XapiValue.AsDateTime(Field(name), name);
    protected IReadOnlyList<string> List(string name) => XapiValue.AsStringList(Field(name), name);
    protected IReadOnlyDictionary<string, string> Map(string name) => XapiValue.AsStringMap(Field(name), name);

    public override string ToString() => $"{GetType().Name.Replace("Record", "")} {OpaqueRef} {Uuid}";
}
