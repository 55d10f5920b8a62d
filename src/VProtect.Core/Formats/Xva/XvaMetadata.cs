using System.Globalization;

namespace VProtect.Core.Formats.Xva;

/// <summary>
/// The <c>version</c> struct at the top of ova.xml: which xapi wrote the export and in which layout
/// (<see cref="ExportVersion"/> 2 = inline checksums only).
/// </summary>
public sealed record XvaVersion
{
    public string Hostname { get; init; } = "localhost";
    /// <summary>Export date as xapi writes it (free text, e.g. <c>2026-11-27</c>).</summary>
    public string Date { get; init; } = "";
    public string ProductVersion { get; init; } = "";
    public string ProductBrand { get; init; } = "";
    public string BuildNumber { get; init; } = "";
    public long XapiMajor { get; init; } = 1;
    public long XapiMinor { get; init; } = 20;
    public long ExportVersion { get; init; } = XvaFormat.CurrentExportVersion;
}

/// <summary>
/// One exported object: its datamodel class (<c>VM</c>, <c>VDI</c>, <c>VBD</c>, ...), its export id (<c>Ref:n</c>) and
/// its full record with every reference rewritten to an export id or <c>OpaqueRef:NULL</c>.
/// Record values are as the XML-RPC codec gives them: string, long, bool, double, DateTime, object?[] or
/// Dictionary&lt;string, object?&gt;. xapi writes int64 fields as untyped strings, so use <see cref="GetInt64"/>.
/// </summary>
public sealed record XvaObject(string Class, string Id, IReadOnlyDictionary<string, object?> Snapshot)
{
    /// <summary>A string field, or null if absent or not a string.</summary>
    public string? GetString(string field) => Snapshot.TryGetValue(field, out var v) ? v as string : null;

    /// <summary>An integer field written either as <c>&lt;int&gt;</c> or as xapi's untyped decimal string; null if absent or not a number.</summary>
    public long? GetInt64(string field)
    {
        if (!Snapshot.TryGetValue(field, out var v)) return null;
        return v switch
        {
            long l => l,
            int i => i,
            string s when long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long p) => p,
            double d when d == Math.Floor(d) && Math.Abs(d) < 9e15 => (long)d,
            _ => null,
        };
    }
}

/// <summary>The VM metadata of an XVA (its ova.xml): a version and the exported objects.</summary>
public sealed class XvaMetadata
{
    private readonly Dictionary<string, XvaObject> _byId;

    /// <summary>Builds metadata; export ids must be unique.</summary>
    /// <exception cref="ArgumentException">Two objects share an id.</exception>
    public XvaMetadata(XvaVersion version, IEnumerable<XvaObject> objects)
    {
        Version = version;
        Objects = objects.ToList();
        _byId = new Dictionary<string, XvaObject>(StringComparer.Ordinal);
        foreach (var o in Objects)
            if (!_byId.TryAdd(o.Id, o))
                throw new ArgumentException($"Export id '{o.Id}' is used by two objects; each object needs its own Ref:n id.", nameof(objects));
    }

    public XvaVersion Version { get; }
    public IReadOnlyList<XvaObject> Objects { get; }

    /// <summary>The object with export id <paramref name="id"/>, or null.</summary>
    public XvaObject? Find(string id) => _byId.GetValueOrDefault(id);

    /// <summary>Objects of one datamodel class (case-sensitive, as xapi spells them: <c>VM</c>, <c>VDI</c>, <c>network</c>).</summary>
    public IEnumerable<XvaObject> OfClass(string className) => Objects.Where(o => o.Class == className);

    /// <summary>The exported VM (the first <c>VM</c> object), or null for a metadata-less stream.</summary>
    public XvaObject? Vm => OfClass("VM").FirstOrDefault();

    /// <summary>Exported VDIs in the order their data appears in the stream (lexicographic by id, as xapi orders them).</summary>
    public IReadOnlyList<XvaObject> Vdis => OfClass("VDI").OrderBy(o => o.Id, StringComparer.Ordinal).ToList();
}
