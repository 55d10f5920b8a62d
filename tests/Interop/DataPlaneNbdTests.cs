using System.Net;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using VProtect.Core.Nbd;
using VProtect.Core.Xapi;
using VProtect.Simulator;
using Xunit;

namespace VProtect.Interop.Tests;

/// <summary>
/// libnbd (nbdinfo, nbdcopy) and our NBD client read VDIs from the simulator's xapi-nbd: over TLS pinned to the
/// certificate of VDI.get_nbd_info (libnbd verifies the peer against ca-cert.pem; it is never turned off) and in plain
/// over insecure_nbd. Contents must equal the control API's SHA-256. Missing tools fail the tests (NbdPeers.Require).
/// </summary>
public class DataPlaneNbdTests
{
    private const long VdiSize = 48L << 20;

    private static CancellationToken Timeout() => new CancellationTokenSource(TimeSpan.FromSeconds(60)).Token;

    private sealed record Pool(XenSimulator Sim, XapiSession Session, string VdiRef, string VdiUuid) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await Session.DisposeAsync();
            await Sim.DisposeAsync();
        }
    }

    /// <summary>A pool with one 48 MiB VDI written in three places and <paramref name="purpose"/> on the management network.</summary>
    private static async Task<Pool> StartAsync(string purpose)
    {
        var sim = await XenSimulator.StartAsync(new SimulatorOptions { Scenario = "empty", HttpsPort = null, NbdAttachDelay = TimeSpan.FromMilliseconds(20) });
        try
        {
            var session = await XapiSession.LoginAsync(sim.Url, sim.User, sim.Password, ct: Timeout());
            var sr = First(await session.CallAsync("SR.get_by_name_label", [VProtect.Simulator.Scenario.DefaultScenario.SharedSr], Timeout()));
            var vdi = (string)(await session.CallAsync("VDI.create", [new Dictionary<string, object?>
            {
                ["name_label"] = "nbd interop", ["name_description"] = "", ["SR"] = sr, ["virtual_size"] = VdiSize, ["type"] = "user",
                ["sharable"] = false, ["read_only"] = false, ["other_config"] = new Dictionary<string, object?>(),
            }], Timeout()))!;
            var uuid = (string)(await session.CallAsync("VDI.get_uuid", [vdi], Timeout()))!;
            var pool = new Pool(sim, session, vdi, uuid);
            await WriteAsync(pool, 0, 2 << 20, 21);
            await WriteAsync(pool, 17L << 20, 5L << 20, 22);
            await WriteAsync(pool, VdiSize - 65536, 65536, 23);
            var network = First(await session.CallAsync("network.get_by_name_label", [VProtect.Simulator.Scenario.DefaultScenario.ManagementNetwork], Timeout()));
            await session.CallAsync("network.add_purpose", [network, purpose], Timeout());
            return pool;
        }
        catch
        {
            await sim.DisposeAsync();
            throw;
        }
    }

    private static string First(object? array) => (string)((object?[])array!)[0]!;

    private static async Task WriteAsync(Pool pool, long offset, long length, long seed)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) };
        using var r = await http.PostAsync(new Uri(pool.Sim.ControlUrl, $"sim/vdi/{pool.VdiUuid}/write?offset={offset}&length={length}&seed={seed}"), null);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
    }

    private static async Task<string> ControlSha256Async(Pool pool)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) };
        var json = JsonNode.Parse(await http.GetStringAsync(new Uri(pool.Sim.ControlUrl, $"sim/vdi/{pool.VdiUuid}/sha256")))!;
        return ((string)json["sha256"]!).ToUpperInvariant();
    }

    /// <summary>VDI.get_nbd_info entries: (exportname, address, port, cert, subject).</summary>
    private static async Task<List<(string ExportName, string Address, int Port, string Cert, string Subject)>> NbdInfoAsync(Pool pool)
    {
        var infos = (object?[])(await pool.Session.CallAsync("VDI.get_nbd_info", [pool.VdiRef], Timeout()))!;
        return infos.Cast<Dictionary<string, object?>>().Select(i => ((string)i["exportname"]!, (string)i["address"]!,
            (int)Convert.ToInt64(i["port"], System.Globalization.CultureInfo.InvariantCulture), (string)i["cert"]!, (string)i["subject"]!)).ToList();
    }

    /// <summary>An NBD URI whose export name is exactly <paramref name="exportName"/> (leading "/", '?' and ':' percent-encoded into the path).</summary>
    private static string Uri(string scheme, string address, int port, string exportName, string? tlsDirectory = null)
    {
        string path = string.Join("/", exportName.Split('/').Select(System.Uri.EscapeDataString));
        return $"{scheme}://{address}:{port}/{path}" + (tlsDirectory is null ? "" : $"?tls-certificates={tlsDirectory}");
    }

    private static async Task<string> NbdinfoAsync(string uri)
    {
        var (exit, output, err) = await NbdPeers.RunAsync("nbdinfo", "libnbd-bin", [uri]);
        Assert.True(exit == 0, $"nbdinfo {uri} failed ({exit}): {err}");
        return output;
    }

    private static async Task<string> HashWithOurClientAsync(NbdClientOptions options)
    {
        await using var client = await NbdClient.ConnectAsync(options, Timeout());
        Assert.False(client.Export.NegotiatedWithGo, "xapi-nbd refuses GO: the client must have fallen back to EXPORT_NAME");
        Assert.True(client.Export.ReadOnly);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long next = 0;
        await client.ReadExtentsAsync([new VProtect.Core.IO.Extent(0, client.Size)], (o, d, _) =>
        {
            Assert.Equal(next, o);
            sha.AppendData(d.Span);
            next = o + d.Length;
            return ValueTask.CompletedTask;
        }, cancellationToken: Timeout());
        Assert.Equal(VdiSize, next);
        return Convert.ToHexString(sha.GetHashAndReset());
    }

    [Fact]
    public async Task Libnbd_and_our_client_read_a_vdi_over_tls_pinned_to_the_get_nbd_info_certificate()
    {
        await using var pool = await StartAsync("nbd");
        using var dir = new TempDir();
        string expected = await ControlSha256Async(pool);
        var infos = await NbdInfoAsync(pool);
        Assert.NotEmpty(infos);
        var master = infos.First(i => i.Address == "127.0.0.1");
        Assert.Equal(pool.Sim.NbdPort, master.Port);
        string pki = dir.File("pinned");
        Directory.CreateDirectory(pki);
        await File.WriteAllTextAsync(Path.Combine(pki, "ca-cert.pem"), master.Cert);

        // libnbd: nbds:// requires TLS; tls-certificates=DIR makes it trust exactly ca-cert.pem, and peer verification
        // (nbd_set_tls_verify_peer) stays at its default, on. The host name checked is the URI's address (an IP SAN).
        string uri = Uri("nbds", master.Address, master.Port, master.ExportName, pki);
        string info = await NbdinfoAsync(uri);
        Assert.Contains("with TLS", info);
        Assert.Contains("simple packets", info); // xapi-nbd: no structured replies
        Assert.Contains($"export-size: {VdiSize}", info);
        Assert.Contains("is_read_only: true", info);
        Assert.Equal(expected, await NbdPeers.NbdcopyHashAsync(uri));

        // A different certificate as the trust anchor: libnbd refuses the server, so verification really is on.
        string wrong = dir.File("wrong");
        Directory.CreateDirectory(wrong);
        using (var key = RSA.Create(2048))
        {
            var other = new System.Security.Cryptography.X509Certificates.CertificateRequest($"CN={master.Subject}", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1)
                .CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
            await File.WriteAllTextAsync(Path.Combine(wrong, "ca-cert.pem"), other.ExportCertificatePem());
        }
        var (exit, _, err) = await NbdPeers.RunAsync("nbdinfo", "libnbd-bin", [Uri("nbds", master.Address, master.Port, master.ExportName, wrong)]);
        Assert.NotEqual(0, exit);
        Assert.Contains("certificate", err, StringComparison.OrdinalIgnoreCase);

        // Our client, pinned to the same PEM and checking the subject of get_nbd_info, on every address it lists.
        foreach (var entry in infos)
        {
            var options = new NbdClientOptions(new IPEndPoint(IPAddress.Parse(entry.Address), entry.Port), entry.ExportName)
            {
                Tls = NbdTlsOptions.Pinned(entry.Cert, entry.Subject), Connections = 2, RequestSize = 1 << 20,
                ConnectTimeout = TimeSpan.FromSeconds(30), RequestTimeout = TimeSpan.FromSeconds(60),
            };
            Assert.Equal(expected, await HashWithOurClientAsync(options));
        }
    }

    [Fact]
    public async Task Libnbd_and_our_client_read_a_vdi_in_plain_over_insecure_nbd()
    {
        await using var pool = await StartAsync("insecure_nbd");
        string expected = await ControlSha256Async(pool);
        var master = (await NbdInfoAsync(pool)).First(i => i.Address == "127.0.0.1");
        string uri = Uri("nbd", master.Address, master.Port, master.ExportName);
        string info = await NbdinfoAsync(uri);
        Assert.Contains("without TLS", info);
        Assert.Contains($"export-size: {VdiSize}", info);
        Assert.Equal(expected, await NbdPeers.NbdcopyHashAsync(uri));

        // TLS asked of an insecure_nbd server: libnbd's nbds:// must fail (STARTTLS answered ERR_POLICY).
        using var dir = new TempDir();
        await File.WriteAllTextAsync(dir.File("ca-cert.pem"), master.Cert);
        var (exit, _, _) = await NbdPeers.RunAsync("nbdinfo", "libnbd-bin", [Uri("nbds", master.Address, master.Port, master.ExportName, dir.Path)]);
        Assert.NotEqual(0, exit);

        var options = new NbdClientOptions(new IPEndPoint(IPAddress.Loopback, master.Port), master.ExportName)
        {
            Connections = 4, RequestSize = 1 << 20, ConnectTimeout = TimeSpan.FromSeconds(30), RequestTimeout = TimeSpan.FromSeconds(60),
        };
        Assert.Equal(expected, await HashWithOurClientAsync(options));
    }
}
