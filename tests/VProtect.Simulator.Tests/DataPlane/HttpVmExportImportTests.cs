using System.IO.Compression;
using System.Text;
using VProtect.Core.Formats.Xva;
using VProtect.Core.Xapi.Wire;

namespace VProtect.Simulator.Tests.DataPlane;

public sealed class HttpVmExportImportTests
{
    private static async Task<RawHttpResponse> ExportAsync(TransferSim t, string vm, string extra = "")
        => await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export?session_id={t.Session}&uuid={vm}{extra}");

    private static Task<RawHttpResponse> ImportAsync(TransferSim t, byte[] xva, string query = "")
        => RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import?session_id={t.Session}{query}", [$"Content-Length: {xva.Length}"], s => s.WriteAsync(xva).AsTask());

    private static string[] NewVmRefs(Dictionary<string, object?> task)
        => V.Arr(XmlRpc.DecodeValue(V.Str(task["result"]))).Select(V.Str).ToArray();

    [Fact]
    public async Task Export_of_a_halted_vm_is_an_http_1_0_xva_without_cd_and_snapshot_metadata()
    {
        await using var t = await TransferSim.StartAsync();
        var vmUuid = await t.UuidAsync("VM", await t.VmRefAsync("small-01"));
        var r = await ExportAsync(t, vmUuid);
        Assert.Equal("HTTP/1.0 200 OK", r.StatusLine);
        Assert.Null(r.Header("Content-Length"));
        Assert.Equal("attachment; filename=\"export.xva\"", r.Header("Content-Disposition"));
        var result = await XvaReader.VerifyAsync(new MemoryStream(r.Body), "export", CancellationToken.None);
        var meta = result.Metadata;
        Assert.Equal("small-01", meta.Vm!.GetString("name_label"));
        Assert.Equal(2, meta.Vdis.Count);                                  // the CD VBD's (empty) drive is not a disk
        Assert.DoesNotContain(meta.OfClass("VBD"), b => b.GetString("type") == "CD");
        Assert.Equal("OpaqueRef:NULL", meta.Vm.GetString("snapshot_of"));
        Assert.Equal(24, meta.Version.XapiMajor);
        // 6 MiB disk with data in chunks 0 and 4: chunks 1..3 omitted; last chunk always present.
        var system = result.Disks.Single(d => d.VirtualSize == TransferSim.SmallDisk);
        Assert.Equal(3, system.ChunksPresent);
        Assert.Equal(XvaChecksumKind.XxHash64, system.ChecksumKind);
        Assert.Equal("success", (await t.TaskAsync(r.Header("task-id")!))["status"]);
    }

    [Fact]
    public async Task Export_of_a_running_vm_is_vm_bad_power_state()
    {
        await using var t = await TransferSim.StartAsync();
        var vm = await t.VmRefAsync("run-01");
        var task = await t.NewTaskAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export?session_id={t.Session}&ref={vm}&task_id={task}");
        Assert.NotEqual(200, r.Status);
        Assert.Equal(new object?[] { "VM_BAD_POWER_STATE", vm, "halted", "running" }, V.Arr((await t.TaskAsync(task))["error_info"]));
    }

