using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;

namespace VProtect.PowerShell.Backup;

/// <summary>A pool network and its NBD purpose, as Get-XenNbd / Enable-XenNbd write it.</summary>
public sealed class XenNbdNetwork
{
    public required string Network { get; init; }
    public required string Uuid { get; init; }
    /// <summary>nbd (TLS), insecure_nbd (plain), or empty when NBD is not served on this network.</summary>
    public required string Purpose { get; init; }
    public bool Enabled => Purpose.Length > 0;
    public bool Tls => Purpose == "nbd";
    public override string ToString() => $"{Network}: {(Enabled ? Purpose : "off")}";
}

internal static class NbdNetworks
{
    public static async Task<(string Ref, NetworkRecord Record)> ResolveAsync(XapiSession session, string network, CancellationToken ct)
    {
        if (Guid.TryParse(network, out _))
        {
            try
            {
                var r = await session.GetByUuidAsync("network", network, ct).ConfigureAwait(false);
                return (r, await session.GetRecordAsync<NetworkRecord>(r, ct).ConfigureAwait(false));
            }
            catch (XapiException ex) when (ex.ErrorCode == "UUID_INVALID") { }
        }
        var refs = await session.GetByNameLabelAsync("network", network, ct).ConfigureAwait(false);
        if (refs.Count == 0) throw new System.Management.Automation.ItemNotFoundException($"There is no network '{network}' in the pool; Get-XenNbd lists them.");
        if (refs.Count > 1) throw new ArgumentException($"Several networks are named '{network}'; give its uuid.");
        return (refs[0], await session.GetRecordAsync<NetworkRecord>(refs[0], ct).ConfigureAwait(false));
    }

    public static XenNbdNetwork Describe(NetworkRecord n) => new()
    {
        Network = n.NameLabel,
        Uuid = n.Uuid,
        Purpose = n.Purpose.FirstOrDefault(p => p is "nbd" or "insecure_nbd") ?? "",
    };
}
