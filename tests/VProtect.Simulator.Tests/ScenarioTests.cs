using VProtect.Simulator.Storage;

namespace VProtect.Simulator.Tests;

public sealed class ScenarioTests
{
    private static async Task<string> WriteScenario(string json)
    {
        var file = Path.Combine(Path.GetTempPath(), $"sim-scn-{Guid.NewGuid():N}.json");
        await File.WriteAllTextAsync(file, json);
        return file;
    }

    [Fact]
    public async Task Scenario_files_add_vms_disks_fills_purposes_and_switches()
    {
        var file = await WriteScenario("""
        {
          // comments are allowed
          "base": "empty",
          "srBetterSeenFrom": { "Shared NFS storage": "xen-sim-02" },
          "networkPurposes": { "Pool-wide network associated with eth0": "insecure_nbd" },
          "vms": [ { "name": "big", "powerState": "Running", "host": "xen-sim-02", "vcpus": 3,
                     "disks": [ { "name": "big disk", "size": 8589934592, "cbtEnabled": true,
                                  "fill": [ { "offset": 4096, "length": 100000, "seed": 5 } ] } ],
                     "vifs": [ { "mac": "aa:bb:cc:00:00:01" } ] } ],
        }
        """);
        try
        {
            await using var h = await SimHandle.StartAsync(file);
            using var c = await h.LoginAsync();
            var vms = V.Arr(await c.CallAsync("VM.get_all")).Select(V.Str).ToList();
            var big = await c.RefByNameAsync("VM", "big");
            Assert.Equal(3, vms.Count); // big + two dom0s
            Assert.Equal("Running", V.Str(await c.CallAsync("VM.get_power_state", big)));
            Assert.Equal("xen-sim-02", V.Str(await c.CallAsync("host.get_name_label", V.Str(await c.CallAsync("VM.get_resident_on", big)))));
            var vif = V.Str(V.Arr(await c.CallAsync("VM.get_VIFs", big))[0]);
            Assert.Equal("aa:bb:cc:00:00:01", V.Str(await c.CallAsync("VIF.get_MAC", vif)));
            var disk = (await VdiTests.DiskVdis(c, big))[0];
            Assert.True(V.Bool(await c.CallAsync("VDI.get_cbt_enabled", disk)));
            var uuid = V.Str(await c.CallAsync("VDI.get_uuid", disk));
            var back = new byte[100000];
            await h.Sim.OpenVdi(uuid).ReadAsync(4096, back, CancellationToken.None);
            var expected = new byte[100000];
            DeterministicData.Fill(expected, 5, 4096);
            Assert.Equal(expected, back);
            // insecure_nbd from the scenario: nbd info is offered, and nbd is now incompatible.
            Assert.NotEmpty(V.Arr(await c.CallAsync("VDI.get_nbd_info", disk)));
            var storage = await c.RefByNameAsync("network", Scenario.DefaultScenario.StorageNetwork);
            Assert.Equal(["NETWORK_INCOMPATIBLE_PURPOSES", "nbd", "insecure_nbd"], (await c.FailsAsync("network.add_purpose", storage, "nbd")).Description);
            Assert.Equal("127.0.0.2", h.Sim.BetterHostAddressForSr(Scenario.DefaultScenario.SharedSr));
            Assert.Null(h.Sim.BetterHostAddressForSr(Scenario.DefaultScenario.IsoSr));
        }
        finally { File.Delete(file); }
    }

    [Theory]
    [InlineData("""{ "snapshotWithQuiesce": "sometimes" }""", "snapshotWithQuiesce")]
    [InlineData("""{ "vms": [ { "name": "x", "host": "nowhere" } ] }""", "nowhere")]
    [InlineData("""{ "vms": [ { "name": "x", "disks": [ { "size": 1024, "fill": [ { "offset": 0, "length": 2048, "seed": 1 } ] } ] } ] }""", "outside")]
    [InlineData("""{ "vms": [ """, "not valid")]
    public async Task Bad_scenarios_fail_to_start_with_a_message_that_names_the_problem(string json, string expected)
    {
        var file = await WriteScenario(json);
        try
        {
            var e = await Assert.ThrowsAsync<InvalidDataException>(() => SimHandle.StartAsync(file));
            Assert.Contains(expected, e.Message);
        }
        finally { File.Delete(file); }
    }

    [Fact]
    public async Task A_missing_scenario_file_says_what_is_accepted()
    {
        var e = await Assert.ThrowsAsync<FileNotFoundException>(() => SimHandle.StartAsync("/nonexistent/scenario.json"));
        Assert.Contains("'default', 'empty'", e.Message);
    }
}
