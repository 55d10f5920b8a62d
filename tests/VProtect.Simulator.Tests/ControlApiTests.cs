using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using VProtect.Simulator.Storage;

namespace VProtect.Simulator.Tests;

public sealed class ControlApiTests
{
    private static readonly HttpClient Http = new() { Timeout = TimeSpan.FromSeconds(60) };

    /// <summary>SHA-256 of a disk of <paramref name="size"/> bytes holding the given fills, computed here without the simulator.</summary>
    private static string ExpectedSha(long size, IEnumerable<Scenario.ScenarioFill> fills)
    {
        var ordered = fills.OrderBy(f => f.Offset).ToList();
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        for (long pos = 0; pos < size;)
        {
            int n = (int)Math.Min(buffer.Length, size - pos);
            Array.Clear(buffer, 0, n);
            foreach (var f in ordered)
            {
                long s = Math.Max(f.Offset, pos), e = Math.Min(f.Offset + f.Length, pos + n);
                if (s < e) DeterministicData.Fill(buffer.AsSpan((int)(s - pos), (int)(e - s)), f.Seed, s);
            }
            sha.AppendData(buffer, 0, n);
            pos += n;
        }
        return Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant();
    }

    private static async Task<JsonNode> GetJson(Uri u)
    {
        using var r = await Http.GetAsync(u);
        Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        return JsonNode.Parse(await r.Content.ReadAsStringAsync())!;
    }

    [Fact]
    public async Task Vms_lists_disks_and_vifs_and_sha256_matches_an_independent_hash()
    {
        await using var h = await SimHandle.StartAsync();
        var vms = (await GetJson(new Uri(h.Sim.ControlUrl, "sim/vms"))).AsArray();
        var web = vms.Single(v => (string)v!["name"]! == Scenario.DefaultScenario.WebVm)!;
        Assert.Equal("Running", (string)web["powerState"]!);
        Assert.Equal(2, web["vifs"]!.AsArray().Count);
        Assert.All(web["vifs"]!.AsArray(), v => Assert.Matches("^([0-9a-f]{2}:){5}[0-9a-f]{2}$", (string)v!["mac"]!));
        var system = web["disks"]!.AsArray()[0]!;
        Assert.Equal(Scenario.DefaultScenario.WebSystemDiskSize, (long)system["virtualSize"]!);
        Assert.Equal(Scenario.DefaultScenario.SharedSr, (string)system["sr"]!);
        var uuid = (string)system["vdiUuid"]!;
        var sha = await GetJson(new Uri(h.Sim.ControlUrl, $"sim/vdi/{uuid}/sha256"));
        Assert.Equal(ExpectedSha(Scenario.DefaultScenario.WebSystemDiskSize, Scenario.DefaultScenario.WebSystemDiskFill), (string)sha["sha256"]!);

    }

