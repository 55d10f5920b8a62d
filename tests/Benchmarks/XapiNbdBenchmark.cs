using System.Diagnostics;
using System.Net;
using VProtect.Core.IO;
using VProtect.Core.Nbd;
using VProtect.Core.Xapi;
using VProtect.Simulator;
using VProtect.Simulator.Storage;

namespace VProtect.Benchmarks;

/// <summary>
/// xapi-nbd-read: our client reading a fully written VDI from the simulator's xapi-nbd (EXPORT_NAME, simple replies,
/// one request at a time per connection) with 1 and 4 connections, plain and TLS, at 0 and 5 ms added per request
/// (the simulator's latency fault). Shows what multi-connection buys against a server that serves requests serially.
/// </summary>
public sealed class XapiNbdBenchmark : IBenchmark
{
    public string Name => "xapi-nbd-read";

    public async Task RunAsync(BenchmarkContext context, TextWriter report, CancellationToken ct)
    {
        long size = context.Quick ? 128L << 20 : 1L << 30;
        await using var sim = await XenSimulator.StartAsync(new SimulatorOptions { Scenario = "empty", HttpsPort = null }, ct);
        await using var session = await XapiSession.LoginAsync(sim.Url, sim.User, sim.Password, ct: ct);
        var sr = (string)((object?[])(await session.CallAsync("SR.get_by_name_label", [VProtect.Simulator.Scenario.DefaultScenario.SharedSr], ct))!)[0]!;
        var vdi = (string)(await session.CallAsync("VDI.create", [new Dictionary<string, object?>
        {
            ["name_label"] = "bench", ["name_description"] = "", ["SR"] = sr, ["virtual_size"] = size, ["type"] = "user",
            ["sharable"] = false, ["read_only"] = false, ["other_config"] = new Dictionary<string, object?>(),
        }], ct))!;
        var uuid = (string)(await session.CallAsync("VDI.get_uuid", [vdi], ct))!;
        var disk = sim.OpenVdi(uuid);
        var chunk = new byte[4 << 20];
        for (long pos = 0; pos < size; pos += chunk.Length)
        {
            DeterministicData.Fill(chunk, 77, pos);
            await disk.WriteAsync(pos, chunk, ct);
        }
        var network = (string)((object?[])(await session.CallAsync("network.get_by_name_label", [VProtect.Simulator.Scenario.DefaultScenario.ManagementNetwork], ct))!)[0]!;

        report.WriteLine($"## xapi-nbd-read (simulator xapi-nbd, {size >> 20} MiB fully allocated{(context.Quick ? ", --quick" : "")})");
        report.WriteLine();
        report.WriteLine("Our client, 1 MiB requests, 16 in flight per connection (the server still serves them one at a time per connection).");
        report.WriteLine();
        report.WriteLine("| purpose | added per request | 1 connection MB/s | 4 connections MB/s | 4 / 1 |");
        report.WriteLine("|---|---|---|---|---|");
        foreach (var purpose in new[] { "insecure_nbd", "nbd" })
        {
            await session.CallAsync("network.add_purpose", [network, purpose], ct);
            var info = ((object?[])(await session.CallAsync("VDI.get_nbd_info", [vdi], ct))!).Cast<Dictionary<string, object?>>().First(i => (string)i["address"]! == "127.0.0.1");
            var tls = purpose == "nbd" ? NbdTlsOptions.Pinned((string)info["cert"]!, (string)info["subject"]!) : NbdTlsOptions.Insecure;
            foreach (int latency in new[] { 0, 5 })
            {
                sim.Faults.SetLatency(VProtect.Simulator.Faults.TransferChannel.Nbd, latency);
                Console.Error.WriteLine($"  {purpose}, {latency} ms");
                var options = new NbdClientOptions(new IPEndPoint(IPAddress.Loopback, sim.NbdPort), (string)info["exportname"]!) { Tls = tls, RequestSize = 1 << 20 };
                double one = await TimeAsync(() => ReadAllAsync(options with { Connections = 1 }, ct));
                double four = await TimeAsync(() => ReadAllAsync(options with { Connections = 4 }, ct));
                report.WriteLine($"| {purpose} | {latency} ms | {size / one / 1e6:0} | {size / four / 1e6:0} | {one / four:0.00}x |");
            }
            sim.Faults.SetLatency(VProtect.Simulator.Faults.TransferChannel.Nbd, 0);
            await session.CallAsync("network.remove_purpose", [network, purpose], ct);
        }
        report.WriteLine();
    }

    private static async Task ReadAllAsync(NbdClientOptions options, CancellationToken ct)
    {
        await using var client = await NbdClient.ConnectAsync(options, ct);
        await client.ReadExtentsAsync([new Extent(0, client.Size)], static (_, _, _) => ValueTask.CompletedTask, cancellationToken: ct);
    }

    private static async Task<double> TimeAsync(Func<Task> run)
    {
        var sw = Stopwatch.StartNew();
        await run();
        return sw.Elapsed.TotalSeconds;
    }
}
