namespace VProtect.Simulator.DataPlane.Nbd;

/// <summary>
/// The export name xapi-nbd accepts: <c>/&lt;vdi-uuid&gt;?session_id=&lt;ref&gt;</c>, read as a URI (path without its
/// leading "/" = VDI uuid, query <c>session_id</c>; xen-api ocaml/nbd/src/main.ml, xapi_vdi.ml get_nbd_info).
/// </summary>
internal readonly record struct XapiNbdExportName(string VdiUuid, string SessionRef)
{
    public static bool TryParse(string name, out XapiNbdExportName parsed)
    {
        parsed = default;
        if (string.IsNullOrEmpty(name)) return false;
        int q = name.IndexOf('?');
        string path = q < 0 ? name : name[..q];
        string query = q < 0 ? "" : name[(q + 1)..];
        string uuid = Uri.UnescapeDataString(path.StartsWith('/') ? path[1..] : path);
        string? session = null;
        foreach (var pair in query.Split('&', StringSplitOptions.RemoveEmptyEntries))
        {
            int eq = pair.IndexOf('=');
            if (eq <= 0) continue;
            if (Uri.UnescapeDataString(pair[..eq]) == "session_id") session = Uri.UnescapeDataString(pair[(eq + 1)..]);
        }
        if (uuid.Length == 0 || string.IsNullOrEmpty(session)) return false;
        parsed = new XapiNbdExportName(uuid, session);
        return true;
    }
}
