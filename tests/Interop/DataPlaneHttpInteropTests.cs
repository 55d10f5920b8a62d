using System.Buffers.Binary;
using System.Diagnostics;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using VProtect.Core.Formats.Xva;
using VProtect.Core.Xapi.Wire;
using VProtect.Simulator;
using Xunit;

namespace VProtect.Interop.Tests;

/// <summary>
/// The simulator's HTTP transfer handlers read by clients nobody here wrote: curl, .NET's HttpClient without our
/// code, qemu-img (VHD from /export_raw_vdi) and Xen Orchestra's xen-api (node). They fail, never skip, when a peer
/// is missing.
/// </summary>
public sealed class DataPlaneHttpInteropTests
{
    private const long SystemSize = 6L << 20;

    private static async Task<(XenSimulator Sim, string Session, string ScenarioPath)> StartAsync(bool https = false)
    {
        var scenario = new
        {
            @base = "empty",
            vms = new object[]
            {
                new { name = "small-01", powerState = "Halted", disks = new object[]
                {
                    new { name = "small-01 system", size = SystemSize, fill = new object[] { new { offset = 0, length = 1 << 20, seed = 21 }, new { offset = 4L << 20, length = 64 << 10, seed = 22 } } },
                    new { name = "small-01 data", size = 2L << 20, fill = new object[] { new { offset = 1L << 20, length = 4096, seed = 23 } } },
                }, vifs = new object[] { new { network = VProtect.Simulator.Scenario.DefaultScenario.ManagementNetwork } } },
            },
        };
        var path = Path.Combine(Path.GetTempPath(), $"dp-http-interop-{Guid.NewGuid():N}.json");
        await File.WriteAllTextAsync(path, JsonSerializer.Serialize(scenario));
        var sim = await XenSimulator.StartAsync(new SimulatorOptions { Scenario = path, HttpsPort = https ? 0 : null });
        var session = (string)(await CallAsync(sim, "session.login_with_password", sim.User, sim.Password))!;
        return (sim, session, path);
    }

