namespace VProtect.Simulator.Tests;

public sealed class VdiTests
{
    public static Dictionary<string, object?> VdiRecord(string sr, long size, string type = "user") => new()
    {
        ["name_label"] = "test disk", ["name_description"] = "", ["SR"] = sr, ["virtual_size"] = size, ["type"] = type,
        ["sharable"] = false, ["read_only"] = false, ["other_config"] = new Dictionary<string, object?>(),
    };

    internal static async Task<List<string>> DiskVdis(XapiTestClient c, string vm)
    {
        var list = new List<(int Device, string Vdi)>();
        foreach (var vbd in V.Arr(await c.CallAsync("VM.get_VBDs", vm)))
        {
            var r = await c.RecordAsync("VBD", V.Str(vbd));
            if (V.Str(r["type"]) == "Disk") list.Add((int.Parse(V.Str(r["userdevice"])), V.Str(r["VDI"])));
        }
        return list.OrderBy(x => x.Device).Select(x => x.Vdi).ToList();
    }

    internal static async Task GuestWriteAsync(SimHandle h, string uuid, long offset, long length, long seed)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(60) };
        using var r = await http.PostAsync(new Uri(h.Sim.ControlUrl, $"sim/vdi/{uuid}/write?offset={offset}&length={length}&seed={seed}"), null);
        Assert.Equal(System.Net.HttpStatusCode.OK, r.StatusCode);
    }

    [Fact]
    public async Task List_changed_blocks_reports_written_64k_blocks_msb_first()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var vm = await c.RefByNameAsync("VM", "db-01");
        var data = (await DiskVdis(c, vm))[1]; // "db-01 data", 8 GiB
        long size = V.Long(await c.CallAsync("VDI.get_virtual_size", data));
        Assert.Equal(8L << 30, size);
        await c.CallAsync("VDI.enable_cbt", data);
        await c.CallAsync("VDI.enable_cbt", data); // idempotent
        var s1 = V.Str(await c.CallAsync("VDI.snapshot", data, new Dictionary<string, object?>()));
        var uuid = V.Str(await c.CallAsync("VDI.get_uuid", data));
        await GuestWriteAsync(h, uuid, 0, 1, 7);                       // block 0
        await GuestWriteAsync(h, uuid, 9 * 65536 + 10, 65536, 7);      // blocks 9 and 10
        await GuestWriteAsync(h, uuid, 1L << 30, 1, 7);                // block 16384
        await GuestWriteAsync(h, uuid, size - 1, 1, 7);                // the last block
        var s2 = V.Str(await c.CallAsync("VDI.snapshot", data, new Dictionary<string, object?>()));
        var bitmap = Convert.FromBase64String(V.Str(await c.CallAsync("VDI.list_changed_blocks", s1, s2)));
        Assert.Equal((int)((size / 65536 + 7) / 8), bitmap.Length);
        var expected = new byte[bitmap.Length];
        expected[0] = 0x80;
        expected[1] = 0x40 | 0x20;
        expected[16384 / 8] = 0x80;
        expected[^1] = 0x01;
        Assert.Equal(expected, bitmap);
        // Same snapshot on both sides: nothing changed.
        Assert.All(Convert.FromBase64String(V.Str(await c.CallAsync("VDI.list_changed_blocks", s2, s2))), b => Assert.Equal(0, b));
        // The live VDI (its VM is halted, so not attached) as vdi_to: nothing written since s2.
        Assert.All(Convert.FromBase64String(V.Str(await c.CallAsync("VDI.list_changed_blocks", s2, data))), b => Assert.Equal(0, b));
        // Later snapshot first: unrelated in SM's terms.
        Assert.Equal("SR_BACKEND_FAILURE_460", (await c.FailsAsync("VDI.list_changed_blocks", s2, s1)).Code);
    }

    [Fact]
    public async Task Bitmap_length_rounds_up_for_odd_sizes()
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = await h.LoginAsync();
        var sr = await c.RefByNameAsync("SR", Scenario.DefaultScenario.SharedSr);
        long size = 65536L * 17 + 3; // 18 blocks -> 3 bytes
        var vdi = V.Str(await c.CallAsync("VDI.create", VdiRecord(sr, size)));
        await c.CallAsync("VDI.enable_cbt", vdi);
        var s1 = V.Str(await c.CallAsync("VDI.snapshot", vdi, new Dictionary<string, object?>()));
        await GuestWriteAsync(h, V.Str(await c.CallAsync("VDI.get_uuid", vdi)), size - 2, 2, 1); // block 17
        var s2 = V.Str(await c.CallAsync("VDI.snapshot", vdi, new Dictionary<string, object?>()));
        Assert.Equal(new byte[] { 0, 0, 0x40 }, Convert.FromBase64String(V.Str(await c.CallAsync("VDI.list_changed_blocks", s1, s2))));
    }

    [Fact]
    public async Task Cbt_errors_follow_xapi()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var web = await c.RefByNameAsync("VM", Scenario.DefaultScenario.WebVm);
        var attached = (await DiskVdis(c, web))[0];
        await c.CallAsync("VDI.enable_cbt", attached); // allowed live
        var s1 = V.Str(await c.CallAsync("VDI.snapshot", attached, new Dictionary<string, object?>()));
        Assert.Equal(["VDI_IN_USE", attached, "list_changed_blocks"], (await c.FailsAsync("VDI.list_changed_blocks", s1, attached)).Description);
        Assert.Equal(["OPERATION_NOT_ALLOWED", $"VDI is a snapshot: {s1}"], (await c.FailsAsync("VDI.enable_cbt", s1)).Description);
        Assert.Equal(["OPERATION_NOT_ALLOWED", $"VDI is not a snapshot: {attached}"], (await c.FailsAsync("VDI.data_destroy", attached)).Description);

        // Unrelated chains.
        var db = await c.RefByNameAsync("VM", "db-01");
        var other = (await DiskVdis(c, db))[0];
        await c.CallAsync("VDI.enable_cbt", other);
        var o1 = V.Str(await c.CallAsync("VDI.snapshot", other, new Dictionary<string, object?>()));
        var unrelated = await c.FailsAsync("VDI.list_changed_blocks", s1, o1);
        Assert.Equal("SR_BACKEND_FAILURE_460", unrelated.Code);
        Assert.Equal("", unrelated.Description[1]);
        Assert.Contains("Source and target VDI are unrelated", unrelated.Description[2]);

        // Disable ends the set: a snapshot after re-enabling is unrelated to one before.
        await c.CallAsync("VDI.disable_cbt", other);
        Assert.False(V.Bool(await c.CallAsync("VDI.get_cbt_enabled", other)));
        await c.CallAsync("VDI.enable_cbt", other);
        var o2 = V.Str(await c.CallAsync("VDI.snapshot", other, new Dictionary<string, object?>()));
        Assert.Equal("SR_BACKEND_FAILURE_460", (await c.FailsAsync("VDI.list_changed_blocks", o1, o2)).Code);

        // A VDI without CBT.
        var noCbt = (await DiskVdis(c, db))[2];
        var n1 = V.Str(await c.CallAsync("VDI.snapshot", noCbt, new Dictionary<string, object?>()));
        Assert.Equal(["VDI_NO_CBT_METADATA", n1], (await c.FailsAsync("VDI.data_destroy", n1)).Description);
    }

    [Fact]
    public async Task Data_destroy_keeps_the_cbt_log_and_needs_the_vbds_gone()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync(Protocol.JsonRpcV2);
        var vm = await c.RefByNameAsync("VM", "db-01");
        var disk = (await DiskVdis(c, vm))[0];
        await c.CallAsync("VDI.enable_cbt", disk);
        var snapVm = V.Str(await c.CallAsync("VM.snapshot", vm, "base"));
        var snapDisk = (await DiskVdis(c, snapVm))[0];
        Assert.Equal(["VDI_IN_USE", snapDisk, "data_destroy"], (await c.FailsAsync("VDI.data_destroy", snapDisk)).Description);
        await c.CallAsync("VM.destroy", snapVm);
        await c.CallAsync("VDI.data_destroy", snapDisk);
        await c.CallAsync("VDI.data_destroy", snapDisk); // idempotent
        var rec = await c.RecordAsync("VDI", snapDisk);
        Assert.Equal("cbt_metadata", V.Str(rec["type"]));
        Assert.True(V.Bool(rec["cbt_enabled"]));
        Assert.Equal(["VDI_INCOMPATIBLE_TYPE", snapDisk, "cbt_metadata"], (await c.FailsAsync("VDI.snapshot", snapDisk, new Dictionary<string, object?>())).Description);
        Assert.Equal(["VDI_INCOMPATIBLE_TYPE", snapDisk, "cbt_metadata"], (await c.FailsAsync("VDI.get_nbd_info", snapDisk)).Description);
        // The metadata-only snapshot still serves as vdi_from.
        await GuestWriteAsync(h, V.Str(await c.CallAsync("VDI.get_uuid", disk)), 3 * 65536, 65536, 9);
        var next = V.Str(await c.CallAsync("VDI.snapshot", disk, new Dictionary<string, object?>()));
        var bits = Convert.FromBase64String(V.Str(await c.CallAsync("VDI.list_changed_blocks", snapDisk, next)));
        Assert.Equal(0x10, bits[0]);
        Assert.All(bits.Skip(1), b => Assert.Equal(0, b));
        // Reading a cbt_metadata VDI's data fails.
        await Assert.ThrowsAsync<IOException>(async () => await h.Sim.OpenVdi(V.Str(rec["uuid"])).ReadAsync(0, new byte[512], CancellationToken.None));
    }

    [Fact]
    public async Task Resize_grows_the_disk_with_zeros_rounds_to_2_MiB_and_keeps_CBT_across_it()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var vm = await c.RefByNameAsync("VM", "db-01"); // halted: its disks are not attached
        var data = (await DiskVdis(c, vm))[1];
        var uuid = V.Str(await c.CallAsync("VDI.get_uuid", data));
        long old = V.Long(await c.CallAsync("VDI.get_virtual_size", data));
        await c.CallAsync("VDI.enable_cbt", data);
        var s1 = V.Str(await c.CallAsync("VDI.snapshot", data, new Dictionary<string, object?>()));
        var sr = V.Str(await c.CallAsync("VDI.get_SR", data));
        long allocated = V.Long(await c.CallAsync("SR.get_virtual_allocation", sr));

        await c.CallAsync("VDI.resize", data, old + (3L << 20));
        long grown = old + (4L << 20);                                         // rounded up to SM's 2 MiB VHD block
        Assert.Equal(grown, V.Long(await c.CallAsync("VDI.get_virtual_size", data)));
        Assert.Equal(grown, h.Sim.OpenVdi(uuid).Length);
        Assert.Equal(allocated + (4L << 20), V.Long(await c.CallAsync("SR.get_virtual_allocation", sr)));
        Assert.Equal(old, V.Long(await c.CallAsync("VDI.get_virtual_size", s1))); // the snapshot keeps its size
        var tail = new byte[4 << 20];
        Array.Fill(tail, (byte)0xEE);
        await h.Sim.OpenVdi(uuid).ReadAsync(old, tail, CancellationToken.None);
        Assert.All(tail, b => Assert.Equal(0, b));
        // Data before the old end is untouched: the seeded fill at 100 MiB is still there.
        var filled = new byte[65536];
        await h.Sim.OpenVdi(uuid).ReadAsync(100L << 20, filled, CancellationToken.None);
        Assert.Contains(filled, b => b != 0);

        // CBT survives the resize: the changed blocks since s1 include a write in the new area; the bitmap has the new length.
        await GuestWriteAsync(h, uuid, old + 65536, 65536, 5);
        var s2 = V.Str(await c.CallAsync("VDI.snapshot", data, new Dictionary<string, object?>()));
        var bits = Convert.FromBase64String(V.Str(await c.CallAsync("VDI.list_changed_blocks", s1, s2)));
        Assert.Equal((int)((grown / 65536 + 7) / 8), bits.Length);
        long block = (old + 65536) / 65536;
        Assert.Equal(0x80 >> (int)(block % 8), bits[block / 8]);
        Assert.Equal(1, bits.Sum(b => System.Numerics.BitOperations.PopCount(b)));

        // Same size again: nothing happens. Shrinking: SM's VDISize error.
        await c.CallAsync("VDI.resize", data, grown);
        Assert.Equal(grown, V.Long(await c.CallAsync("VDI.get_virtual_size", data)));
        Assert.Equal(["SR_BACKEND_FAILURE_79", "", "VDI Invalid size [opterr=shrinking not allowed]", ""],
            (await c.FailsAsync("VDI.resize", data, old)).Description);
        Assert.Equal("SR_BACKEND_FAILURE_79", (await c.FailsAsync("VDI.resize", data, (2041L << 30))).Code);
        Assert.Equal(grown, V.Long(await c.CallAsync("VDI.get_virtual_size", data)));
    }

    [Fact]
    public async Task Resize_refuses_attached_and_cbt_metadata_disks_and_a_full_SR_and_resize_online_follows_the_scenario()
    {
        var file = Path.Combine(Path.GetTempPath(), $"sim-scn-{Guid.NewGuid():N}.json");
        await File.WriteAllTextAsync(file, """{ "base": "default", "resizeOnline": "unsupported" }""");
        try
        {
            await using var h = await SimHandle.StartAsync(file);
            using var c = await h.LoginAsync(Protocol.JsonRpcV2);
            var web = await c.RefByNameAsync("VM", Scenario.DefaultScenario.WebVm); // running: its disks are attached
            var attached = (await DiskVdis(c, web))[1];
            long size = V.Long(await c.CallAsync("VDI.get_virtual_size", attached));
            var sr = V.Str(await c.CallAsync("VDI.get_SR", attached));
            Assert.Equal(["VDI_IN_USE", attached, "resize"], (await c.FailsAsync("VDI.resize", attached, size + (2L << 20))).Description);
            Assert.Equal(["SR_OPERATION_NOT_SUPPORTED", sr], (await c.FailsAsync("VDI.resize_online", attached, size + (2L << 20))).Description);
            h.Sim.Settings.ResizeOnline = Scenario.ResizeOnlineMode.Works;
            await c.CallAsync("VDI.resize_online", attached, size + (2L << 20));
            Assert.Equal(size + (2L << 20), V.Long(await c.CallAsync("VDI.get_virtual_size", attached)));
            h.Sim.Settings.ResizeOnline = Scenario.ResizeOnlineMode.Removed; // released hosts
            Assert.Equal(["MESSAGE_REMOVED"], (await c.FailsAsync("VDI.resize_online", attached, size + (4L << 20))).Description);

            var db = await c.RefByNameAsync("VM", "db-01");
            var disk = (await DiskVdis(c, db))[0];
            await c.CallAsync("VDI.enable_cbt", disk);
            var snap = V.Str(await c.CallAsync("VDI.snapshot", disk, new Dictionary<string, object?>()));
            await c.CallAsync("VDI.resize", snap, V.Long(await c.CallAsync("VDI.get_virtual_size", snap)) + (2L << 20)); // allowed: not a cbt_metadata VDI
            await c.CallAsync("VDI.data_destroy", snap);
            Assert.Equal(["VDI_INCOMPATIBLE_TYPE", snap, "cbt_metadata"], (await c.FailsAsync("VDI.resize", snap, 8L << 30)).Description);

            var local = await c.RefByNameAsync("SR", "Local storage xen-sim-01");
            var small = V.Str(await c.CallAsync("VDI.create", VdiRecord(local, 1 << 20)));
            long physical = V.Long(await c.CallAsync("SR.get_physical_size", local));
            Assert.Equal(["SR_BACKEND_FAILURE_44", "", "There is insufficient space", ""], (await c.FailsAsync("VDI.resize", small, physical + 1)).Description);
        }
        finally { File.Delete(file); }
    }

    [Fact]
    public async Task Licence_restriction_blocks_enable_cbt()
    {
        var file = Path.Combine(Path.GetTempPath(), $"sim-scn-{Guid.NewGuid():N}.json");
        await File.WriteAllTextAsync(file, """{ "base": "default", "restrictCbt": true }""");
        try
        {
            await using var h = await SimHandle.StartAsync(file);
            using var c = await h.LoginAsync();
            var vm = await c.RefByNameAsync("VM", "db-01");
            var disk = (await DiskVdis(c, vm))[0];
            Assert.Equal(["LICENCE_RESTRICTION", "CBT"], (await c.FailsAsync("VDI.enable_cbt", disk)).Description);
            var pool = V.Map(V.Map(await c.CallAsync("pool.get_all_records")).Values.Single());
            Assert.Equal("true", V.Map(pool["restrictions"])["restrict_cbt"]);
        }
        finally { File.Delete(file); }
    }

    [Fact]
    public async Task Create_and_destroy_check_type_capacity_and_use()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var sr = await c.RefByNameAsync("SR", Scenario.DefaultScenario.SharedSr);
        Assert.Equal(["VDI_INCOMPATIBLE_TYPE", "", "cbt_metadata"], (await c.FailsAsync("VDI.create", VdiRecord(sr, 1 << 20, "cbt_metadata"))).Description);
        long physical = V.Long(await c.CallAsync("SR.get_physical_size", sr));
        var full = await c.FailsAsync("VDI.create", VdiRecord(sr, physical + 1));
        Assert.Equal("SR_FULL", full.Code);
        Assert.Equal((physical + 1).ToString(), full.Description[1]);
        var iso = await c.RefByNameAsync("SR", Scenario.DefaultScenario.IsoSr);
        Assert.Equal(["SR_OPERATION_NOT_SUPPORTED", iso], (await c.FailsAsync("VDI.create", VdiRecord(iso, 1 << 20))).Description);
        var missing = VdiRecord(sr, 1 << 20);
        missing.Remove("sharable");
        Assert.Equal("INTERNAL_ERROR", (await c.FailsAsync("VDI.create", missing)).Code);

        long before = V.Long(await c.CallAsync("SR.get_virtual_allocation", sr));
        var vdi = V.Str(await c.CallAsync("VDI.create", VdiRecord(sr, 100L << 30))); // 100 GiB costs nothing
        Assert.Equal(before + (100L << 30), V.Long(await c.CallAsync("SR.get_virtual_allocation", sr)));
        Assert.Contains(vdi, V.Arr(await c.CallAsync("SR.get_VDIs", sr)));
        await c.CallAsync("VDI.destroy", vdi);
        Assert.Equal(before, V.Long(await c.CallAsync("SR.get_virtual_allocation", sr)));

        var web = await c.RefByNameAsync("VM", Scenario.DefaultScenario.WebVm);
        var attached = (await DiskVdis(c, web))[0];
        Assert.Equal(["VDI_IN_USE", attached, "destroy"], (await c.FailsAsync("VDI.destroy", attached)).Description);
    }

    [Fact]
    public async Task Nbd_info_follows_network_purposes()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var web = await c.RefByNameAsync("VM", Scenario.DefaultScenario.WebVm);
        var disk = (await DiskVdis(c, web))[0];
        Assert.Empty(V.Arr(await c.CallAsync("VDI.get_nbd_info", disk)));
        var mgmt = await c.RefByNameAsync("network", Scenario.DefaultScenario.ManagementNetwork);
        var storage = await c.RefByNameAsync("network", Scenario.DefaultScenario.StorageNetwork);
        await c.CallAsync("network.add_purpose", mgmt, "nbd");
        Assert.Equal(["NETWORK_INCOMPATIBLE_PURPOSES", "insecure_nbd", "nbd"], (await c.FailsAsync("network.add_purpose", storage, "insecure_nbd")).Description);
        var infos = V.Arr(await c.CallAsync("VDI.get_nbd_info", disk)).Select(V.Map).ToList();
        // The shared SR is seen by both hosts: one entry per management PIF.
        Assert.Equal(["127.0.0.1", "127.0.0.2"], infos.Select(i => V.Str(i["address"])).Order());
        var uuid = V.Str(await c.CallAsync("VDI.get_uuid", disk));
        Assert.All(infos, i =>
        {
            Assert.Equal($"/{uuid}?session_id={c.Session}", V.Str(i["exportname"]));
            Assert.Equal(h.Sim.NbdPort, V.Long(i["port"]));
            Assert.Equal(h.Sim.Certificate.Thumbprint, System.Security.Cryptography.X509Certificates.X509Certificate2.CreateFromPem(V.Str(i["cert"])).Thumbprint);
        });
        Assert.Contains(Scenario.DefaultScenario.MasterName, infos.Select(i => V.Str(i["subject"])));
        // get_nbd_info has no Async form.
        Assert.Equal("Fault", (await c.FailsAsync("Async.VDI.get_nbd_info", disk)).Code);
        await c.CallAsync("network.remove_purpose", mgmt, "nbd");
        Assert.Empty(V.Arr(await c.CallAsync("VDI.get_nbd_info", disk)));
        await c.CallAsync("network.add_purpose", storage, "insecure_nbd"); // allowed once nbd is gone
    }
}
