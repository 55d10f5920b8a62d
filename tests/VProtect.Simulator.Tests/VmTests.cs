namespace VProtect.Simulator.Tests;

public sealed class VmTests
{
    [Fact]
    public async Task Snapshot_has_xapi_fields_and_keeps_macs_and_cbt()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var vm = await c.RefByNameAsync("VM", Scenario.DefaultScenario.WebVm);
        var vmRec = await c.RecordAsync("VM", vm);
        var disks = new List<string>();
        foreach (var vbd in V.Arr(vmRec["VBDs"]))
        {
            var r = await c.RecordAsync("VBD", V.Str(vbd));
            if (V.Str(r["type"]) == "Disk") disks.Add(V.Str(r["VDI"]));
        }
        await c.CallAsync("VDI.enable_cbt", disks[0]);
        var snap = V.Str(await c.CallAsync("VM.snapshot", vm, "snap-1"));
        var s = await c.RecordAsync("VM", snap);
        Assert.True(V.Bool(s["is_a_snapshot"]));
        Assert.True(V.Bool(s["is_a_template"]));
        Assert.Equal(vm, V.Str(s["snapshot_of"]));
        Assert.Equal("Halted", V.Str(s["power_state"]));
        Assert.Equal("snap-1", V.Str(s["name_label"]));
        Assert.True(Math.Abs(((DateTime)s["snapshot_time"]!).Subtract(DateTime.UtcNow).TotalMinutes) < 5);
        var info = V.Map(s["snapshot_info"]);
        Assert.Equal("crash_consistent", info["disk-snapshot-type"]);
        Assert.Equal("Running", info["power-state-at-snapshot"]);
        Assert.Contains(snap, V.Arr(await c.CallAsync("VM.get_snapshots", vm)));
        // VIFs: same MACs and networks.
        var srcMacs = new List<string>();
        foreach (var v in V.Arr(vmRec["VIFs"])) srcMacs.Add(V.Str((await c.RecordAsync("VIF", V.Str(v)))["MAC"]));
        var snapMacs = new List<string>();
        foreach (var v in V.Arr(s["VIFs"])) snapMacs.Add(V.Str((await c.RecordAsync("VIF", V.Str(v)))["MAC"]));
        Assert.Equal(srcMacs.Order(), snapMacs.Order());
        // Disks: snapshot VDIs point back at their source; CBT inherited where enabled.
        var snapDisks = new Dictionary<string, Dictionary<string, object?>>();
        foreach (var vbd in V.Arr(s["VBDs"]))
        {
            var r = await c.RecordAsync("VBD", V.Str(vbd));
            Assert.False(V.Bool(r["currently_attached"]));
            if (V.Str(r["type"]) != "Disk") continue;
            var d = await c.RecordAsync("VDI", V.Str(r["VDI"]));
            snapDisks[V.Str(d["snapshot_of"])] = d;
        }
        Assert.Equal(disks.Order(), snapDisks.Keys.Order());
        Assert.All(snapDisks.Values, d => Assert.True(V.Bool(d["is_a_snapshot"])));
        Assert.True(V.Bool(snapDisks[disks[0]]["cbt_enabled"]));
        Assert.False(V.Bool(snapDisks[disks[1]]["cbt_enabled"]));
        // Content is shared at the snapshot instant (the data disk is the smaller one).
        Assert.Equal(await Sha(h, disks[1], c), await Sha(h, V.Str(snapDisks[disks[1]]["uuid"]), null));
    }

    private static async Task<string> Sha(SimHandle h, string vdiRefOrUuid, XapiTestClient? c)
    {
        string uuid = c is null ? vdiRefOrUuid : V.Str(await c.CallAsync("VDI.get_uuid", vdiRefOrUuid));
        return await Control.ControlApi.HashAsync(h.Sim.OpenVdi(uuid), CancellationToken.None);
    }

    [Fact]
    public async Task A_host_before_xapi_21_4_refuses_ignore_vdis_as_a_parameter_count_mismatch()
    {
        await using var h = await SimHandle.StartAsync();
        h.Sim.Settings.SnapshotIgnoreVdis = false;
        using var c = await h.LoginAsync(Protocol.JsonRpcV2);
        var vm = await c.RefByNameAsync("VM", "db-01");
        var before = V.Arr(await c.CallAsync("VM.get_all")).Length;
        Assert.Equal(["MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.snapshot", "2", "3"],
            (await c.FailsAsync("VM.snapshot", vm, "with ignore_vdis", Array.Empty<object?>())).Description);
        Assert.Equal(before, V.Arr(await c.CallAsync("VM.get_all")).Length);
        var snap = V.Str(await c.CallAsync("VM.snapshot", vm, "two arguments"));
        Assert.Equal(3, (await VdiTests.DiskVdis(c, snap)).Count); // every disk, as such a host always does
    }

    [Fact]
    public async Task Snapshot_with_ignore_vdis_skips_those_disks()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync(Protocol.JsonRpcV2);
        var vm = await c.RefByNameAsync("VM", "db-01");
        var vbds = V.Arr(await c.CallAsync("VM.get_VBDs", vm));
        var disks = new List<string>();
        foreach (var vbd in vbds) { var r = await c.RecordAsync("VBD", V.Str(vbd)); if (V.Str(r["type"]) == "Disk") disks.Add(V.Str(r["VDI"])); }
        Assert.Equal(3, disks.Count);
        var snap = V.Str(await c.CallAsync("VM.snapshot", vm, "partial", new object?[] { disks[2] }));
        var snapVdis = new List<string>();
        foreach (var vbd in V.Arr(await c.CallAsync("VM.get_VBDs", snap)))
        {
            var r = await c.RecordAsync("VBD", V.Str(vbd));
            if (V.Str(r["type"]) == "Disk") snapVdis.Add(V.Str(await c.CallAsync("VDI.get_snapshot_of", V.Str(r["VDI"]))));
        }
        Assert.Equal(disks.Take(2).Order(), snapVdis.Order());
    }

    [Fact]
    public async Task Snapshots_and_templates_cannot_be_snapshotted()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var vm = await c.RefByNameAsync("VM", "app-02");
        var snap = V.Str(await c.CallAsync("VM.snapshot", vm, "s"));
        Assert.Equal(["VM_IS_SNAPSHOT", snap, "snapshot"], (await c.FailsAsync("VM.snapshot", snap, "again")).Description);
        var template = await c.RefByNameAsync("VM", "Debian Bookworm 12");
        Assert.Equal(["VM_IS_TEMPLATE", template, "snapshot"], (await c.FailsAsync("VM.snapshot", template, "t")).Description);
    }

    [Fact]
    public async Task Snapshot_with_quiesce_is_removed_by_default()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var vm = await c.RefByNameAsync("VM", Scenario.DefaultScenario.WebVm);
        Assert.Equal(["MESSAGE_REMOVED"], (await c.FailsAsync("VM.snapshot_with_quiesce", vm, "q")).Description);
    }

    [Theory]
    [InlineData("works", null)]
    [InlineData("fails", "VM_SNAPSHOT_WITH_QUIESCE_FAILED")]
    public async Task Snapshot_with_quiesce_follows_the_scenario_switch(string mode, string? error)
    {
        var file = Path.Combine(Path.GetTempPath(), $"sim-scn-{Guid.NewGuid():N}.json");
        await File.WriteAllTextAsync(file, $$"""{ "base": "default", "snapshotWithQuiesce": "{{mode}}" }""");
        try
        {
            await using var h = await SimHandle.StartAsync(file);
            using var c = await h.LoginAsync();
            var vm = await c.RefByNameAsync("VM", Scenario.DefaultScenario.WebVm);
            if (error is null)
            {
                var snap = V.Str(await c.CallAsync("VM.snapshot_with_quiesce", vm, "q"));
                Assert.Equal("quiesced", V.Map(await c.CallAsync("VM.get_snapshot_info", snap))["disk-snapshot-type"]);
            }
            else Assert.Equal([error, vm], (await c.FailsAsync("VM.snapshot_with_quiesce", vm, "q")).Description);
        }
        finally { File.Delete(file); }
    }

    [Fact]
    public async Task Destroy_needs_halted_or_suspended_and_keeps_vdis()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var running = await c.RefByNameAsync("VM", Scenario.DefaultScenario.WebVm);
        Assert.Equal(["VM_BAD_POWER_STATE", running, "halted, suspended", "running"], (await c.FailsAsync("VM.destroy", running)).Description);
        var ops = V.Arr(await c.CallAsync("VM.get_allowed_operations", running)).Select(V.Str).ToList();
        Assert.Contains("snapshot", ops);
        Assert.DoesNotContain("destroy", ops);
        var snap = V.Str(await c.CallAsync("VM.snapshot", running, "s"));
        var snapVbds = V.Arr(await c.CallAsync("VM.get_VBDs", snap));
        var vdi = V.Str(await c.CallAsync("VBD.get_VDI", V.Str(snapVbds[0])));
        Assert.Contains("destroy", V.Arr(await c.CallAsync("VM.get_allowed_operations", snap)).Select(V.Str));
        await c.CallAsync("VM.destroy", snap);
        Assert.Equal("HANDLE_INVALID", (await c.FailsAsync("VM.get_record", snap)).Code);
        Assert.Equal("HANDLE_INVALID", (await c.FailsAsync("VBD.get_record", V.Str(snapVbds[0]))).Code);
        Assert.Empty(V.Arr(await c.CallAsync("VDI.get_VBDs", vdi)));
        await c.CallAsync("VDI.destroy", vdi);
    }

    [Fact]
    public async Task Power_operations_change_power_state_and_attachment()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var vm = await c.RefByNameAsync("VM", "db-01");
        Assert.Equal(["VM_BAD_POWER_STATE", vm, "running", "halted"], (await c.FailsAsync("VM.clean_shutdown", vm)).Description);
        await c.CallAsync("VM.start", vm, false, false);
        Assert.Equal("Running", V.Str(await c.CallAsync("VM.get_power_state", vm)));
        var vbd = V.Str(V.Arr(await c.CallAsync("VM.get_VBDs", vm))[0]);
        Assert.True(V.Bool(await c.CallAsync("VBD.get_currently_attached", vbd)));
        await c.CallAsync("VM.hard_shutdown", vm);
        Assert.Equal("Halted", V.Str(await c.CallAsync("VM.get_power_state", vm)));
        Assert.False(V.Bool(await c.CallAsync("VBD.get_currently_attached", vbd)));
    }

    [Fact]
    public async Task Checkpoint_of_a_running_vm_is_suspended_and_clone_needs_halted()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var vm = await c.RefByNameAsync("VM", Scenario.DefaultScenario.WebVm);
        var cp = V.Str(await c.CallAsync("VM.checkpoint", vm, "cp"));
        Assert.Equal("Suspended", V.Str(await c.CallAsync("VM.get_power_state", cp)));
        Assert.Equal("VM_BAD_POWER_STATE", (await c.FailsAsync("VM.clone", vm, "c")).Code);
        var halted = await c.RefByNameAsync("VM", "db-01");
        var clone = V.Str(await c.CallAsync("VM.clone", halted, "db-02"));
        var r = await c.RecordAsync("VM", clone);
        Assert.False(V.Bool(r["is_a_snapshot"]));
        Assert.Equal(4, V.Arr(r["VBDs"]).Length); // three disks and the CD drive
    }

    [Fact]
    public async Task Create_vm_vbd_vif_with_autogenerated_mac()
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = await h.LoginAsync(Protocol.JsonRpcV2);
        var rec = new Dictionary<string, object?>
        {
            ["name_label"] = "restored", ["name_description"] = "", ["user_version"] = 1L, ["is_a_template"] = false, ["affinity"] = "OpaqueRef:NULL",
            ["memory_static_max"] = 1L << 30, ["memory_dynamic_max"] = 1L << 30, ["memory_dynamic_min"] = 1L << 30, ["memory_static_min"] = 1L << 29,
            ["VCPUs_params"] = new Dictionary<string, object?>(), ["VCPUs_max"] = 2L, ["VCPUs_at_startup"] = 2L,
            ["actions_after_shutdown"] = "destroy", ["actions_after_reboot"] = "restart", ["actions_after_crash"] = "restart",
            ["PV_bootloader"] = "", ["PV_kernel"] = "", ["PV_ramdisk"] = "", ["PV_args"] = "", ["PV_bootloader_args"] = "", ["PV_legacy_args"] = "",
            ["HVM_boot_policy"] = "BIOS order", ["HVM_boot_params"] = new Dictionary<string, object?> { ["order"] = "cd" },
            ["platform"] = new Dictionary<string, object?>(), ["PCI_bus"] = "", ["other_config"] = new Dictionary<string, object?>(), ["recommendations"] = "",
        };
        var missing = new Dictionary<string, object?>(rec);
        missing.Remove("memory_static_max");
        Assert.Equal("INTERNAL_ERROR", (await c.FailsAsync("VM.create", missing)).Code);
        var vm = V.Str(await c.CallAsync("VM.create", rec));
        Assert.Equal(2, V.Long(await c.CallAsync("VM.get_VCPUs_max", vm)));
        Assert.Equal("Halted", V.Str(await c.CallAsync("VM.get_power_state", vm)));
        var net = await c.RefByNameAsync("network", Scenario.DefaultScenario.ManagementNetwork);
        var vif = V.Str(await c.CallAsync("VIF.create", new Dictionary<string, object?>
        {
            ["device"] = "0", ["network"] = net, ["VM"] = vm, ["MAC"] = "", ["MTU"] = 1500L, ["other_config"] = new Dictionary<string, object?>(),
            ["qos_algorithm_type"] = "", ["qos_algorithm_params"] = new Dictionary<string, object?>(),
        }));
        Assert.Matches("^([0-9a-f]{2}:){5}[0-9a-f]{2}$", V.Str(await c.CallAsync("VIF.get_MAC", vif)));
        Assert.True(V.Bool(await c.CallAsync("VIF.get_MAC_autogenerated", vif)));
        var vif2 = V.Str(await c.CallAsync("VIF.create", new Dictionary<string, object?>
        {
            ["device"] = "1", ["network"] = net, ["VM"] = vm, ["MAC"] = "aa:bb:cc:dd:ee:ff", ["MTU"] = 1500L, ["other_config"] = new Dictionary<string, object?>(),
            ["qos_algorithm_type"] = "", ["qos_algorithm_params"] = new Dictionary<string, object?>(),
        }));
        Assert.Equal("aa:bb:cc:dd:ee:ff", V.Str(await c.CallAsync("VIF.get_MAC", vif2)));
        var sr = await c.RefByNameAsync("SR", Scenario.DefaultScenario.SharedSr);
        var vdi = V.Str(await c.CallAsync("VDI.create", VdiTests.VdiRecord(sr, 1L << 30)));
        var vbd = V.Str(await c.CallAsync("VBD.create", new Dictionary<string, object?>
        {
            ["VM"] = vm, ["VDI"] = vdi, ["userdevice"] = "0", ["bootable"] = true, ["mode"] = "RW", ["type"] = "Disk", ["empty"] = false,
            ["other_config"] = new Dictionary<string, object?>(), ["qos_algorithm_type"] = "", ["qos_algorithm_params"] = new Dictionary<string, object?>(),
        }));
        Assert.Equal(vm, V.Str(await c.CallAsync("VBD.get_VM", vbd)));
        Assert.Equal([vbd], V.Arr(await c.CallAsync("VM.get_VBDs", vm)));
        await c.CallAsync("VBD.destroy", vbd);
        await c.CallAsync("VIF.destroy", vif);
        Assert.Equal([vif2], V.Arr(await c.CallAsync("VM.get_VIFs", vm)));
    }
}
