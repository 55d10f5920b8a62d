using System.Net;
using VProtect.Core.Nbd;
using VProtect.Core.Xapi;

namespace VProtect.Core.Backup.Cbt;

/// <summary>One entry of <c>VDI.get_nbd_info</c>: where xapi-nbd serves a VDI, and the certificate to pin.</summary>
public sealed record NbdEndpoint(string Address, int Port, string ExportName, string? CertificatePem, string? Subject)
{
    /// <summary>The VDI's NBD endpoints; empty when no network has the nbd or insecure_nbd purpose.</summary>
    public static async Task<IReadOnlyList<NbdEndpoint>> GetAsync(XapiSession session, string vdiRef, CancellationToken ct)
    {
        var result = await session.CallAsync("VDI.get_nbd_info", new object?[] { vdiRef }, ct).ConfigureAwait(false);
        var list = new List<NbdEndpoint>();
        if (result is not object?[] entries) return list;
        foreach (var entry in entries)
        {
            if (entry is not IReadOnlyDictionary<string, object?> map) continue;
            string Get(string key) => map.TryGetValue(key, out var v) ? XapiValue.AsString(v) : "";
            var port = map.TryGetValue("port", out var p) ? (int)XapiValue.AsLong(p, "port") : 10809;
            var cert = Get("cert");
            list.Add(new NbdEndpoint(Get("address"), port, Get("exportname"), cert.Length == 0 ? null : cert, Get("subject")));
        }
        return list;
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
