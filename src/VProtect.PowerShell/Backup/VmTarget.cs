using System.Management.Automation;
using VProtect.Core.Xapi;

namespace VProtect.PowerShell.Backup;

/// <summary>Resolves what users pass as -VM: a name, a uuid, our XenPoolVM, or a XenServerPSModule VM (uuid / opaque_ref).</summary>
internal static class VmTarget
{
    public static string Describe(object value)
    {
        var v = value is PSObject p ? p.BaseObject : value;
        return v switch
        {
            string s => s,
            XenPoolVM vm => vm.Name,
            _ => Property(value, "name_label") ?? Property(value, "uuid") ?? v?.ToString() ?? "",
        };
    }

    /// <summary>The VM's opaque ref; a name must match exactly one VM.</summary>
    public static async Task<string> ResolveAsync(XapiSession session, object value, CancellationToken ct)
    {
        var v = value is PSObject p ? p.BaseObject : value;
        switch (v)
        {
            case XenPoolVM vm:
                return vm.OpaqueRef;
            case string s when Guid.TryParse(s, out _):
                try { return await session.GetByUuidAsync("VM", s, ct).ConfigureAwait(false); }
                catch (XapiException ex) when (ex.ErrorCode == "UUID_INVALID") { return await ByNameAsync(session, s, ct).ConfigureAwait(false); }
            case string s:
                return await ByNameAsync(session, s, ct).ConfigureAwait(false);
        }
        var opaqueRef = Property(value, "opaque_ref");
        if (!string.IsNullOrEmpty(opaqueRef)) return opaqueRef;
        var uuid = Property(value, "uuid") ?? Property(value, "Uuid");
        if (!string.IsNullOrEmpty(uuid)) return await session.GetByUuidAsync("VM", uuid, ct).ConfigureAwait(false);
        throw new ArgumentException($"-VM takes a VM name, a uuid, a Get-XenPoolVM object or a XenServerPSModule VM; got {v?.GetType().FullName ?? "null"}.");
    }

    private static async Task<string> ByNameAsync(XapiSession session, string name, CancellationToken ct)
    {
        var refs = await session.GetByNameLabelAsync("VM", name, ct).ConfigureAwait(false);
        var candidates = new List<string>();
        foreach (var r in refs)
        {
            var rec = await session.GetRecordAsync<Core.Xapi.Records.VmRecord>(r, ct).ConfigureAwait(false);
            if (!rec.IsASnapshot && !rec.IsATemplate && !rec.IsControlDomain) candidates.Add(r);
        }
        return candidates.Count switch
        {
            1 => candidates[0],
            0 => throw new ItemNotFoundException($"No VM named '{name}' in the pool. Run Get-XenPoolVM to list the VMs."),
            _ => throw new ArgumentException($"{candidates.Count} VMs are named '{name}'; pass the VM's uuid or its Get-XenPoolVM object."),
        };
    }

    private static string? Property(object value, string name) =>
        PSObject.AsPSObject(value).Properties[name]?.Value?.ToString();
}
