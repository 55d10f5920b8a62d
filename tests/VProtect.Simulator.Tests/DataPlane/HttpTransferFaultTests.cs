namespace VProtect.Simulator.Tests.DataPlane;

/// <summary>Faults from the registry applied to the HTTP handlers, and refusals common to the upload handlers.</summary>
public sealed class HttpTransferFaultTests
{
    [Fact]
    public async Task A_method_fault_on_the_http_action_fails_the_transfer_with_that_error()
    {
        await using var t = await TransferSim.StartAsync();
        var vm = await t.VmRefAsync("small-01");
        t.Sim.Faults.AddMethodFault(new Faults.XapiMethodFault("http/get_export", "SR_BACKEND_FAILURE_46", ["", "The VDI is not available", ""], 1));
        var task = await t.NewTaskAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export?session_id={t.Session}&ref={vm}&task_id={task}");
        Assert.Equal(500, r.Status);
        Assert.Equal(new object?[] { "SR_BACKEND_FAILURE_46", "", "The VDI is not available", "" }, V.Arr((await t.TaskAsync(task))["error_info"]));
        // Used once: the next export works.
        Assert.Equal(200, (await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export?session_id={t.Session}&ref={vm}")).Status);
    }

    [Fact]
    public async Task A_dropped_import_upload_is_premature_eof_and_leaves_nothing_behind()
    {
        await using var t = await TransferSim.StartAsync();
        var xva = (await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export?session_id={t.Session}&ref={await t.VmRefAsync("small-01")}")).Body;
        var vdis = V.Arr(await t.Client.CallAsync("VDI.get_all")).Length;
        var vms = V.Arr(await t.Client.CallAsync("VM.get_all")).Length;
        t.Sim.Faults.AddDrop(new Faults.TransferDropFault(Faults.TransferChannel.Http, 1_500_000, 1));
        var r = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import?session_id={t.Session}", [$"Content-Length: {xva.Length}"], s => s.WriteAsync(xva).AsTask());
        var task = await t.TaskAsync(r.Header("task-id")!);
        Assert.Equal(new object?[] { "IMPORT_ERROR_PREMATURE_EOF" }, V.Arr(task["error_info"]));
        Assert.Equal(vdis, V.Arr(await t.Client.CallAsync("VDI.get_all")).Length);
        Assert.Equal(vms, V.Arr(await t.Client.CallAsync("VM.get_all")).Length);
    }

    [Fact]
    public async Task Latency_fault_still_delivers_the_whole_stream()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 data");
        t.Sim.Faults.SetLatency(Faults.TransferChannel.Http, 20);
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?session_id={t.Session}&vdi={vdi}");
        Assert.Equal(await t.ControlShaAsync(await t.UuidAsync("VDI", vdi)), TransferSim.Sha(r.Body));
    }

    [Fact]
    public async Task Import_into_an_iso_sr_is_400_sr_operation_not_supported()
    {
        await using var t = await TransferSim.StartAsync();
        var iso = V.Str(V.Arr(await t.Client.CallAsync("SR.get_by_name_label", Scenario.DefaultScenario.IsoSr))[0]);
        var task = await t.NewTaskAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import?session_id={t.Session}&sr_id={iso}&task_id={task}", ["Content-Length: 0"]);
        Assert.Equal(400, r.Status);
        Assert.Equal(new object?[] { "SR_OPERATION_NOT_SUPPORTED" }, V.Arr((await t.TaskAsync(task))["error_info"]));   // import.ml: no params
    }

    [Fact]
    public async Task Import_without_content_length_is_refused_like_chunked()
    {
        await using var t = await TransferSim.StartAsync();
        var task = await t.NewTaskAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "PUT", $"/import?session_id={t.Session}&task_id={task}", [], s => { s.Socket().Shutdown(System.Net.Sockets.SocketShutdown.Send); return Task.CompletedTask; });
        Assert.Equal(403, r.Status);
        Assert.Equal(new object?[] { "IMPORT_ERROR_CANNOT_HANDLE_CHUNKED" }, V.Arr((await t.TaskAsync(task))["error_info"]));
    }

    [Fact]
    public async Task Session_in_the_query_that_is_invalid_without_basic_auth_is_401()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 data");
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?session_id=OpaqueRef:not-a-session&vdi={vdi}");
        Assert.Equal(401, r.Status);
    }

    [Fact]
    public async Task Task_cancel_during_a_download_ends_the_stream_and_the_task_stays_cancelled()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 system");
        var task = await t.NewTaskAsync();
        // 1 s before each 1 MiB write keeps the 6 MiB stream open long enough to cancel it after its head arrives.
        t.Sim.Faults.SetLatency(Faults.TransferChannel.Http, 1000);
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        using var tcp = new System.Net.Sockets.TcpClient();
        await tcp.ConnectAsync(t.Sim.Url.Host, t.Sim.Url.Port, cts.Token);
        var stream = tcp.GetStream();
        await stream.WriteAsync(System.Text.Encoding.ASCII.GetBytes($"GET /export_raw_vdi?session_id={t.Session}&vdi={vdi}&task_id={task} HTTP/1.1\r\nHost: x\r\n\r\n"), cts.Token);
        var buffer = new byte[64 * 1024];
        int n = await stream.ReadAsync(buffer, cts.Token);   // the head is written before the first (delayed) chunk
        Assert.StartsWith("HTTP/1.1 200 OK", System.Text.Encoding.ASCII.GetString(buffer, 0, n));
        await t.Client.CallAsync("task.cancel", task);
        long total = 0;
        try { while ((n = await stream.ReadAsync(buffer, cts.Token)) > 0) total += n; }
        catch (IOException) { /* reset is fine: the server ended the transfer */ }
        Assert.True(total < TransferSim.SmallDisk, $"{total} bytes arrived; the cancelled transfer should have stopped early.");
        var rec = await t.TaskAsync(task);
        Assert.Equal("cancelled", rec["status"]);
        Assert.Equal(new object?[] { "TASK_CANCELLED", task }, V.Arr(rec["error_info"]));
    }
}
