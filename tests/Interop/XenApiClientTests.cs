using System.Diagnostics;
using System.Text.Json.Nodes;
using VProtect.Core.Xapi.Wire;
using VProtect.Simulator;
using Xunit;

namespace VProtect.Interop.Tests;

/// <summary>
/// Xen Orchestra's own XAPI client (npm xen-api 4.7.6) against the simulator: login over JSON-RPC and
/// XML-RPC, get_all_records, an Async VM.snapshot followed through event.from, VDI.enable_cbt and
/// VDI.list_changed_blocks. Fails (never skips) when node or the npm package is missing.
/// </summary>
public sealed class XenApiClientTests
{
    private static string NodeDirectory()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "tests", "Interop", "node");
            if (File.Exists(Path.Combine(candidate, "package.json"))) return candidate;
        }
        throw new InvalidOperationException("tests/Interop/node not found above " + AppContext.BaseDirectory);
    }

    private static async Task<JsonObject> RunXoClientAsync(XenSimulator sim, string transport)
    {
        var dir = NodeDirectory();
        Assert.True(File.Exists(Path.Combine(dir, "node_modules", "xen-api", "package.json")),
            $"The xen-api npm package is missing: run `npm ci` in {dir} (CI does this in .ci/run).");
        var psi = new ProcessStartInfo("node")
        {
            WorkingDirectory = dir,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in new[] { "xo-client.mjs", sim.Url.ToString(), sim.User, sim.Password, transport, sim.ControlUrl.ToString() }) psi.ArgumentList.Add(a);
        Process process;
        try { process = Process.Start(psi)!; }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException("node is not installed or not on PATH; the xen-api interop test needs Node.js 18+.", e);
        }
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(120));
            try { await process.WaitForExitAsync(cts.Token); }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                throw new TimeoutException("xo-client.mjs did not finish in 120 s: " + await stderr);
            }
            Assert.True(process.ExitCode == 0, $"xo-client.mjs exited {process.ExitCode}: {await stderr}");
            return JsonNode.Parse(await stdout)!.AsObject();
        }
    }

    [Theory]
    [InlineData("json-rpc")]
    [InlineData("xml-rpc")]
    public async Task Xen_orchestra_client_logs_in_snapshots_and_lists_changed_blocks(string transport)
    {
        await using var sim = await XenSimulator.StartAsync(new SimulatorOptions { HttpsPort = null });
        var result = await RunXoClientAsync(sim, transport);

        // Cross-check what XO saw against the simulator through our own client.
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        async Task<object?> Call(string method, params object?[] args)
        {
            var body = new StringContent(XmlRpc.EncodeMethodCall(method, args), System.Text.Encoding.UTF8, "text/xml");
            using var r = await http.PostAsync(sim.Url, body);
            var decoded = XmlRpc.DecodeResponse(await r.Content.ReadAsStringAsync());
            Assert.True(decoded.Success, string.Join(" ", decoded.ErrorDescription ?? []));
            return decoded.Value;
        }
        var session = (string)(await Call("session.login_with_password", sim.User, sim.Password))!;
        string xoSession = (string)result["sessionId"]!;
        Assert.StartsWith("OpaqueRef:", xoSession);
        Assert.NotEqual(session, xoSession);

        var vmNames = ((object?[])(await Call("VM.get_all_records", session) is Dictionary<string, object?> m ? m.Values.Select(v => ((Dictionary<string, object?>)v!)["name_label"]).ToArray() : []))
            .Select(v => (string)v!).Where(n => n != "xo-snapshot").Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(vmNames, result["vmNames"]!.AsArray().Select(n => (string)n!).ToArray());

        // The Async VM.snapshot result XO parsed from task.result is a real snapshot of web-01.
        var snapshot = (string)result["snapshotRef"]!;
        var web = ((object?[])(await Call("VM.get_by_name_label", session, "web-01"))!).Single();
        Assert.Equal(web, await Call("VM.get_snapshot_of", session, snapshot));
        Assert.Equal(web, (string)result["snapshotOf"]!);
        Assert.True((bool)result["snapshotIsTemplate"]!);

        // CBT: exactly block 5 changed between the two disk snapshots; MSB-first bit order.
        Assert.Equal(true, await Call("VDI.get_cbt_enabled", session, (string)result["diskRef"]!));
        var bitmap = Convert.FromBase64String((string)result["changedBlocks"]!);
        Assert.Equal((int)(((2L << 30) / 65536 + 7) / 8), bitmap.Length);
        Assert.Equal(0x04, bitmap[0]);
        Assert.All(bitmap.Skip(1), b => Assert.Equal(0, b));
    }
}