    [Fact]
    public async Task Guest_writes_change_the_hash_to_what_the_test_computes()
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = await h.LoginAsync();
        var sr = await c.RefByNameAsync("SR", Scenario.DefaultScenario.SharedSr);
        const long size = 48L << 20;
        var vdi = V.Str(await c.CallAsync("VDI.create", VdiTests.VdiRecord(sr, size)));
        var uuid = V.Str(await c.CallAsync("VDI.get_uuid", vdi));
        Assert.Equal(ExpectedSha(size, []), (string)(await GetJson(new Uri(h.Sim.ControlUrl, $"sim/vdi/{uuid}/sha256")))["sha256"]!);
        // Unaligned, overlapping writes: the later one wins where they overlap.
        var fills = new[] { new Scenario.ScenarioFill(3_000_001, 200_000, 77), new Scenario.ScenarioFill(size - 70_000, 70_000, 78) };
        foreach (var f in fills)
            using (var w = await Http.PostAsync(new Uri(h.Sim.ControlUrl, $"sim/vdi/{uuid}/write?offset={f.Offset}&length={f.Length}&seed={f.Seed}"), null))
                Assert.Equal(HttpStatusCode.OK, w.StatusCode);
        var after = await GetJson(new Uri(h.Sim.ControlUrl, $"sim/vdi/{uuid}/sha256"));
        Assert.Equal(ExpectedSha(size, fills), (string)after["sha256"]!);
        Assert.Equal(size, (long)after["length"]!);
        using (var w = await Http.PostAsync(new Uri(h.Sim.ControlUrl, $"sim/vdi/{uuid}/write?offset={size - 1}&length=2&seed=1"), null))
            Assert.Equal(HttpStatusCode.BadRequest, w.StatusCode);
    }

    [Fact]
    public async Task Bad_control_requests_are_4xx()
    {
        await using var h = await SimHandle.StartAsync("empty");
        using (var r = await Http.GetAsync(new Uri(h.Sim.ControlUrl, $"sim/vdi/{Guid.NewGuid()}/sha256"))) Assert.Equal(HttpStatusCode.NotFound, r.StatusCode);
        var iso = (await GetJson(new Uri(h.Sim.ControlUrl, "sim/vms"))).AsArray();
        Assert.Empty(iso);
        using (var r = await Http.PostAsync(new Uri(h.Sim.ControlUrl, "sim/faults"), new StringContent("{\"nonsense\":1}", Encoding.UTF8, "application/json")))
            Assert.Equal(HttpStatusCode.BadRequest, r.StatusCode);
    }

    [Fact]
    public async Task Method_faults_fire_count_times_then_clear()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var vm = await c.RefByNameAsync("VM", "db-01");
        var body = """{"method":"VM.snapshot","error":"SR_BACKEND_FAILURE_44","params":["","There is insufficient space",""],"count":2}""";
        using (var r = await Http.PostAsync(new Uri(h.Sim.ControlUrl, "sim/faults"), new StringContent(body, Encoding.UTF8, "application/json")))
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal(["SR_BACKEND_FAILURE_44", "", "There is insufficient space", ""], (await c.FailsAsync("VM.snapshot", vm, "a")).Description);
        Assert.Equal("SR_BACKEND_FAILURE_44", (await c.FailsAsync("VM.snapshot", vm, "b")).Code);
        Assert.StartsWith("OpaqueRef:", V.Str(await c.CallAsync("VM.snapshot", vm, "c")));

        using (var r = await Http.PostAsync(new Uri(h.Sim.ControlUrl, "sim/faults"), new StringContent(body, Encoding.UTF8, "application/json"))) { }
        using (var r = await Http.PostAsync(new Uri(h.Sim.ControlUrl, "sim/faults"), new StringContent("""{"drop":"nbd","afterBytes":4096,"count":1}""", Encoding.UTF8, "application/json"))) { }
        using (var r = await Http.PostAsync(new Uri(h.Sim.ControlUrl, "sim/faults"), new StringContent("""{"latency":"http","ms":5}""", Encoding.UTF8, "application/json"))) { }
        Assert.Equal(5, h.Sim.Faults.LatencyMs(Faults.TransferChannel.Http));
        Assert.Equal(4096, h.Sim.Faults.TakeDrop(Faults.TransferChannel.Nbd));
        Assert.Null(h.Sim.Faults.TakeDrop(Faults.TransferChannel.Nbd));
        using (var r = await Http.DeleteAsync(new Uri(h.Sim.ControlUrl, "sim/faults"))) Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        Assert.Equal(0, h.Sim.Faults.LatencyMs(Faults.TransferChannel.Http));
        Assert.StartsWith("OpaqueRef:", V.Str(await c.CallAsync("VM.snapshot", vm, "d")));
    }

    [Fact]
    public async Task Reset_restores_the_scenario()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var vm = await c.RefByNameAsync("VM", "db-01");
        await c.CallAsync("VM.snapshot", vm, "extra");
        int before = V.Arr(await c.CallAsync("VM.get_all")).Length;
        var oldToken = V.Str(V.Map(await c.CallAsync("event.from", new object?[] { "vm" }, "", 0.0))["token"]);
        using (var r = await Http.PostAsync(new Uri(h.Sim.ControlUrl, "sim/reset"), null)) Assert.Equal(HttpStatusCode.OK, r.StatusCode);
        // Sessions are gone with the old state.
        Assert.Equal("SESSION_INVALID", (await c.FailsAsync("VM.get_all")).Code);
        using var c2 = await h.LoginAsync();
        Assert.Equal(before - 1, V.Arr(await c2.CallAsync("VM.get_all")).Length);
        Assert.Empty(V.Arr(await c2.CallAsync("VM.get_by_name_label", "extra")));
        // Event history went with the old state: an old token is EVENTS_LOST, so clients refetch everything.
        Assert.Equal(["EVENTS_LOST"], (await c2.FailsAsync("event.from", new object?[] { "vm" }, oldToken, 0.0)).Description);
        // New sessions and tasks point at the rebuilt hosts, not the ones from before the reset.
        Assert.Equal(Scenario.DefaultScenario.MasterName, V.Str(await c2.CallAsync("host.get_name_label", V.Str(await c2.CallAsync("session.get_this_host", c2.Session)))));
        var task = V.Str(await c2.CallAsync("task.create", "t", ""));
        Assert.Equal(Scenario.DefaultScenario.MasterName, V.Str(await c2.CallAsync("host.get_name_label", V.Str(await c2.CallAsync("task.get_resident_on", task)))));
    }

    [Fact]
    public void Deterministic_data_depends_only_on_seed_and_absolute_offset()
    {
        var whole = new byte[4096];
        DeterministicData.Fill(whole, 5, 1000);
        var part = new byte[100];
        DeterministicData.Fill(part, 5, 1000 + 37);
        Assert.Equal(whole.AsSpan(37, 100).ToArray(), part);
        var otherSeed = new byte[4096];
        DeterministicData.Fill(otherSeed, 6, 1000);
        Assert.NotEqual(whole, otherSeed);
        Assert.True(whole.Distinct().Count() > 200, "the data should look random, not constant");
    }
}