    [Theory]
    [InlineData("", XvaCompression.None)]
    [InlineData("&use_compression=true", XvaCompression.Gzip)]
    [InlineData("&use_compression=zstd", XvaCompression.Zstd)]
    public async Task Export_then_import_gives_a_new_vm_with_new_uuids_and_macs_and_the_same_disks(string compression, XvaCompression expected)
    {
        await using var t = await TransferSim.StartAsync();
        var vm = await t.VmRefAsync("small-01");
        var xva = (await ExportAsync(t, await t.UuidAsync("VM", vm), compression)).Body;
        Assert.Equal(expected, (await XvaReader.VerifyAsync(new MemoryStream(xva), "x", CancellationToken.None)).Compression);
        var r = await ImportAsync(t, xva);
        Assert.Equal(200, r.Status);
        var task = await t.TaskAsync(r.Header("task-id")!);
        Assert.Equal("success", task["status"]);
        var newVm = Assert.Single(NewVmRefs(task));
        Assert.NotEqual(vm, newVm);
        var oldRec = await t.Client.RecordAsync("VM", vm);
        var newRec = await t.Client.RecordAsync("VM", newVm);
        Assert.NotEqual(oldRec["uuid"], newRec["uuid"]);
        Assert.Equal("small-01", newRec["name_label"]);
        Assert.Equal("Halted", newRec["power_state"]);
        var oldMac = V.Str((await t.Client.RecordAsync("VIF", V.Str(V.Arr(oldRec["VIFs"])[0])))["MAC"]);
        var newMac = V.Str((await t.Client.RecordAsync("VIF", V.Str(V.Arr(newRec["VIFs"])[0])))["MAC"]);
        Assert.NotEqual(oldMac, newMac);
        async Task<List<string>> Hashes(Dictionary<string, object?> rec)
        {
            var list = new List<string>();
            foreach (var vbd in V.Arr(rec["VBDs"]).Select(V.Str))
            {
                var b = await t.Client.RecordAsync("VBD", vbd);
                if (V.Str(b["type"]) == "Disk") list.Add(V.Str(b["userdevice"]) + ":" + await t.ControlShaAsync(await t.UuidAsync("VDI", V.Str(b["VDI"]))));
            }
            list.Sort();
            return list;
        }
        Assert.Equal(await Hashes(oldRec), await Hashes(newRec));
    }

    [Fact]
    public async Task Restore_keeps_uuid_and_mac_and_refuses_a_not_newer_version_of_an_existing_halted_vm()
    {
        await using var t = await TransferSim.StartAsync();
        var vm = await t.VmRefAsync("small-01");
        var uuid = await t.UuidAsync("VM", vm);
        var xva = (await ExportAsync(t, uuid)).Body;
        var vdisBefore = V.Arr(await t.Client.CallAsync("VDI.get_all")).Length;
        var refused = await t.TaskAsync((await ImportAsync(t, xva, "&restore=true")).Header("task-id")!);
        Assert.Equal("failure", refused["status"]);
        Assert.Equal("VM_TO_IMPORT_IS_NOT_NEWER_VERSION", V.Arr(refused["error_info"])[0]);
        Assert.Equal(vdisBefore, V.Arr(await t.Client.CallAsync("VDI.get_all")).Length);   // nothing half-created
        // Once the original is gone, restore brings it back with its uuid and MAC.
        var mac = V.Str((await t.Client.RecordAsync("VIF", V.Str(V.Arr((await t.Client.RecordAsync("VM", vm))["VIFs"])[0])))["MAC"]);
        await t.Client.CallAsync("VM.destroy", vm);
        var ok = await t.TaskAsync((await ImportAsync(t, xva, "&restore=true")).Header("task-id")!);
        Assert.Equal("success", ok["status"]);
        var rec = await t.Client.RecordAsync("VM", Assert.Single(NewVmRefs(ok)));
        Assert.Equal(uuid, rec["uuid"]);
        Assert.Equal(mac, V.Str((await t.Client.RecordAsync("VIF", V.Str(V.Arr(rec["VIFs"])[0])))["MAC"]));
    }

    [Fact]
    public async Task Restore_over_a_running_vm_is_vm_bad_power_state()
    {
        await using var t = await TransferSim.StartAsync();
        var vm = await t.VmRefAsync("small-01");
        var xva = (await ExportAsync(t, await t.UuidAsync("VM", vm))).Body;
        await t.Client.CallAsync("VM.start", vm, false, false);
        var task = await t.TaskAsync((await ImportAsync(t, xva, "&restore=true")).Header("task-id")!);
        Assert.Equal(new object?[] { "VM_BAD_POWER_STATE", vm, "halted", "running" }, V.Arr(task["error_info"]));
    }

