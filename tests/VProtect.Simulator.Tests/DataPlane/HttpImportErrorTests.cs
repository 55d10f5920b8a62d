using System.IO.Compression;
using System.Text;

namespace VProtect.Simulator.Tests.DataPlane;

/// <summary>PUT /import errors that issue 5 lists and no other test covered: the SR arguments a tar that does not start with ova.xml, a chunk without its checksum file.</summary>
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
    public async Task A_compressed_tar_that_does_not_start_with_ova_xml_is_import_error_unexpected_file_and_creates_nothing()
    {
        await using var t = await TransferSim.StartAsync();
        var vm = await t.VmRefAsync("small-01");
        var gz = (await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export?session_id={t.Session}&ref={vm}&use_compression=gzip")).Body;
        var tar = new MemoryStream();
        await using (var z = new GZipStream(new MemoryStream(gz), CompressionMode.Decompress)) await z.CopyToAsync(tar);
        var xva = tar.ToArray();
        Assert.Equal("ova.xml", Encoding.ASCII.GetString(xva, 0, 7));
        xva[6] = (byte)'m'; // "ova.xmm"
        FixHeaderChecksum(xva, 0);
        var body = new MemoryStream();
        await using (var z = new GZipStream(body, CompressionLevel.Fastest, leaveOpen: true)) await z.WriteAsync(xva);
        int vms = V.Arr(await t.Client.CallAsync("VM.get_all")).Length, vdis = V.Arr(await t.Client.CallAsync("VDI.get_all")).Length;

        var r = await PutAsync(t, "", body.ToArray());

        // import.ml with_open_archive: the gzip path reads the first header and assert_filename_is raises Unexpected_file.
        Assert.Equal(new object?[] { "IMPORT_ERROR_UNEXPECTED_FILE", "ova.xml", "ova.xmm" }, V.Arr((await t.TaskAsync(r.Header("task-id")!))["error_info"]));
        Assert.Equal(vms, V.Arr(await t.Client.CallAsync("VM.get_all")).Length);
        Assert.Equal(vdis, V.Arr(await t.Client.CallAsync("VDI.get_all")).Length);
    }

    [Fact]
    public async Task A_chunk_without_its_checksum_file_is_the_generic_import_error_and_creates_nothing()
    {
        await using var t = await TransferSim.StartAsync();
        var vm = await t.VmRefAsync("small-01");
        var xva = (await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export?session_id={t.Session}&ref={vm}")).Body;
        // Rename the first .xxhash member to a non-checksum name: stream_vdi.ml raises Failure "Expected to find a supported inline checksum file…".
        int pos = 0;
        while (!Encoding.ASCII.GetString(xva, pos, 100).TrimEnd('\0').EndsWith(".xxhash", StringComparison.Ordinal))
            pos += 512 + (int)((Convert.ToInt64(Encoding.ASCII.GetString(xva, pos + 124, 11), 8) + 511) / 512 * 512);
        int dot = Array.IndexOf(xva, (byte)'.', pos);
        Encoding.ASCII.GetBytes(".md5hsh").CopyTo(xva, dot);
        FixHeaderChecksum(xva, pos);
        int vdis = V.Arr(await t.Client.CallAsync("VDI.get_all")).Length;

        var r = await PutAsync(t, "", xva);

        var error = V.Arr((await t.TaskAsync(r.Header("task-id")!))["error_info"]);
        Assert.Equal("IMPORT_ERROR", error[0]);
        Assert.Contains(".md5hsh", V.Str(error[1]));
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
