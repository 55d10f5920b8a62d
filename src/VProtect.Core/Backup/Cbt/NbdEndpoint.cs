using System.Net;
using VProtect.Core.Nbd;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;

namespace VProtect.Core.Backup.Cbt;

/// <summary>
/// One entry of <c>VDI.get_nbd_info</c>: where xapi-nbd serves a VDI, and the certificate to pin (null when the pool
/// serves NBD without TLS).
/// </summary>
public sealed record NbdEndpoint(string Address, int Port, string ExportName, string? CertificatePem, string? Subject)
{
    /// <summary>
    /// The VDI's NBD endpoints; empty when no network has the nbd or insecure_nbd purpose. get_nbd_info hands out the
    /// host certificate whatever the purpose, while xapi-nbd decides TLS per connection from the pool's network
    /// purposes (only <c>nbd</c>: TLS required; only <c>insecure_nbd</c>: no TLS). So the purposes decide here too:
    /// with insecure_nbd alone (an administrator's explicit choice) the endpoints carry no certificate and the client
    /// connects in plain; otherwise TLS pinned to the certificate. A server refusing STARTTLS is never downgraded.
    /// </summary>
    public static async Task<IReadOnlyList<NbdEndpoint>> GetAsync(XapiSession session, string vdiRef, CancellationToken ct)
    {
        var result = await session.CallAsync("VDI.get_nbd_info", new object?[] { vdiRef }, ct).ConfigureAwait(false);
        var list = new List<NbdEndpoint>();
        if (result is not object?[] entries || entries.Length == 0) return list;
        bool plain = await PoolServesPlainNbdAsync(session, ct).ConfigureAwait(false);
        foreach (var entry in entries)
        {
            if (entry is not IReadOnlyDictionary<string, object?> map) continue;
            string Get(string key) => map.TryGetValue(key, out var v) ? XapiValue.AsString(v) : "";
            var port = map.TryGetValue("port", out var p) ? (int)XapiValue.AsLong(p, "port") : 10809;
            var cert = Get("cert");
            list.Add(new NbdEndpoint(Get("address"), port, Get("exportname"), cert.Length == 0 || plain ? null : cert, Get("subject")));
        }
        return list;
    }

    /// <summary>True when some network has insecure_nbd and none has nbd (xapi-nbd then serves without TLS).</summary>
    private static async Task<bool> PoolServesPlainNbdAsync(XapiSession session, CancellationToken ct)
    {
        var networks = await session.GetAllRecordsAsync<NetworkRecord>(ct).ConfigureAwait(false);
        bool secure = networks.Any(n => n.Purpose.Contains("nbd")), insecure = networks.Any(n => n.Purpose.Contains("insecure_nbd"));
        return insecure && !secure;
    }

    /// <summary>Client options for this endpoint: TLS pinned to the host's certificate and subject when the host gave one.</summary>
    public NbdClientOptions ToClientOptions(int connections)
    {
        if (!IPAddress.TryParse(Address, out var ip))
            throw new InvalidOperationException($"VDI.get_nbd_info returned '{Address}', which is not an IP address; check the NBD network's PIF configuration.");
        return new NbdClientOptions(new IPEndPoint(ip, Port), ExportName)
        {
            Tls = CertificatePem is null ? NbdTlsOptions.Insecure : NbdTlsOptions.Pinned(CertificatePem, Subject ?? ""),
            Connections = Math.Max(1, connections),
        };
    }
}