    [Fact]
    public async Task Checksum_failure_leaves_nothing_behind()
    {
        await using var t = await TransferSim.StartAsync();
        var xva = (await ExportAsync(t, await t.UuidAsync("VM", await t.VmRefAsync("small-01")))).Body;
        // Flip a byte inside the first chunk of data (after ova.xml's header and body).
        int chunkHeader = IndexOfMember(xva, "/00000000");
        xva[chunkHeader + 512 + 100] ^= 0xFF;
        var vms = V.Arr(await t.Client.CallAsync("VM.get_all")).Length;
        var vdis = V.Arr(await t.Client.CallAsync("VDI.get_all")).Length;
        var vbds = V.Arr(await t.Client.CallAsync("VBD.get_all")).Length;
        var task = await t.TaskAsync((await ImportAsync(t, xva)).Header("task-id")!);
        Assert.Equal("failure", task["status"]);
        Assert.Equal(new object?[] { "IMPORT_ERROR_SOME_CHECKSUMS_FAILED" }, V.Arr(task["error_info"]));
        Assert.Equal(vms, V.Arr(await t.Client.CallAsync("VM.get_all")).Length);
        Assert.Equal(vdis, V.Arr(await t.Client.CallAsync("VDI.get_all")).Length);
        Assert.Equal(vbds, V.Arr(await t.Client.CallAsync("VBD.get_all")).Length);
    }

    [Fact]
    public async Task Truncated_xva_is_premature_eof_and_leaves_nothing_behind()
    {
        await using var t = await TransferSim.StartAsync();
        var xva = (await ExportAsync(t, await t.UuidAsync("VM", await t.VmRefAsync("small-01")))).Body;
        var cut = xva[..(xva.Length / 2)];
        var vdis = V.Arr(await t.Client.CallAsync("VDI.get_all")).Length;
        var task = await t.TaskAsync((await ImportAsync(t, cut)).Header("task-id")!);
        Assert.Equal(new object?[] { "IMPORT_ERROR_PREMATURE_EOF" }, V.Arr(task["error_info"]));
        Assert.Equal(vdis, V.Arr(await t.Client.CallAsync("VDI.get_all")).Length);
    }

