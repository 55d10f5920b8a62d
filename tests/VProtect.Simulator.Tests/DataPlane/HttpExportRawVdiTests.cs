using System.Buffers.Binary;
using System.Text;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.Formats.Xva;
using VProtect.Core.IO;

namespace VProtect.Simulator.Tests.DataPlane;

public sealed class HttpExportRawVdiTests
{
    [Fact]
    public async Task Raw_export_with_session_cookie_streams_the_whole_disk_without_length_and_completes_the_client_task()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 system");
        var uuid = await t.UuidAsync("VDI", vdi);
        var task = await t.NewTaskAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?vdi={uuid}&format=raw&task_id={task}", [$"Cookie: session_id={t.Session}"]);
        Assert.Equal("HTTP/1.1 200 OK", r.StatusLine);
        Assert.Null(r.Header("Content-Length"));
        Assert.Equal("close", r.Header("Connection"));
        Assert.Equal("no-cache, no-store", r.Header("Cache-Control"));
        Assert.Equal(task, r.Header("task-id"));
        Assert.Equal("application/octet-stream", r.Header("Content-Type"));
        Assert.Equal(TransferSim.SmallDisk, r.Body.Length);
        Assert.Equal(await t.ControlShaAsync(uuid), TransferSim.Sha(r.Body));
        var rec = await t.TaskAsync(task);
        Assert.Equal("success", rec["status"]);
    }

    [Fact]
    public async Task Basic_auth_works_and_its_temporary_session_is_logged_out()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 data");
        int sessionsBefore = t.Sim.Core.Db.All("session").Count;
        var basic = Convert.ToBase64String(Encoding.UTF8.GetBytes($"{t.Sim.User}:{t.Sim.Password}"));
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?vdi={vdi}", [$"Authorization: Basic {basic}"]);
        Assert.Equal(200, r.Status);
        Assert.Equal(TransferSim.SecondDisk, r.Body.Length);
        Assert.Equal(sessionsBefore, t.Sim.Core.Db.All("session").Count);
        // Without format the default is raw; the task the simulator made itself succeeded.
        Assert.Equal("success", (await t.TaskAsync(r.Header("task-id")!))["status"]);
    }

    [Fact]
    public async Task No_credentials_is_401_with_basic_realm_and_fails_the_client_task()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 data");
        var task = await t.NewTaskAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?vdi={vdi}&task_id={task}");
        Assert.Equal(401, r.Status);
        Assert.StartsWith("Basic realm=", r.Header("WWW-Authenticate"));
        var rec = await t.TaskAsync(task);
        Assert.Equal("failure", rec["status"]);
        Assert.Equal("SESSION_AUTHENTICATION_FAILED", V.Arr(rec["error_info"])[0]);
        var wrong = Convert.ToBase64String(Encoding.UTF8.GetBytes($"{t.Sim.User}:not-the-password"));
        Assert.Equal(401, (await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?vdi={vdi}", [$"Authorization: Basic {wrong}"])).Status);
    }

    [Fact]
    public async Task Unknown_format_is_404_and_task_internal_error()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 data");
        var task = await t.NewTaskAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?session_id={t.Session}&vdi={vdi}&format=qcow3&task_id={task}");
        Assert.Equal(404, r.Status);
        var rec = await t.TaskAsync(task);
        Assert.Equal("failure", rec["status"]);
        Assert.Equal(new object?[] { "INTERNAL_ERROR", "Unknown format qcow3" }, V.Arr(rec["error_info"]));
    }

    [Fact]
    public async Task Raw_with_base_is_refused_and_unknown_vdi_is_handle_invalid()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 data");
        var snap = V.Str(await t.Client.CallAsync("VDI.snapshot", vdi, new Dictionary<string, object?>()));
        var task = await t.NewTaskAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?session_id={t.Session}&vdi={vdi}&format=raw&base={snap}&task_id={task}");
        Assert.NotEqual(200, r.Status);
        Assert.Equal("INTERNAL_ERROR", V.Arr((await t.TaskAsync(task))["error_info"])[0]);
        var task2 = await t.NewTaskAsync();
        var r2 = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?session_id={t.Session}&vdi=OpaqueRef:nope&task_id={task2}");
        Assert.Equal(404, r2.Status);
        Assert.Equal(new object?[] { "HANDLE_INVALID", "VDI", "OpaqueRef:nope" }, V.Arr((await t.TaskAsync(task2))["error_info"]));
    }

    [Fact]
    public async Task Vhd_without_base_is_a_dynamic_vhd_of_the_allocated_blocks_like_vhd_tool()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 system");
        var uuid = await t.UuidAsync("VDI", vdi);
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?session_id={t.Session}&vdi={vdi}&format=vhd");
        Assert.Equal(200, r.Status);
        Assert.Equal("application/vhd", r.Header("Content-Type"));
        var vhd = r.Body;
        Assert.Equal("conectix", Encoding.ASCII.GetString(vhd, 0, 8));
        Assert.Equal("caml", Encoding.ASCII.GetString(vhd, 28, 4));
        Assert.Equal(3u, BinaryPrimitives.ReadUInt32BigEndian(vhd.AsSpan(60))); // dynamic
        Assert.Equal(0u, BinaryPrimitives.ReadUInt32BigEndian(vhd.AsSpan(24))); // timestamp 0
        Assert.Equal(vhd[..512], vhd[^512..]);
        // Data at 0..1 MiB (block 0) and 4 MiB (block 2): two 2 MiB blocks with a 512-byte bitmap each.
        Assert.Equal(2, AllocatedBatEntries(vhd));
        var target = new SparseMemoryDisk(TransferSim.SmallDisk);
        await VhdStreamReader.ApplyAsync(new MemoryStream(vhd), target, "test");
        Assert.Equal(await t.ReadVdiAsync(uuid), await ReadAllAsync(target));
    }

    [Fact]
    public async Task Vhd_with_base_is_a_differencing_vhd_of_whole_blocks_changed_since_the_base()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 system");
        var uuid = await t.UuidAsync("VDI", vdi);
        var snap = V.Str(await t.Client.CallAsync("VDI.snapshot", vdi, new Dictionary<string, object?>()));
        var baseContent = await t.ReadVdiAsync(await t.UuidAsync("VDI", snap));
        // One 4 KiB guest write inside block 1 (2..4 MiB) after the snapshot.
        await t.Sim.OpenVdi(uuid).WriteAsync((3L << 20) + 8192, Enumerable.Repeat((byte)0x5A, 4096).ToArray(), CancellationToken.None);
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?session_id={t.Session}&vdi={uuid}&format=vhd&base={snap}");
        Assert.Equal(200, r.Status);
        var vhd = r.Body;
        Assert.Equal(4u, BinaryPrimitives.ReadUInt32BigEndian(vhd.AsSpan(60))); // differencing
        Assert.Equal(1, AllocatedBatEntries(vhd));
        // Header at 512: parent unique id (offset 40) = the base layer id, BAT at 2048.
        Assert.Equal(2048UL, BinaryPrimitives.ReadUInt64BigEndian(vhd.AsSpan(512 + 16)));
        var parentId = new Guid(vhd.AsSpan(512 + 40, 16), bigEndian: true);
        Assert.Equal(t.Sim.GetLayers(await t.UuidAsync("VDI", snap))[0].Id, parentId.ToString("N"));
        // Applying the delta onto the base gives the current content: the whole 2 MiB block was sent.
        var target = new SparseMemoryDisk(TransferSim.SmallDisk);
        await target.WriteAsync(0, baseContent, CancellationToken.None);
        var result = await VhdStreamReader.ApplyAsync(new MemoryStream(vhd), target, "test");
        Assert.Equal(1, result.BlocksApplied);
        Assert.Equal(await t.ReadVdiAsync(uuid), await ReadAllAsync(target));
    }

    [Fact]
    public async Task Vhd_beyond_2040_GiB_is_vdi_too_large()
    {
        await using var t = await TransferSim.StartAsync();
        var sr = t.Sim.Core.Db.All("SR").First(s => s.Str("name_label") == Scenario.DefaultScenario.SharedSr);
        sr.Fields["physical_size"] = 8L << 40;
        var big = await t.NewVdiAsync("big", 2041L << 30);
        var task = await t.NewTaskAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?session_id={t.Session}&vdi={big}&format=vhd&task_id={task}");
        Assert.NotEqual(200, r.Status);
        Assert.Equal(new object?[] { "VDI_TOO_LARGE", big, (2040L << 30).ToString() }, V.Arr((await t.TaskAsync(task))["error_info"]));
    }

    [Fact]
    public async Task Tar_is_the_xva_chunk_format_under_vdi_with_zero_chunks_omitted()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 system");
        var uuid = await t.UuidAsync("VDI", vdi);
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?session_id={t.Session}&vdi={vdi}&format=tar");
        Assert.Equal("application/x-tar", r.Header("Content-Type"));
        var members = new List<(string Name, byte[] Data)>();
        for (int pos = 0; pos + 512 <= r.Body.Length;)
        {
            var h = r.Body.AsSpan(pos, 512);
            if (!h.ContainsAnyExcept((byte)0)) break;
            string name = Encoding.ASCII.GetString(h[..100]).TrimEnd('\0');
            Assert.NotEqual("ustar", Encoding.ASCII.GetString(h.Slice(257, 5))); // V7 headers carry no magic
            long size = Convert.ToInt64(Encoding.ASCII.GetString(h.Slice(124, 11)), 8);
            members.Add((name, r.Body.AsSpan(pos + 512, (int)size).ToArray()));
            pos += 512 + (int)((size + 511) / 512 * 512);
        }
        // 6 chunks of 1 MiB: data in 0 and 4, 5 is the last (always sent), 1..3 all zero and omitted.
        Assert.Equal(new[] { "vdi/00000000", "vdi/00000000.xxhash", "vdi/00000004", "vdi/00000004.xxhash", "vdi/00000005", "vdi/00000005.xxhash" }, members.Select(m => m.Name));
        var content = await t.ReadVdiAsync(uuid);
        for (int i = 0; i < members.Count; i += 2)
        {
            long counter = long.Parse(members[i].Name[4..]);
            Assert.Equal(content.AsSpan((int)(counter << 20), 1 << 20).ToArray(), members[i].Data);
            Assert.Equal(XvaFormat.FormatChecksum(members[i].Data, XvaChecksumKind.XxHash64), Encoding.ASCII.GetString(members[i + 1].Data));
        }
    }

    [Fact]
    public async Task Injected_drop_cuts_the_stream_and_fails_the_task()
    {
        await using var t = await TransferSim.StartAsync();
        var vdi = await t.VdiRefAsync("small-01 system");
        // Through the control API, as tests and the demo inject it.
        using (var control = new HttpClient())
        {
            using var resp = await control.PostAsync(new Uri(t.Sim.ControlUrl, "sim/faults"),
                new StringContent("{\"drop\":\"http\",\"afterBytes\":1000000,\"count\":1}", Encoding.UTF8, "application/json"));
            Assert.True(resp.IsSuccessStatusCode, await resp.Content.ReadAsStringAsync());
        }
        var task = await t.NewTaskAsync();
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?session_id={t.Session}&vdi={vdi}&task_id={task}");
        Assert.Equal(200, r.Status);
        Assert.Equal(1_000_000, r.Body.Length);
        var rec = await t.TaskAsync(task);
        Assert.Equal("failure", rec["status"]);
        Assert.Equal("CLIENT_ERROR", V.Arr(rec["error_info"])[0]);
        // The fault was used once: the next transfer is whole.
        var again = await RawHttp.SendAsync(t.Sim.Url, "GET", $"/export_raw_vdi?session_id={t.Session}&vdi={vdi}");
        Assert.Equal(TransferSim.SmallDisk, again.Body.Length);
    }

    [Fact]
    public async Task Sr_better_seen_from_the_member_redirects_with_302_to_its_address()
    {
        await using var t = await TransferSim.StartAsync(new() { [Scenario.DefaultScenario.SharedSr] = Scenario.DefaultScenario.MemberName });
        var vdi = await t.VdiRefAsync("small-01 data");
        var target = $"/export_raw_vdi?session_id={t.Session}&vdi={vdi}&format=raw";
        var r = await RawHttp.SendAsync(t.Sim.Url, "GET", target);
        Assert.Equal(302, r.Status);
        Assert.Equal($"http://{XenSimulator.MemberAddress}:{t.Sim.Url.Port}{target}", r.Header("Location"));
        // The member serves it.
        var served = await RawHttp.SendAsync(new Uri(r.Header("Location")!), "GET", target);
        Assert.Equal(200, served.Status);
        Assert.Equal(TransferSim.SecondDisk, served.Body.Length);
        // A VM export whose disks live on that SR is forwarded the same way.
        var export = $"/export?session_id={t.Session}&ref={await t.VmRefAsync("small-01")}";
        var forwarded = await RawHttp.SendAsync(t.Sim.Url, "GET", export);
        Assert.Equal(302, forwarded.Status);
        Assert.Equal($"http://{XenSimulator.MemberAddress}:{t.Sim.Url.Port}{export}", forwarded.Header("Location"));
        Assert.Equal("HTTP/1.0 200 OK", (await RawHttp.SendAsync(new Uri(forwarded.Header("Location")!), "GET", export)).StatusLine);
    }

    internal static int AllocatedBatEntries(byte[] vhd)
    {
        ulong tableOffset = BinaryPrimitives.ReadUInt64BigEndian(vhd.AsSpan(512 + 16));
        uint entries = BinaryPrimitives.ReadUInt32BigEndian(vhd.AsSpan(512 + 28));
        int count = 0;
        for (int i = 0; i < entries; i++)
            if (BinaryPrimitives.ReadUInt32BigEndian(vhd.AsSpan((int)tableOffset + 4 * i)) != 0xFFFFFFFF) count++;
        return count;
    }

    internal static async Task<byte[]> ReadAllAsync(IBlockSource source)
    {
        var b = new byte[source.Length];
        await source.ReadAsync(0, b, CancellationToken.None);
        return b;
    }
}
