using VProtect.Core.Xapi.Wire;

namespace VProtect.Core.Formats.Xva;

/// <summary>
/// ova.xml is the XML-RPC value encoding of <c>{version, objects}</c>. This maps it to and from
/// <see cref="XvaMetadata"/> with the shared XML-RPC codec (which prohibits DTDs and bounds nesting).
/// </summary>
public static class XvaMetadataXml
{
    /// <summary>The ova.xml text for <paramref name="metadata"/>.</summary>
    public static string Encode(XvaMetadata metadata)
    {
        var v = metadata.Version;
        var version = new Dictionary<string, object?>
        {
            ["hostname"] = v.Hostname,
            ["date"] = v.Date,
            ["product_version"] = v.ProductVersion,
            ["product_brand"] = v.ProductBrand,
            ["build_number"] = v.BuildNumber,
            ["xapi_major"] = v.XapiMajor,
            ["xapi_minor"] = v.XapiMinor,
            ["export_vsn"] = v.ExportVersion,
        };
        var objects = metadata.Objects.Select(o => (object?)new Dictionary<string, object?>
        {
            ["class"] = o.Class,
            ["id"] = o.Id,
            ["snapshot"] = o.Snapshot as Dictionary<string, object?> ?? new Dictionary<string, object?>(o.Snapshot),
        }).ToArray();
        return XmlRpc.EncodeValue(new Dictionary<string, object?> { ["version"] = version, ["objects"] = objects });
    }

    /// <summary>Parses ova.xml text. <paramref name="source"/> and <paramref name="offset"/> name where it came from in errors.</summary>
    /// <exception cref="BackupFormatException">Not well formed, too deeply nested, or not shaped like an XVA's ova.xml.</exception>
    public static XvaMetadata Decode(string xml, string source, long offset)
    {
        object? root;
        try
        {
            root = XmlRpc.DecodeValue(xml);
        }
        catch (Exception ex) when (ex is not OperationCanceledException and not OutOfMemoryException)
        {
            throw new BackupFormatException(source, offset, $"ova.xml is not a valid XML-RPC value ({ex.Message}). The backup's metadata is damaged; take a new backup.", ex);
        }
        BackupFormatException Bad(string what) =>
            new(source, offset, $"ova.xml {what}. This is not an XVA xapi or Xen Orchestra would write; take a new backup.");

        if (root is not Dictionary<string, object?> top) throw Bad("is not a struct");
        if (!top.TryGetValue("version", out var versionValue) || versionValue is not Dictionary<string, object?> ver)
            throw Bad("has no 'version' struct");
        if (!top.TryGetValue("objects", out var objectsValue) || objectsValue is not object?[] objs)
            throw Bad("has no 'objects' array");

        var version = new XvaVersion
        {
            Hostname = Str(ver, "hostname") ?? "",
            Date = Str(ver, "date") ?? "",
            ProductVersion = Str(ver, "product_version") ?? "",
            ProductBrand = Str(ver, "product_brand") ?? "",
            BuildNumber = Str(ver, "build_number") ?? "",
            XapiMajor = Int(ver, "xapi_major") ?? throw Bad("version has no integer 'xapi_major'"),
            XapiMinor = Int(ver, "xapi_minor") ?? throw Bad("version has no integer 'xapi_minor'"),
            // Absent before export_vsn existed: version 0.
            ExportVersion = Int(ver, "export_vsn") ?? 0,
        };

        var objects = new List<XvaObject>(objs.Length);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        for (int i = 0; i < objs.Length; i++)
        {
            if (objs[i] is not Dictionary<string, object?> o) throw Bad($"object #{i} is not a struct");
            string cls = Str(o, "class") ?? throw Bad($"object #{i} has no 'class'");
            string id = Str(o, "id") ?? throw Bad($"object #{i} has no 'id'");
            if (!seen.Add(id)) throw Bad($"uses export id '{id}' twice");
            if (!o.TryGetValue("snapshot", out var snap) || snap is not Dictionary<string, object?> record)
                throw Bad($"object {id} ({cls}) has no 'snapshot' struct");
            objects.Add(new XvaObject(cls, id, record));
        }
        return new XvaMetadata(version, objects);
    }

    private static string? Str(Dictionary<string, object?> d, string key) => d.TryGetValue(key, out var v) ? v as string : null;

    private static long? Int(Dictionary<string, object?> d, string key) =>
        new XvaObject("", "", d).GetInt64(key);
}
