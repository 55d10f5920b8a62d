namespace VProtect.Core.Formats.Xva;

/// <summary>
/// Builds ova.xml metadata from live XAPI records the way xapi's export does: each exported object gets a
/// <c>Ref:n</c> id from a counter, and every <c>OpaqueRef:…</c> value in every record is rewritten to the export id
/// of that object, or to <c>OpaqueRef:NULL</c> when the object is not part of the export. Map keys are left alone.
/// Used by the simulator's /export; a restore does the reverse with <see cref="XvaMetadata.Find"/>.
/// </summary>
public sealed class XvaMetadataBuilder
{
    private const string NullRef = "OpaqueRef:NULL";
    private readonly List<(string Class, string Ref, IReadOnlyDictionary<string, object?> Record)> _objects = new();
    private readonly Dictionary<string, string> _ids = new(StringComparer.Ordinal);
    private long _next;

    /// <param name="firstId">First counter value. xapi's counter is process-wide and never reset, so real ids are often large.</param>
    public XvaMetadataBuilder(long firstId = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(firstId);
        _next = firstId;
    }

    /// <summary>Adds an object (by its opaque ref) and returns its export id; adding the same ref twice returns the same id.</summary>
    public string Add(string className, string opaqueRef, IReadOnlyDictionary<string, object?> record)
    {
        ArgumentException.ThrowIfNullOrEmpty(className);
        ArgumentException.ThrowIfNullOrEmpty(opaqueRef);
        ArgumentNullException.ThrowIfNull(record);
        if (_ids.TryGetValue(opaqueRef, out var existing)) return existing;
        string id = "Ref:" + _next++;
        _ids[opaqueRef] = id;
        _objects.Add((className, opaqueRef, record));
        return id;
    }

    /// <summary>The export id given to <paramref name="opaqueRef"/>, or null if it is not in the export.</summary>
    public string? ExportIdOf(string opaqueRef) => _ids.GetValueOrDefault(opaqueRef);

    /// <summary>The metadata with every reference rewritten.</summary>
    public XvaMetadata Build(XvaVersion version) =>
        new(version, _objects.Select(o => new XvaObject(o.Class, _ids[o.Ref], (Dictionary<string, object?>)Rewrite(o.Record, 0)!)));

    private object? Rewrite(object? value, int depth)
    {
        if (depth > 64) throw new ArgumentException("A record nests deeper than 64 levels; XAPI records never do.");
        return value switch
        {
            string s when s.StartsWith("OpaqueRef:", StringComparison.Ordinal) => _ids.GetValueOrDefault(s, NullRef),
            IReadOnlyDictionary<string, object?> d => d.ToDictionary(kv => kv.Key, kv => Rewrite(kv.Value, depth + 1), StringComparer.Ordinal),
            object?[] a => a.Select(v => Rewrite(v, depth + 1)).ToArray(),
            _ => value,
        };
    }
}
