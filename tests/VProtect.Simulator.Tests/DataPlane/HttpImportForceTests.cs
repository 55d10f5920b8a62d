using System.Text;
using System.Text.Json.Nodes;
using VProtect.Core.Formats.Xva;
using VProtect.Core.Xapi.Wire;

namespace VProtect.Simulator.Tests.DataPlane;

/// <summary>
/// PUT /import?force=true as xapi models it (import.ml, stream_vdi.ml; docs/simulator.md): checksum failures are logged
/// and ignored with the data kept as it arrived; structural damage still fails, and then nothing is cleaned up; a
/// forced restore skips a running VM to replace and replaces a not-newer one.
/// </summary>
public sealed class HttpImportForceTests
{
    private static async Task<byte[]> ExportAsync(TransferSim t, string vmRef)
        => (await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export?session_id={t.Session}&uuid={await t.UuidAsync("VM", vmRef)}")).Body;

    private static async Task<Dictionary<string, object?>> ImportAsync(TransferSim t, byte[] xva, string query)
    {
        var r = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import?session_id={t.Session}{query}", [$"Content-Length: {xva.Length}"], s => s.WriteAsync(xva).AsTask());
        Assert.Equal(200, r.Status);
        return await t.TaskAsync(r.Header("task-id")!);
    }

    private static string[] NewVmRefs(Dictionary<string, object?> task)
        => V.Arr(XmlRpc.DecodeValue(V.Str(task["result"]))).Select(V.Str).ToArray();

    private static async Task<int> CountAsync(TransferSim t, string cls) => V.Arr(await t.Client.CallAsync($"{cls}.get_all")).Length;

    private static async Task<List<string>> LogAsync(TransferSim t)
    {
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        var list = JsonNode.Parse(await http.GetStringAsync(new Uri(t.Sim.ControlUrl, "sim/log")))!.AsArray();
        return list.Select(e => $"{(string)e!["level"]!} {(string)e["message"]!}").ToList();
    }

    /// <summary>Header offset and name of the first tar member whose name ends with <paramref name="suffix"/>.</summary>
    private static (int Offset, string Name) Member(byte[] tar, string suffix)
    {
        for (int pos = 0; pos + 512 <= tar.Length;)
        {
            string name = Encoding.ASCII.GetString(tar, pos, 100).TrimEnd('\0');
            if (name.Length == 0) break;
            long size = Convert.ToInt64(Encoding.ASCII.GetString(tar, pos + 124, 11), 8);
            if (name.EndsWith(suffix, StringComparison.Ordinal)) return (pos, name);
            pos += 512 + (int)((size + 511) / 512 * 512);
        }
        throw new InvalidOperationException($"no member *{suffix}");
    }

    /// <summary>The small-01 export with one byte of its first chunk flipped; also which VDI (by name) and the byte's disk offset.</summary>
    private static async Task<(byte[] Xva, string VdiName, int DiskOffset)> CorruptedExportAsync(TransferSim t)
    {
        var xva = await ExportAsync(t, await t.VmRefAsync("small-01"));
        var meta = (await XvaReader.VerifyAsync(new MemoryStream(xva), "export", CancellationToken.None)).Metadata;
        var (header, name) = Member(xva, "/00000000");
        string vdiName = meta.Find(name.Split('/')[0])!.GetString("name_label")!;
        const int diskOffset = 100;
        xva[header + 512 + diskOffset] ^= 0xFF;
        return (xva, vdiName, diskOffset);
    }

    private static async Task<byte[]> VdiOfVmAsync(TransferSim t, string vmRef, string vdiName)
    {
        foreach (var vbd in V.Arr((await t.Client.RecordAsync("VM", vmRef))["VBDs"]).Select(V.Str))
        {
            var vdi = V.Str((await t.Client.RecordAsync("VBD", vbd))["VDI"]);
            if (vdi == "OpaqueRef:NULL") continue;
            var rec = await t.Client.RecordAsync("VDI", vdi);
            if (V.Str(rec["name_label"]) == vdiName) return await t.ReadVdiAsync(V.Str(rec["uuid"]));
        }
        throw new InvalidOperationException($"VM {vmRef} has no VDI '{vdiName}'");
    }

    [Fact]
    public async Task Forced_import_of_a_corrupted_chunk_succeeds_with_the_data_as_it_arrived_and_logs_the_mismatch()
    {
        await using var t = await TransferSim.StartAsync();
        var (xva, vdiName, diskOffset) = await CorruptedExportAsync(t);
        var expected = await t.ReadVdiAsync(await t.UuidAsync("VDI", await t.VdiRefAsync(vdiName)));
        expected[diskOffset] ^= 0xFF;
        string chunk = Member(xva, "/00000000").Name;

        var task = await ImportAsync(t, xva, "&force=true");

        Assert.Equal("success", task["status"]);
        var vm = Assert.Single(NewVmRefs(task));
        Assert.Equal(expected, await VdiOfVmAsync(t, vm, vdiName));
        var log = await LogAsync(t);
        Assert.Contains("warn Force option supplied: will ignore checksum failures", log);
        Assert.Contains(log, l => l.StartsWith($"error File {chunk} checksum mismatch (", StringComparison.Ordinal));
        Assert.Contains(log, l => l.Contains($"Block {chunk} checksum failed: original = ", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("")]
    [InlineData("&force=false")]
    [InlineData("&force=1")]      // import.ml find_query_flag: only the literal "true" counts
    [InlineData("&force=TRUE")]
    public async Task Without_a_literal_force_true_the_same_stream_fails_and_leaves_nothing(string query)
    {
        await using var t = await TransferSim.StartAsync();
        var (xva, _, _) = await CorruptedExportAsync(t);
        int vms = await CountAsync(t, "VM"), vdis = await CountAsync(t, "VDI"), vbds = await CountAsync(t, "VBD"), vifs = await CountAsync(t, "VIF");

        var task = await ImportAsync(t, xva, query);

        Assert.Equal("failure", task["status"]);
        Assert.Equal(new object?[] { "IMPORT_ERROR_SOME_CHECKSUMS_FAILED" }, V.Arr(task["error_info"]));
        Assert.Equal((vms, vdis, vbds, vifs), (await CountAsync(t, "VM"), await CountAsync(t, "VDI"), await CountAsync(t, "VBD"), await CountAsync(t, "VIF")));
        Assert.DoesNotContain(await LogAsync(t), l => l.Contains("checksum mismatch", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Force_is_read_from_the_query_not_from_a_cookie()
    {
        await using var t = await TransferSim.StartAsync();
        var (xva, _, _) = await CorruptedExportAsync(t);
        var r = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import?session_id={t.Session}", [$"Content-Length: {xva.Length}", "Cookie: force=true"], s => s.WriteAsync(xva).AsTask());
        Assert.Equal(new object?[] { "IMPORT_ERROR_SOME_CHECKSUMS_FAILED" }, V.Arr((await t.TaskAsync(r.Header("task-id")!))["error_info"]));
    }

    [Fact]
    public async Task Forced_import_of_a_truncated_xva_fails_premature_eof_and_keeps_what_it_created()
    {
        await using var t = await TransferSim.StartAsync();
        var xva = await ExportAsync(t, await t.VmRefAsync("small-01"));
        // Cut inside a disk's data: the VM, both VDIs, the VBDs and the VIF exist by then (made from ova.xml).
        var cut = xva[..(Member(xva, "/00000002").Offset + 512 + 1000)];
        int vms = await CountAsync(t, "VM"), vdis = await CountAsync(t, "VDI"), vbds = await CountAsync(t, "VBD"), vifs = await CountAsync(t, "VIF");

        var task = await ImportAsync(t, cut, "&force=true");

        Assert.Equal(new object?[] { "IMPORT_ERROR_PREMATURE_EOF" }, V.Arr(task["error_info"]));
        // xapi: "Not cleaning up after import failure since --force provided".
        Assert.Equal(vms + 1, await CountAsync(t, "VM"));
        Assert.Equal(vdis + 2, await CountAsync(t, "VDI"));
        Assert.Equal(vbds + 2, await CountAsync(t, "VBD"));   // the two disks (CD drives are not exported)
        Assert.Equal(vifs + 1, await CountAsync(t, "VIF"));
        Assert.Contains(await LogAsync(t), l => l.StartsWith("warn Not cleaning up after import failure since --force provided", StringComparison.Ordinal));
        // The same cut without force is cleaned up.
        var strict = await ImportAsync(t, cut, "");
        Assert.Equal(new object?[] { "IMPORT_ERROR_PREMATURE_EOF" }, V.Arr(strict["error_info"]));
        Assert.Equal(vdis + 2, await CountAsync(t, "VDI"));
    }

    [Fact]
    public async Task Forced_import_with_a_damaged_tar_header_still_fails()
    {
        await using var t = await TransferSim.StartAsync();
        var xva = await ExportAsync(t, await t.VmRefAsync("small-01"));
        int header = Member(xva, "/00000000.xxhash").Offset;
        xva[header + 130] ^= 0x01; // a size digit: the header checksum no longer matches

        var task = await ImportAsync(t, xva, "&force=true");

        Assert.Equal("failure", task["status"]);
        var error = V.Arr(task["error_info"]);
        Assert.Equal("IMPORT_ERROR", error[0]);
        Assert.Contains("Tar header checksum mismatch", V.Str(error[1]));
    }

    [Fact]
    public async Task Forced_import_with_a_bad_ova_xml_still_fails_and_creates_nothing()
    {
        await using var t = await TransferSim.StartAsync();
        var xva = await ExportAsync(t, await t.VmRefAsync("small-01"));
        Encoding.ASCII.GetBytes("not xml, not an ova").CopyTo(xva, 512); // ova.xml's data; its tar header stays valid
        int vms = await CountAsync(t, "VM"), vdis = await CountAsync(t, "VDI");

        var task = await ImportAsync(t, xva, "&force=true");

        var error = V.Arr(task["error_info"]);
        Assert.Equal("IMPORT_ERROR", error[0]);
        Assert.Contains("ova.xml", V.Str(error[1]));
        Assert.Equal((vms, vdis), (await CountAsync(t, "VM"), await CountAsync(t, "VDI")));
    }

    [Fact]
    public async Task Forced_restore_over_a_running_vm_skips_it_and_leaves_it_untouched()
    {
        await using var t = await TransferSim.StartAsync();
        var vm = await t.VmRefAsync("small-01");
        var xva = await ExportAsync(t, vm);
        await t.Client.CallAsync("VM.start", vm, false, false);
        var before = await t.Client.RecordAsync("VM", vm);
        int vms = await CountAsync(t, "VM"), vdis = await CountAsync(t, "VDI"), vbds = await CountAsync(t, "VBD"), vifs = await CountAsync(t, "VIF");

        var task = await ImportAsync(t, xva, "&restore=true&force=true");

        Assert.Equal("success", task["status"]);
        Assert.Empty(NewVmRefs(task));
        var after = await t.Client.RecordAsync("VM", vm);
        Assert.Equal("Running", after["power_state"]);
        Assert.Equal(before["VBDs"], after["VBDs"]);
        Assert.Equal(before["VIFs"], after["VIFs"]);
        // xapi creates the VDIs before it looks at the VM, and the VM's own VBDs and VIFs are found by uuid.
        Assert.Equal((vms, vdis + 2, vbds, vifs), (await CountAsync(t, "VM"), await CountAsync(t, "VDI"), await CountAsync(t, "VBD"), await CountAsync(t, "VIF")));
        Assert.Contains(await LogAsync(t), l => l.Contains($"Forced import skipping VM {before["uuid"]} as VM to replace was not halted.", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Forced_restore_over_a_running_vm_whose_vbds_are_gone_is_failed_to_find_object()
    {
        await using var t = await TransferSim.StartAsync();
        var vm = await t.VmRefAsync("small-01");
        var xva = await ExportAsync(t, vm);
        var meta = (await XvaReader.VerifyAsync(new MemoryStream(xva), "export", CancellationToken.None)).Metadata;
        foreach (var vbd in V.Arr((await t.Client.RecordAsync("VM", vm))["VBDs"]).Select(V.Str))
            await t.Client.CallAsync("VBD.destroy", vbd);
        await t.Client.CallAsync("VM.start", vm, false, false);

        var task = await ImportAsync(t, xva, "&restore=true&force=true");

        Assert.Equal(new object?[] { "IMPORT_ERROR_FAILED_TO_FIND_OBJECT", meta.Vm!.Id }, V.Arr(task["error_info"]));
    }

    [Fact]
    public async Task Forced_restore_replaces_a_halted_vm_that_is_not_older()
    {
        await using var t = await TransferSim.StartAsync();
        var vm = await t.VmRefAsync("small-01");
        var uuid = await t.UuidAsync("VM", vm);
        var xva = await ExportAsync(t, vm);
        var refused = await ImportAsync(t, xva, "&restore=true");
        Assert.Equal("VM_TO_IMPORT_IS_NOT_NEWER_VERSION", V.Arr(refused["error_info"])[0]);

        var task = await ImportAsync(t, xva, "&restore=true&force=true");

        Assert.Equal("success", task["status"]);
        var restored = Assert.Single(NewVmRefs(task));
        Assert.NotEqual(vm, restored);
        Assert.Equal(uuid, (await t.Client.RecordAsync("VM", restored))["uuid"]);
        Assert.Equal(restored, V.Str(await t.Client.CallAsync("VM.get_by_uuid", uuid)));
    }
}
