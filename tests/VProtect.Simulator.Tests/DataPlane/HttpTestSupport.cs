using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace VProtect.Simulator.Tests.DataPlane;

/// <summary>An HTTP answer read to connection close, with its raw head, so tests see exactly what the server sent.</summary>
public sealed record RawHttpResponse(string StatusLine, Dictionary<string, string> Headers, byte[] Body)
{
    public int Status => int.Parse(StatusLine.Split(' ')[1]);
    public string? Header(string name) => Headers.TryGetValue(name, out var v) ? v : null;
}

/// <summary>
/// A plain TCP HTTP client (no HttpClient help): writes the request as given and reads the answer until the
/// server closes, as xapi's transfer handlers end their streams.
/// </summary>
public static class RawHttp
{
    public static async Task<RawHttpResponse> SendAsync(Uri server, string method, string target, IEnumerable<string>? headers = null,
        Func<Stream, Task>? writeBody = null, string version = "HTTP/1.1")
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        using var tcp = new TcpClient();
        await tcp.ConnectAsync(server.Host, server.Port, cts.Token);
        var stream = tcp.GetStream();
        var sb = new StringBuilder($"{method} {target} {version}\r\nHost: {server.Host}\r\n");
        foreach (var h in headers ?? []) sb.Append(h).Append("\r\n");
        sb.Append("\r\n");
        await stream.WriteAsync(Encoding.ASCII.GetBytes(sb.ToString()), cts.Token);
        if (writeBody is not null)
        {
            try { await writeBody(stream); }
            catch (IOException) { /* the server may answer and close before reading everything */ }
        }
        using var all = new MemoryStream();
        var buffer = new byte[64 * 1024];
        try
        {
            int n;
            while ((n = await stream.ReadAsync(buffer, cts.Token)) > 0) all.Write(buffer, 0, n);
        }
        catch (IOException) { /* reset after the answer: keep what arrived */ }
        var bytes = all.ToArray();
        int headEnd = bytes.AsSpan().IndexOf("\r\n\r\n"u8);
        if (headEnd < 0) throw new InvalidDataException($"No complete HTTP head in {bytes.Length} bytes: {Encoding.ASCII.GetString(bytes)}");
        var lines = Encoding.ASCII.GetString(bytes, 0, headEnd).Split("\r\n");
        var dict = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var l in lines.Skip(1)) { int c = l.IndexOf(':'); dict[l[..c].Trim()] = l[(c + 1)..].Trim(); }
        return new RawHttpResponse(lines[0], dict, bytes[(headEnd + 4)..]);
    }
}

/// <summary>A simulator with small VMs and disks for transfer tests, and helpers to read tasks and hashes.</summary>
public sealed class TransferSim : IAsyncDisposable
{
    public const long SmallDisk = 6L << 20, SecondDisk = 3L << 20;
    private readonly string _scenarioPath;

    private TransferSim(SimHandle handle, XapiTestClient client, string scenarioPath)
    {
        Handle = handle; Client = client; _scenarioPath = scenarioPath;
    }

    public SimHandle Handle { get; }
    public XenSimulator Sim => Handle.Sim;
    public XapiTestClient Client { get; }
    public string Session => Client.Session!;

    public static async Task<TransferSim> StartAsync(Dictionary<string, string>? srBetterSeenFrom = null)
    {
        var scenario = new
        {
            @base = "empty",
            srBetterSeenFrom = srBetterSeenFrom ?? new Dictionary<string, string>(),
            vms = new object[]
            {
                new { name = "small-01", powerState = "Halted", disks = new object[]
                {
                    new { name = "small-01 system", size = SmallDisk, fill = new object[] { new { offset = 0, length = 1 << 20, seed = 11 }, new { offset = 4L << 20, length = 64 << 10, seed = 12 } } },
                    new { name = "small-01 data", size = SecondDisk, fill = new object[] { new { offset = 2L << 20, length = 1 << 20, seed = 13 } } },
                }, vifs = new object[] { new { network = Scenario.DefaultScenario.ManagementNetwork } } },
                new { name = "run-01", powerState = "Running", disks = new object[] { new { name = "run-01 system", size = 2L << 20 } } },
            },
        };
        var path = Path.Combine(Path.GetTempPath(), $"dp-http-{Guid.NewGuid():N}.json");
        await File.WriteAllTextAsync(path, JsonSerializer.Serialize(scenario));
        var handle = await SimHandle.StartAsync(path);
        var client = await handle.LoginAsync();
        return new TransferSim(handle, client, path);
    }

    public async Task<string> VmRefAsync(string name) => await Client.RefByNameAsync("VM", name);
    public async Task<string> VdiRefAsync(string name) => await Client.RefByNameAsync("VDI", name);
    public async Task<string> UuidAsync(string cls, string reference) => V.Str(await Client.CallAsync($"{cls}.get_uuid", reference));

    public async Task<Dictionary<string, object?>> TaskAsync(string taskRef) => await Client.RecordAsync("task", taskRef);

    public async Task<string> NewTaskAsync() => V.Str(await Client.CallAsync("task.create", "transfer", "test"));

    /// <summary>The simulator's own SHA-256 of a VDI (control API), lower-case hex.</summary>
    public async Task<string> ControlShaAsync(string vdiUuid)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) };
        var json = await http.GetStringAsync(new Uri(Sim.ControlUrl, $"sim/vdi/{vdiUuid}/sha256"));
        return JsonDocument.Parse(json).RootElement.GetProperty("sha256").GetString()!.ToLowerInvariant();
    }

    public static string Sha(byte[] data) => Convert.ToHexString(SHA256.HashData(data)).ToLowerInvariant();

    public async Task<byte[]> ReadVdiAsync(string vdiUuid)
    {
        var disk = Sim.OpenVdi(vdiUuid);
        var b = new byte[disk.Length];
        await disk.ReadAsync(0, b, CancellationToken.None);
        return b;
    }

    public async Task<string> NewVdiAsync(string name, long size)
    {
        var sr = V.Str(((object?[])(await Client.CallAsync("SR.get_by_name_label", Scenario.DefaultScenario.SharedSr))!)[0]);
        return V.Str(await Client.CallAsync("VDI.create", new Dictionary<string, object?>
        {
            ["name_label"] = name, ["name_description"] = "", ["SR"] = sr, ["virtual_size"] = size.ToString(), ["type"] = "user",
            ["sharable"] = false, ["read_only"] = false, ["other_config"] = new Dictionary<string, object?>(),
        }));
    }

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        await Handle.DisposeAsync();
        try { File.Delete(_scenarioPath); } catch (IOException) { }
    }
}
