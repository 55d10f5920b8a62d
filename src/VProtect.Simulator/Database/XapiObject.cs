namespace VProtect.Simulator.Database;

/// <summary>One row of the simulator's object database. Field values are wire values
/// (string, long, bool, double, DateTime, object?[], Dictionary&lt;string, object?&gt;).</summary>
internal sealed class XapiObject
{
    public XapiObject(string cls, string reference, Dictionary<string, object?> fields)
    {
        Class = cls;
        Ref = reference;
        Fields = fields;
    }

    public string Class { get; }
    public string Ref { get; }
    public Dictionary<string, object?> Fields { get; }

    public string Uuid => (string)Fields["uuid"]!;

    public string Str(string field) => Fields.TryGetValue(field, out var v) && v is string s ? s : "";
    public long Long(string field) => Fields.TryGetValue(field, out var v) && v is long l ? l : 0;
    public bool Bool(string field) => Fields.TryGetValue(field, out var v) && v is bool b && b;
    public Dictionary<string, object?> Map(string field) => Fields.TryGetValue(field, out var v) && v is Dictionary<string, object?> m ? m : (Dictionary<string, object?>)(Fields[field] = new Dictionary<string, object?>());
    public IEnumerable<string> Set(string field) => Fields.TryGetValue(field, out var v) && v is object?[] a ? a.OfType<string>() : [];
}
