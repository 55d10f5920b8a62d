using System.Buffers.Binary;
using VProtect.Core.Xapi.Wire;

namespace VProtect.Simulator.Tests.DataPlane;

public sealed class HttpImportRawVdiTests
{
    private static byte[] Pattern(int length, byte seed)
    {
        var b = new byte[length];
        for (int i = 0; i < b.Length; i++) b[i] = (byte)(i * 7 + seed + i / 4096);
        return b;
    }

    private static Func<Stream, Task> Body(byte[] data) => s => s.WriteAsync(data).AsTask();

    [Fact]
    public async Task Raw_put_writes_the_vdi_marks_cbt_and_the_task_result_is_the_vdi_ref()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 data");
        var uuid = await t.UuidAsync("VDI", vdi);
        await t.Client.CallAsync("VDI.enable_cbt", vdi);
        var snap = V.Str(await t.Client.CallAsync("VDI.snapshot", vdi, new Dictionary<string, object?>()));
        var data = new byte[TransferSim.SecondDisk];
        Pattern(1 << 20, 3).CopyTo(data, 1 << 20); // only the second MiB differs from zero... and the old fill at 2 MiB is zeroed
        var task = await t.NewTaskAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import_raw_vdi?session_id={t.Session}&vdi={vdi}&format=raw&task_id={task}",
            [$"Content-Length: {data.Length}"], Body(data));
        Assert.Equal(200, r.Status);
        Assert.Equal(task, r.Header("task-id"));
        var rec = await t.TaskAsync(task);
        Assert.Equal("success", rec["status"]);
        Assert.Equal(vdi, XmlRpc.DecodeValue(V.Str(rec["result"])));
        Assert.Equal(TransferSim.Sha(data), await t.ControlShaAsync(uuid));
        // CBT: the MiB written with data and the MiB overwritten with zeros are changed; the first MiB is not.
        var extents = Core.Cbt.ChangedBlockBitmap.Decode(V.Str(await t.Client.CallAsync("VDI.list_changed_blocks", snap, vdi)), TransferSim.SecondDisk);
        bool Changed(long offset) => extents.Any(e => e.Offset <= offset && offset < e.Offset + e.Length);
        Assert.False(Changed(0));
        Assert.True(Changed(1 << 20));
        Assert.True(Changed(2L << 20));
    }

    [Fact]
    public async Task Chunked_framing_writes_each_chunk_at_its_offset()
    {
        await using var t = await TransferSim.StartAsync();
        var uuid = await t.UuidAsync("VDI", await t.NewVdiAsync("target", 4L << 20));
        var a = Pattern(5000, 1); var b = Pattern(70000, 2);
        using var ms = new MemoryStream();
        void Frame(ulong offset, byte[] d)
        {
            var h = new byte[12];
            BinaryPrimitives.WriteUInt64LittleEndian(h, offset);
            BinaryPrimitives.WriteUInt32LittleEndian(h.AsSpan(8), (uint)d.Length);
            ms.Write(h); ms.Write(d);
        }
        Frame(512, a); Frame(3L << 20, b); Frame(0, []);
        var body = ms.ToArray();
        var r = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import_raw_vdi?session_id={t.Session}&vdi={uuid}&format=raw&chunked=true",
            [$"Content-Length: {body.Length}"], Body(body));
        Assert.Equal(200, r.Status);
        Assert.Equal("success", (await t.TaskAsync(r.Header("task-id")!))["status"]);
        var expected = new byte[4L << 20];
        a.CopyTo(expected, 512); b.CopyTo(expected, 3L << 20);
        Assert.Equal(expected, await t.ReadVdiAsync(uuid));
    }

    [Fact]
    public async Task Vhd_exported_from_one_vdi_imports_into_another()
    {
        await using var t = await TransferSim.StartAsync();
        var source = await t.VdiRefAsync("small-01 system");
        var vhd = (await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?session_id={t.Session}&vdi={source}&format=vhd")).Body;
        var target = await t.NewVdiAsync("copy", TransferSim.SmallDisk);
        var r = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import_raw_vdi?session_id={t.Session}&vdi={target}&format=vhd",
            [$"Content-Length: {vhd.Length}"], Body(vhd));
        Assert.Equal(200, r.Status);
        Assert.Equal("success", (await t.TaskAsync(r.Header("task-id")!))["status"]);
        Assert.Equal(await t.ControlShaAsync(await t.UuidAsync("VDI", source)), await t.ControlShaAsync(await t.UuidAsync("VDI", target)));
    }

    [Fact]
    public async Task Corrupt_vhd_fails_the_task()
    {
        await using var t = await TransferSim.StartAsync();
        var target = await t.NewVdiAsync("copy", 2L << 20);
        var junk = Pattern(4096, 9);
        var r = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import_raw_vdi?session_id={t.Session}&vdi={target}&format=vhd",
            [$"Content-Length: {junk.Length}"], Body(junk));
        var rec = await t.TaskAsync(r.Header("task-id")!);
        Assert.Equal("failure", rec["status"]);
        Assert.Equal("VDI_IO_ERROR", V.Arr(rec["error_info"])[0]);
    }

    [Fact]
    public async Task Transfer_encoding_is_404_and_internal_error()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 data");
        var task = await t.NewTaskAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import_raw_vdi?session_id={t.Session}&vdi={vdi}&task_id={task}",
            ["Transfer-Encoding: chunked"], s => s.WriteAsync("5\r\nhello\r\n0\r\n\r\n"u8.ToArray()).AsTask());
        Assert.Equal(404, r.Status);
        var rec = await t.TaskAsync(task);
        Assert.Equal("failure", rec["status"]);
        Assert.Equal("INTERNAL_ERROR", V.Arr(rec["error_info"])[0]);
        Assert.Equal(new byte[TransferSim.SecondDisk].Length, (await t.ReadVdiAsync(await t.UuidAsync("VDI", vdi))).Length);
    }

    [Fact]
    public async Task Chunked_with_vhd_is_404_cannot_handle_chunked_vhd_and_unknown_format_is_404()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 data");
        var task = await t.NewTaskAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import_raw_vdi?session_id={t.Session}&vdi={vdi}&format=vhd&chunked=true&task_id={task}", ["Content-Length: 0"]);
        Assert.Equal(404, r.Status);
        Assert.Equal(new object?[] { "INTERNAL_ERROR", "Cannot handle chunked VHD" }, V.Arr((await t.TaskAsync(task))["error_info"]));
        var task2 = await t.NewTaskAsync();
        var r2 = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import_raw_vdi?session_id={t.Session}&vdi={vdi}&format=vmdk&task_id={task2}", ["Content-Length: 0"]);
        Assert.Equal(404, r2.Status);
        Assert.Equal(new object?[] { "INTERNAL_ERROR", "Unknown format vmdk" }, V.Arr((await t.TaskAsync(task2))["error_info"]));
    }

    [Fact]
    public async Task Sr_id_with_raw_creates_an_imported_vdi_of_the_body_size()
    {
        await using var t = await TransferSim.StartAsync();
        var sr = V.Str(V.Arr(await t.Client.CallAsync("SR.get_by_name_label", Scenario.DefaultScenario.SharedSr))[0]);
        var data = Pattern(3 << 20, 5);
        var r = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import_raw_vdi?session_id={t.Session}&sr_id={sr}&format=raw",
            [$"Content-Length: {data.Length}"], Body(data));
        var rec = await t.TaskAsync(r.Header("task-id")!);
        Assert.Equal("success", rec["status"]);
        var vdi = V.Str(XmlRpc.DecodeValue(V.Str(rec["result"])));
        var vdiRec = await t.Client.RecordAsync("VDI", vdi);
        Assert.Equal("Imported VDI", vdiRec["name_label"]);
        Assert.Equal((long)data.Length, V.Long(vdiRec["virtual_size"]));
        Assert.Equal(TransferSim.Sha(data), await t.ControlShaAsync(V.Str(vdiRec["uuid"])));
    }

    [Fact]
    public async Task Short_body_fails_the_task()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 data");
        var r = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import_raw_vdi?session_id={t.Session}&vdi={vdi}",
            [$"Content-Length: {TransferSim.SecondDisk}"], async s => { await s.WriteAsync(Pattern(1000, 1)); s.Socket().Shutdown(System.Net.Sockets.SocketShutdown.Send); });
        var rec = await t.TaskAsync(r.Header("task-id")!);
        Assert.Equal("failure", rec["status"]);
    }
}

internal static class StreamSocket
{
    public static System.Net.Sockets.Socket Socket(this Stream s) => ((System.Net.Sockets.NetworkStream)s).Socket;
}