    [Fact]
    public async Task Chunked_import_is_403_cannot_handle_chunked()
    {
        await using var t = await TransferSim.StartAsync();
        var taskRef = await t.NewTaskAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import?session_id={t.Session}&task_id={taskRef}", ["Transfer-Encoding: chunked"],
            s => s.WriteAsync("0\r\n\r\n"u8.ToArray()).AsTask());
        Assert.Equal(403, r.Status);
        Assert.Equal(new object?[] { "IMPORT_ERROR_CANNOT_HANDLE_CHUNKED" }, V.Arr((await t.TaskAsync(taskRef))["error_info"]));
    }

    [Fact]
    public async Task Exported_snapshot_imports_as_a_template()
    {
        await using var t = await TransferSim.StartAsync();
        var vm = await t.VmRefAsync("small-01");
        var snap = V.Str(await t.Client.CallAsync("VM.snapshot", vm, "before"));
        var xva = (await ExportAsync(t, await t.UuidAsync("VM", snap))).Body;
        var meta = (await XvaReader.VerifyAsync(new MemoryStream(xva), "x", CancellationToken.None)).Metadata;
        Assert.False(V.Bool(meta.Vm!.Snapshot["is_a_snapshot"]));   // export clears snapshot metadata...
        Assert.True(V.Bool(meta.Vm.Snapshot["is_a_template"]));     // ...but keeps is_a_template
        var task = await t.TaskAsync((await ImportAsync(t, xva)).Header("task-id")!);
        var rec = await t.Client.RecordAsync("VM", Assert.Single(NewVmRefs(task)));
        Assert.True(V.Bool(rec["is_a_template"]));
        Assert.False(V.Bool(rec["is_a_snapshot"]));
    }

    [Fact]
    public async Task Export_metadata_is_a_tar_with_only_ova_xml_and_a_content_length()
    {
        await using var t = await TransferSim.StartAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_metadata?session_id={t.Session}&uuid={await t.UuidAsync("VM", await t.VmRefAsync("small-01"))}");
        Assert.Equal(200, r.Status);
        Assert.Equal(r.Body.Length.ToString(), r.Header("Content-Length"));
        Assert.Equal("ova.xml", Encoding.ASCII.GetString(r.Body, 0, 100).TrimEnd('\0'));
        long size = Convert.ToInt64(Encoding.ASCII.GetString(r.Body, 124, 11), 8);
        Assert.Equal(512 + (size + 511) / 512 * 512 + 1024, r.Body.Length);
        var meta = XvaMetadataXml.Decode(Encoding.UTF8.GetString(r.Body, 512, (int)size), "meta", 512);
        Assert.Equal("small-01", meta.Vm!.GetString("name_label"));
    }

    [Fact]
    public async Task A_sample_shaped_like_real_xenserver_output_imports()
    {
        await using var t = await TransferSim.StartAsync();
        using var gz = new GZipStream(File.OpenRead(SamplePath()), CompressionMode.Decompress);
        using var ms = new MemoryStream();
        await gz.CopyToAsync(ms);
        var xva = ms.ToArray();
        var task = await t.TaskAsync((await ImportAsync(t, xva)).Header("task-id")!);
        Assert.Equal("success", task["status"]);
        var rec = await t.Client.RecordAsync("VM", Assert.Single(NewVmRefs(task)));
        Assert.Equal("sample & vm", rec["name_label"]);
        Assert.NotEqual("6f0d3c2a-5b7e-4e1f-9a2b-3c4d5e6f7a8b", rec["uuid"]);
        var disks = new Dictionary<string, byte[]>();
        foreach (var vbd in V.Arr(rec["VBDs"]).Select(V.Str))
        {
            var b = await t.Client.RecordAsync("VBD", vbd);
            var vdi = await t.Client.RecordAsync("VDI", V.Str(b["VDI"]));
            disks[V.Str(vdi["name_label"])] = await t.ReadVdiAsync(V.Str(vdi["uuid"]));
        }
        // Formula of tests/VProtect.Core.Tests/Xva/XapiStyleSample.cs: byte i = i*31 + k + i/4096 (k = 7 data, 13 system).
        static byte Expected(long i, int k) => (byte)((i * 31 + k + i / 4096) & 0xFF);
        var data = disks["data"];
        Assert.Equal(3L << 19, data.Length);
        for (long i = 0; i < data.Length; i += 997) Assert.Equal(Expected(i, 7), data[i]);
        var system = disks["system"];
        Assert.Equal((3L << 20) + 4096, system.Length);
        for (long i = 0; i < system.Length; i += 997)
            Assert.Equal(i is >= 1 << 20 and < 2 << 20 ? (byte)0 : Expected(i, 13), system[i]);
    }

    private static string SamplePath()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var p = Path.Combine(dir.FullName, "tests", "VProtect.Core.Tests", "Xva", "Samples", "xapi-style.xva.gz");
            if (File.Exists(p)) return p;
        }
        throw new FileNotFoundException("tests/VProtect.Core.Tests/Xva/Samples/xapi-style.xva.gz not found above " + AppContext.BaseDirectory);
    }

    private static int IndexOfMember(byte[] tar, string suffix)
    {
        for (int pos = 0; pos + 512 <= tar.Length;)
        {
            string name = Encoding.ASCII.GetString(tar, pos, 100).TrimEnd('\0');
            if (name.Length == 0) break;
            long size = Convert.ToInt64(Encoding.ASCII.GetString(tar, pos + 124, 11), 8);
            if (name.EndsWith(suffix, StringComparison.Ordinal)) return pos;
            pos += 512 + (int)((size + 511) / 512 * 512);
        }
        throw new InvalidDataException($"No member ending in {suffix}.");
    }
}