    private static async Task<object?> CallAsync(XenSimulator sim, string method, params object?[] args)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        using var r = await http.PostAsync(sim.Url, new StringContent(XmlRpc.EncodeMethodCall(method, args), Encoding.UTF8, "text/xml"));
        var decoded = XmlRpc.DecodeResponse(await r.Content.ReadAsStringAsync());
        Assert.True(decoded.Success, string.Join(" ", decoded.ErrorDescription ?? []));
        return decoded.Value;
    }

    private static async Task<string> RefAsync(XenSimulator sim, string session, string cls, string name)
        => (string)((object?[])(await CallAsync(sim, $"{cls}.get_by_name_label", session, name))!)[0]!;

    private static async Task<string> UuidAsync(XenSimulator sim, string session, string cls, string reference)
        => (string)(await CallAsync(sim, $"{cls}.get_uuid", session, reference))!;

    private static async Task<string> ControlShaAsync(XenSimulator sim, string uuid)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        var json = JsonNode.Parse(await http.GetStringAsync(new Uri(sim.ControlUrl, $"sim/vdi/{uuid}/sha256")))!;
        return ((string)json["sha256"]!).ToLowerInvariant();
    }

    private static string Sha(byte[] data) => Convert.ToHexString(SHA256.HashData(data)).ToLowerInvariant();

    private static async Task<(int Exit, string Err)> CurlAsync(params string[] args)
    {
        var (exit, _, err) = await NbdPeers.RunAsync("curl", "curl", args);
        return (exit, err);
    }

    [Fact]
    public async Task Curl_downloads_raw_vdi_with_cookie_and_with_basic_auth_and_a_vm_export()
    {
        var (sim, session, scenario) = await StartAsync();
        await using var _ = sim;
        using var dir = new TempDir();
        var vdi = await RefAsync(sim, session, "VDI", "small-01 system");
        var uuid = await UuidAsync(sim, session, "VDI", vdi);
        var url = new Uri(sim.Url, $"export_raw_vdi?vdi={uuid}&format=raw").ToString();

        var (exit1, err1) = await CurlAsync("-sS", "--fail", "--max-time", "60", "-b", $"session_id={session}", "-o", dir.File("cookie.raw"), url);
        Assert.True(exit1 == 0, "curl (cookie) failed: " + err1);
        Assert.Equal(await ControlShaAsync(sim, uuid), Sha(await File.ReadAllBytesAsync(dir.File("cookie.raw"))));

        var (exit2, err2) = await CurlAsync("-sS", "--fail", "--max-time", "60", "-u", $"{sim.User}:{sim.Password}", "-o", dir.File("basic.raw"), url);
        Assert.True(exit2 == 0, "curl (basic) failed: " + err2);
        Assert.Equal(await ControlShaAsync(sim, uuid), Sha(await File.ReadAllBytesAsync(dir.File("basic.raw"))));

        // Without credentials curl sees the 401 (--fail makes it exit 22).
        var (exit3, _) = await CurlAsync("-sS", "--fail", "--max-time", "60", "-o", dir.File("none.raw"), url);
        Assert.Equal(22, exit3);

        var vm = await RefAsync(sim, session, "VM", "small-01");
        var (exit4, err4) = await CurlAsync("-sS", "--fail", "--max-time", "60", "-b", $"session_id={session}", "-o", dir.File("vm.xva"), new Uri(sim.Url, $"export?ref={vm}").ToString());
        Assert.True(exit4 == 0, "curl (export) failed: " + err4);
        var result = await XvaReader.ReadFileAsync(dir.File("vm.xva"), null, CancellationToken.None);
        Assert.Equal("small-01", result.Metadata.Vm!.GetString("name_label"));
        Assert.Equal(2, result.Disks.Count);
        File.Delete(scenario);
    }

    [Fact]
    public async Task Curl_verifies_the_host_certificate_and_downloads_over_https()
    {
        var (sim, session, scenario) = await StartAsync(https: true);
        await using var _ = sim;
        using var dir = new TempDir();
        await File.WriteAllTextAsync(dir.File("host.pem"), sim.Certificate.ExportCertificatePem());
        var vdi = await RefAsync(sim, session, "VDI", "small-01 system");
        var uuid = await UuidAsync(sim, session, "VDI", vdi);
        var url = new Uri(sim.HttpsUrl!, $"export_raw_vdi?vdi={uuid}&format=raw&session_id={session}").ToString();
        var (exit, err) = await CurlAsync("-sS", "--fail", "--max-time", "60", "--cacert", dir.File("host.pem"), "-o", dir.File("tls.raw"), url);
        Assert.True(exit == 0, "curl (https) failed: " + err);
        Assert.Equal(await ControlShaAsync(sim, uuid), Sha(await File.ReadAllBytesAsync(dir.File("tls.raw"))));
        File.Delete(scenario);
    }

    [Fact]
    public async Task HttpClient_downloads_raw_vdi_and_export_with_cookie_and_basic_auth()
    {
        var (sim, session, scenario) = await StartAsync();
        await using var _ = sim;
        var vdi = await RefAsync(sim, session, "VDI", "small-01 data");
        var uuid = await UuidAsync(sim, session, "VDI", vdi);
        var url = new Uri(sim.Url, $"export_raw_vdi?vdi={vdi}&format=raw");

        using (var cookie = new HttpClient { Timeout = TimeSpan.FromSeconds(60) })
        {
            using var req = new HttpRequestMessage(HttpMethod.Get, url);
            req.Headers.Add("Cookie", $"session_id={session}");
            using var resp = await cookie.SendAsync(req, HttpCompletionOption.ResponseHeadersRead);
            Assert.Equal(200, (int)resp.StatusCode);
            Assert.Null(resp.Content.Headers.ContentLength);
            Assert.Equal(await ControlShaAsync(sim, uuid), Sha(await resp.Content.ReadAsByteArrayAsync()));
        }
        using (var basic = new HttpClient { Timeout = TimeSpan.FromSeconds(60) })
        {
            basic.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{sim.User}:{sim.Password}")));
            var bytes = await basic.GetByteArrayAsync(url);
            Assert.Equal(await ControlShaAsync(sim, uuid), Sha(bytes));
            var vm = await RefAsync(sim, session, "VM", "small-01");
            await using var xva = await basic.GetStreamAsync(new Uri(sim.Url, $"export?uuid={await UuidAsync(sim, session, "VM", vm)}&use_compression=gzip"));
            var result = await XvaReader.ReadAsync(xva, "HttpClient export", null, CancellationToken.None);
            Assert.Equal(XvaCompression.Gzip, result.Compression);
            Assert.Equal("small-01", result.Metadata.Vm!.GetString("name_label"));
        }
        File.Delete(scenario);
    }

    [Fact]
    public async Task Qemu_img_reads_the_dynamic_vhd_and_the_differencing_vhd_as_dynamic()
    {
        var (sim, session, scenario) = await StartAsync();
        await using var _ = sim;
        using var dir = new TempDir();
        var vdi = await RefAsync(sim, session, "VDI", "small-01 system");
        var uuid = await UuidAsync(sim, session, "VDI", vdi);
        var expected = new byte[SystemSize];
        await sim.OpenVdi(uuid).ReadAsync(0, expected, CancellationToken.None);

        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) };
        await File.WriteAllBytesAsync(dir.File("full.vhd"), await http.GetByteArrayAsync(new Uri(sim.Url, $"export_raw_vdi?session_id={session}&vdi={uuid}&format=vhd")));
        var converted = await ConvertAsync(dir, "full.vhd", "full.raw");
        // Creator "caml": qemu takes the size from the CHS geometry (research nbd-vhd.md §4.4.2), so compare what it shows.
        Assert.InRange(converted.Length, SystemSize - (1L << 20), SystemSize);
        Assert.Equal(expected.AsSpan(0, converted.Length).ToArray(), converted);

        var snap = (string)(await CallAsync(sim, "VDI.snapshot", session, vdi, new Dictionary<string, object?>()))!;
        var write = Enumerable.Repeat((byte)0xC3, 8192).ToArray();
        await sim.OpenVdi(uuid).WriteAsync((2L << 20) + 4096, write, CancellationToken.None);
        var delta = await http.GetByteArrayAsync(new Uri(sim.Url, $"export_raw_vdi?session_id={session}&vdi={uuid}&format=vhd&base={snap}"));
        Assert.Equal(4u, BinaryPrimitives.ReadUInt32BigEndian(delta.AsSpan(60)));
        await File.WriteAllBytesAsync(dir.File("delta.vhd"), delta);
        var deltaRaw = await ConvertAsync(dir, "delta.vhd", "delta.raw");
        // qemu opens a differencing VHD as dynamic: the one changed 2 MiB block with current data, zeros elsewhere.
        var current = new byte[SystemSize];
        await sim.OpenVdi(uuid).ReadAsync(0, current, CancellationToken.None);
        var want = new byte[deltaRaw.Length];
        Array.Copy(current, 2L << 20, want, 2L << 20, 2L << 20);
        Assert.Equal(want, deltaRaw);
        File.Delete(scenario);
    }

    private static async Task<byte[]> ConvertAsync(TempDir dir, string vhd, string raw)
    {
        var (exit, _, err) = await NbdPeers.RunAsync("qemu-img", "qemu-utils", ["convert", "-f", "vpc", "-O", "raw", dir.File(vhd), dir.File(raw)]);
        Assert.True(exit == 0, $"qemu-img convert {vhd} failed: {err}");
        return await File.ReadAllBytesAsync(dir.File(raw));
    }

    [Fact]
    public async Task Xen_orchestra_client_exports_and_imports_through_the_simulator()
    {
        var (sim, session, scenario) = await StartAsync();
        await using var _ = sim;
        using var dir = new TempDir();
        var nodeDir = NodeDirectory();
        Assert.True(File.Exists(Path.Combine(nodeDir, "node_modules", "xen-api", "package.json")),
            $"The xen-api npm package is missing: run `npm ci` in {nodeDir} (CI does this in .ci/run).");
        var psi = new ProcessStartInfo("node") { WorkingDirectory = nodeDir, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "dataplane-xo.mjs", sim.Url.ToString(), sim.User, sim.Password, "small-01", dir.File("xo.xva") }) psi.ArgumentList.Add(a);
        Process process;
        try { process = Process.Start(psi)!; }
        catch (System.ComponentModel.Win32Exception e) { throw new InvalidOperationException("node is not installed or not on PATH; this test needs Node.js 18+.", e); }
        JsonObject result;
        using (process)
        {
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEndAsync();
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(120));
            try { await process.WaitForExitAsync(cts.Token); }
            catch (OperationCanceledException) { process.Kill(entireProcessTree: true); throw new TimeoutException("dataplane-xo.mjs did not finish in 120 s: " + await stderr); }
            Assert.True(process.ExitCode == 0, $"dataplane-xo.mjs exited {process.ExitCode}: {await stderr}");
            result = JsonNode.Parse(await stdout)!.AsObject();
        }
        // What XO downloaded is a valid zstd XVA of the VM.
        var xva = await XvaReader.ReadFileAsync(dir.File("xo.xva"), null, CancellationToken.None);
        Assert.Equal(XvaCompression.Zstd, xva.Compression);
        Assert.Equal((long)result["exportBytes"]!, new FileInfo(dir.File("xo.xva")).Length);
        // XO parses task.result (xapi's XML-RPC <value> fragment, _getTaskResult.mjs): here the array of new VM refs.
        var newVm = (string)Assert.Single(result["importResult"]!.AsArray())!;
        var rec = (Dictionary<string, object?>)(await CallAsync(sim, "VM.get_record", session, newVm))!;
        Assert.Equal("small-01", rec["name_label"]);
        Assert.NotEqual((string)result["vmRef"]!, newVm);
        // The raw disk XO read has the simulator's content.
        var diskUuid = await UuidAsync(sim, session, "VDI", (string)result["rawDiskRef"]!);
        Assert.Equal(await ControlShaAsync(sim, diskUuid), (string)result["rawSha256"]!);
        File.Delete(scenario);
    }

    [Fact]
    public async Task Curl_uploads_a_corrupted_xva_and_force_true_imports_it_as_it_arrived()
    {
        var (sim, session, scenario) = await StartAsync();
        await using var _ = sim;
        using var dir = new TempDir();
        var vm = await RefAsync(sim, session, "VM", "small-01");
        byte[] xva;
        using (var http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) })
            xva = await http.GetByteArrayAsync(new Uri(sim.Url, $"export?ref={vm}&session_id={session}"));
        var meta = (await XvaReader.VerifyAsync(new MemoryStream(xva), "export", CancellationToken.None)).Metadata;
        // Flip one byte of the first chunk (V7 headers: name at 0, octal size at 124).
        int pos = 0;
        string name;
        while (true)
        {
            name = Encoding.ASCII.GetString(xva, pos, 100).TrimEnd('\0');
            if (name.EndsWith("/00000000", StringComparison.Ordinal)) break;
            pos += 512 + (int)((Convert.ToInt64(Encoding.ASCII.GetString(xva, pos + 124, 11), 8) + 511) / 512 * 512);
        }
        xva[pos + 512 + 4096] ^= 0x5A;
        string vdiName = meta.Find(name.Split('/')[0])!.GetString("name_label")!;
        var original = await RefAsync(sim, session, "VDI", vdiName);
        byte[] expected;
        using (var http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) })
            expected = await http.GetByteArrayAsync(new Uri(sim.Url, $"export_raw_vdi?vdi={original}&format=raw&session_id={session}"));
        expected[4096] ^= 0x5A;
        await File.WriteAllBytesAsync(dir.File("bad.xva"), xva);

        async Task<Dictionary<string, object?>> CurlImportAsync(string query, string headers)
        {
            // curl -T sends a PUT with Content-Length, as xapi requires.
            var (exit, err) = await CurlAsync("-sS", "--fail", "--max-time", "60", "-T", dir.File("bad.xva"), "-D", dir.File(headers), "-o", dir.File(headers + ".body"),
                new Uri(sim.Url, $"import?session_id={session}{query}").ToString());
            Assert.True(exit == 0, "curl (import) failed: " + err);
            var taskLine = (await File.ReadAllLinesAsync(dir.File(headers))).Single(l => l.StartsWith("task-id:", StringComparison.OrdinalIgnoreCase));
            return (Dictionary<string, object?>)(await CallAsync(sim, "task.get_record", session, taskLine["task-id:".Length..].Trim()))!;
        }

        // Without force the import fails at the bad chunk and, as xapi does, stops reading the upload: curl may then
        // see a broken pipe before any response, so the task is ours (task_id) and is read whatever curl says.
        var strictTask = (string)(await CallAsync(sim, "task.create", session, "strict import", ""))!;
        var (strictExit, strictErr) = await CurlAsync("-sS", "--max-time", "60", "-T", dir.File("bad.xva"), "-o", dir.File("strict.body"),
            new Uri(sim.Url, $"import?session_id={session}&task_id={strictTask}").ToString());
        Assert.True(strictExit is 0 or 55 or 56, $"curl (strict import) failed other than by the server closing: {strictExit} {strictErr}");
        Dictionary<string, object?> strict;
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while ((string)(strict = (Dictionary<string, object?>)(await CallAsync(sim, "task.get_record", session, strictTask))!)["status"]! == "pending")
        {
            Assert.True(DateTime.UtcNow < deadline, "the strict import's task is still pending after 30 s");
            await Task.Delay(20);
        }
        Assert.Equal("failure", strict["status"]);
        Assert.Equal("IMPORT_ERROR_SOME_CHECKSUMS_FAILED", ((object?[])strict["error_info"]!)[0]);

        var forced = await CurlImportAsync("&force=true", "forced.hdr");
        Assert.Equal("success", forced["status"]);
        var newVm = (string)Assert.Single((object?[])XmlRpc.DecodeValue((string)forced["result"]!)!)!;
        string? newVdiUuid = null;
        foreach (var vbd in (object?[])((Dictionary<string, object?>)(await CallAsync(sim, "VM.get_record", session, newVm))!)["VBDs"]!)
        {
            var vdi = (string)((Dictionary<string, object?>)(await CallAsync(sim, "VBD.get_record", session, vbd))!)["VDI"]!;
            if (vdi != "OpaqueRef:NULL" && (string)((Dictionary<string, object?>)(await CallAsync(sim, "VDI.get_record", session, vdi))!)["name_label"]! == vdiName)
                newVdiUuid = await UuidAsync(sim, session, "VDI", vdi);
        }
        Assert.NotNull(newVdiUuid);
        Assert.Equal(Sha(expected), await ControlShaAsync(sim, newVdiUuid));
        File.Delete(scenario);
    }

    private static string NodeDirectory()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            var candidate = Path.Combine(d.FullName, "tests", "Interop", "node");
            if (File.Exists(Path.Combine(candidate, "package.json"))) return candidate;
        }
        throw new InvalidOperationException("tests/Interop/node not found above " + AppContext.BaseDirectory);
    }
}
