using System.Net;
using System.Text.Json.Nodes;

namespace VProtect.Simulator.Tests.DataPlane;

/// <summary>A simulator ("empty" scenario) with one 32 MiB VDI holding data at known places, and helpers for its xapi-nbd.</summary>
internal sealed class NbdTestPool : IAsyncDisposable
{
    public const long VdiSize = 32L << 20;

    private NbdTestPool(XenSimulator sim, XapiTestClient client) { Sim = sim; Client = client; }

    public XenSimulator Sim { get; }
    public XapiTestClient Client { get; }
    public string VdiRef { get; private set; } = "";
    public string VdiUuid { get; private set; } = "";
    public string Session => Client.Session!;
    public string ExportName => $"/{VdiUuid}?session_id={Session}";

    public static CancellationToken Timeout(int seconds = 30) => new CancellationTokenSource(TimeSpan.FromSeconds(seconds)).Token;

    /// <summary>Starts the pool; <paramref name="purpose"/> (nbd, insecure_nbd or null) goes on the management network.</summary>
    public static async Task<NbdTestPool> StartAsync(string? purpose = "insecure_nbd", TimeSpan? attachDelay = null)
    {
        var sim = await XenSimulator.StartAsync(new SimulatorOptions { Scenario = "empty", HttpsPort = null, NbdAttachDelay = attachDelay ?? TimeSpan.FromMilliseconds(20) });
        var client = new XapiTestClient(sim.Url);
        var pool = new NbdTestPool(sim, client);
        try
        {
            await client.LoginAsync(sim.User, sim.Password);
            var sr = await client.RefByNameAsync("SR", Scenario.DefaultScenario.SharedSr);
            pool.VdiRef = V.Str(await client.CallAsync("VDI.create", VdiTests.VdiRecord(sr, VdiSize)));
            pool.VdiUuid = V.Str(await client.CallAsync("VDI.get_uuid", pool.VdiRef));
            await pool.WriteAsync(0, 1 << 20, 11);
            await pool.WriteAsync(5L << 20, 3L << 20, 12);
            await pool.WriteAsync(VdiSize - 4096, 4096, 13);
            if (purpose is not null) await pool.SetPurposeAsync(purpose);
            return pool;
        }
        catch
        {
            await pool.DisposeAsync();
            throw;
        }
    }

    public async Task<string> ManagementNetworkAsync() => await Client.RefByNameAsync("network", Scenario.DefaultScenario.ManagementNetwork);

    public async Task SetPurposeAsync(string purpose) => await Client.CallAsync("network.add_purpose", await ManagementNetworkAsync(), purpose);
    public async Task RemovePurposeAsync(string purpose) => await Client.CallAsync("network.remove_purpose", await ManagementNetworkAsync(), purpose);

    public async Task WriteAsync(long offset, long length, long seed)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) };
        using var r = await http.PostAsync(new Uri(Sim.ControlUrl, $"sim/vdi/{VdiUuid}/write?offset={offset}&length={length}&seed={seed}"), null);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
    }

    /// <summary>The VDI's SHA-256 as the control API computes it from storage (lower-case hex).</summary>
    public async Task<string> Sha256Async(string? uuid = null)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) };
        var json = JsonNode.Parse(await http.GetStringAsync(new Uri(Sim.ControlUrl, $"sim/vdi/{uuid ?? VdiUuid}/sha256")))!;
        return (string)json["sha256"]!;
    }

    public async Task PostFaultAsync(string json)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        using var r = await http.PostAsync(new Uri(Sim.ControlUrl, "sim/faults"), new StringContent(json, System.Text.Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
    }

    /// <summary>The first entry of VDI.get_nbd_info for the master's address.</summary>
    public async Task<Dictionary<string, object?>> NbdInfoAsync(string? vdiRef = null)
    {
        var infos = V.Arr(await Client.CallAsync("VDI.get_nbd_info", vdiRef ?? VdiRef)).Select(V.Map).ToList();
        return infos.First(i => V.Str(i["address"]) == "127.0.0.1");
    }

    /// <summary>
    /// Waits (bounded) until the server has unplugged every dom0 VBD of the VDI: it does so after it sees the client's
    /// close, which the client cannot wait for itself. Fails the test after 15 s.
    /// </summary>
    public async Task WaitForNoDom0VbdsAsync(string? vdiRef = null)
    {
        var deadline = DateTime.UtcNow.AddSeconds(15);
        while ((await Dom0VbdsAsync(vdiRef)).Count > 0)
        {
            Assert.True(DateTime.UtcNow < deadline, "the dom0 VBD was not removed within 15 s of the disconnect");
            await Task.Delay(20);
        }
    }

    /// <summary>VBD records of the VDI (default: the test VDI) whose VM is a control domain.</summary>
    public async Task<List<Dictionary<string, object?>>> Dom0VbdsAsync(string? vdiRef = null)
    {
        var list = new List<Dictionary<string, object?>>();
        foreach (var vbd in V.Arr(await Client.CallAsync("VDI.get_VBDs", vdiRef ?? VdiRef)))
        {
            Dictionary<string, object?> r;
            try
            {
                r = await Client.RecordAsync("VBD", V.Str(vbd));
                if (V.Bool(await Client.CallAsync("VM.get_is_control_domain", V.Str(r["VM"])))) list.Add(r);
            }
            catch (XapiFailure ex) when (ex.Code == "HANDLE_INVALID")
            {
                // Unplugged and destroyed between VDI.get_VBDs and the record read: it is gone, as waited for.
            }
        }
        return list;
    }

    public Task<NbdRawClient> RawAsync(CancellationToken ct) => NbdRawClient.ConnectAsync(IPAddress.Loopback, Sim.NbdPort, ct);

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        await Sim.DisposeAsync();
    }
}
