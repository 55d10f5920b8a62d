using System.Text;

namespace VProtect.Simulator.Tests.DataPlane;

/// <summary>PUT /import errors that issue 5 lists and no other test covered: the SR arguments and a tar that does not start with ova.xml.</summary>
public sealed class HttpImportErrorTests
{
    private static Task<RawHttpResponse> PutAsync(TransferSim t, string query, byte[] body)
        => RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import?session_id={t.Session}{query}", [$"Content-Length: {body.Length}"], s => s.WriteAsync(body).AsTask());

    [Fact]
    public async Task An_unknown_sr_id_is_404_handle_invalid()
    {
        await using var t = await TransferSim.StartAsync();
        var task = await t.NewTaskAsync();
        var r = await PutAsync(t, $"&sr_id=OpaqueRef:nope&task_id={task}", []);
        Assert.Equal(404, r.Status);
        Assert.Equal(new object?[] { "HANDLE_INVALID", "SR", "OpaqueRef:nope" }, V.Arr((await t.TaskAsync(task))["error_info"]));
    }

    [Fact]
    public async Task Without_sr_id_and_without_a_pool_default_sr_it_is_default_sr_not_found()
    {
        await using var t = await TransferSim.StartAsync();
        var pool = V.Str(V.Arr(await t.Client.CallAsync("pool.get_all"))[0]);
        await t.Client.CallAsync("pool.set_default_SR", pool, "OpaqueRef:NULL");
        var task = await t.NewTaskAsync();
        var r = await PutAsync(t, $"&task_id={task}", []);
        Assert.NotEqual(200, r.Status);
        Assert.Equal(new object?[] { "DEFAULT_SR_NOT_FOUND", "OpaqueRef:NULL" }, V.Arr((await t.TaskAsync(task))["error_info"]));
    }

    [Fact]
    public async Task A_tar_that_does_not_start_with_ova_xml_is_import_error_unexpected_file_and_creates_nothing()
    {
        await using var t = await TransferSim.StartAsync();
        var vm = await t.VmRefAsync("small-01");
        var xva = (await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export?session_id={t.Session}&ref={vm}")).Body;
        Assert.Equal("ova.xml", Encoding.ASCII.GetString(xva, 0, 7));
        xva[6] = (byte)'m'; // "ova.xmm"
        FixHeaderChecksum(xva, 0);
        int vms = V.Arr(await t.Client.CallAsync("VM.get_all")).Length, vdis = V.Arr(await t.Client.CallAsync("VDI.get_all")).Length;
        var r = await PutAsync(t, "", xva);
        var error = V.Arr((await t.TaskAsync(r.Header("task-id")!))["error_info"]);
        Assert.Equal("IMPORT_ERROR_UNEXPECTED_FILE", error[0]);
        Assert.Contains("ova.xmm", string.Join(" ", error.Select(V.Str)));
        Assert.Equal(vms, V.Arr(await t.Client.CallAsync("VM.get_all")).Length);
        Assert.Equal(vdis, V.Arr(await t.Client.CallAsync("VDI.get_all")).Length);
    }

    private static void FixHeaderChecksum(byte[] tar, int header)
    {
        for (int i = 148; i < 156; i++) tar[header + i] = (byte)' ';
        long sum = 0;
        for (int i = 0; i < 512; i++) sum += tar[header + i];
        var text = Encoding.ASCII.GetBytes(Convert.ToString(sum, 8).PadLeft(6, '0') + "\0 ");
        text.CopyTo(tar, header + 148);
    }
}
