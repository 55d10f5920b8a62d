using System.Net;
using System.Security.Cryptography;
using System.Text.Json.Nodes;
using VProtect.Core.Nbd;
using VProtect.Simulator.DataPlane.Nbd;

namespace VProtect.Simulator.Tests.DataPlane;

/// <summary>The simulator's xapi-nbd: connection policy, export names, dom0 VBDs, the cap and the faults (docs/simulator.md "xapi-nbd").</summary>
public sealed class NbdXapiNbdTests
{
    private static NbdClientOptions ClientOptions(NbdTestPool pool, string? exportName = null, NbdTlsOptions? tls = null) =>
        new(new IPEndPoint(IPAddress.Loopback, pool.Sim.NbdPort), exportName ?? pool.ExportName)
        {
            Tls = tls ?? NbdTlsOptions.Insecure, Connections = 1, ConnectTimeout = TimeSpan.FromSeconds(20),
            RequestTimeout = TimeSpan.FromSeconds(30), RequestSize = 1 << 20, MaxRetries = 0,
        };

    private static async Task<string> HashWithOurClientAsync(NbdClient client)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        for (long pos = 0; pos < client.Size; pos += buffer.Length)
        {
            int n = (int)Math.Min(buffer.Length, client.Size - pos);
            await client.ReadAsync(pos, buffer.AsMemory(0, n), NbdTestPool.Timeout());
            sha.AppendData(buffer, 0, n);
        }
        return Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant();
    }

    [Fact]
    public async Task Connection_is_refused_while_no_network_has_an_nbd_purpose_decided_per_connection()
    {
        await using var pool = await NbdTestPool.StartAsync(purpose: null);
        await using (var raw = await pool.RawAsync(NbdTestPool.Timeout()))
            Assert.False(await raw.GreetingAsync(NbdTestPool.Timeout()), "no NBD purpose: closed without a greeting");

        await pool.SetPurposeAsync("insecure_nbd");
        await using (var raw = await pool.RawAsync(NbdTestPool.Timeout()))
            Assert.NotNull(await raw.OpenExportAsync(pool.ExportName, NbdTestPool.Timeout()));

        await pool.RemovePurposeAsync("insecure_nbd");
        await using (var raw = await pool.RawAsync(NbdTestPool.Timeout()))
            Assert.False(await raw.GreetingAsync(NbdTestPool.Timeout()), "purpose removed: refused again");
        await Assert.ThrowsAnyAsync<NbdException>(async () => await NbdClient.ConnectAsync(ClientOptions(pool), NbdTestPool.Timeout()));
    }

    [Fact]
    public async Task Insecure_nbd_serves_the_vdi_read_only_through_export_name_with_our_client()
    {
        await using var pool = await NbdTestPool.StartAsync("insecure_nbd");
        var info = await pool.NbdInfoAsync();
        Assert.Equal((long)pool.Sim.NbdPort, V.Long(info["port"]));
        await using var client = await NbdClient.ConnectAsync(ClientOptions(pool, V.Str(info["exportname"])), NbdTestPool.Timeout());
        Assert.False(client.Export.NegotiatedWithGo); // GO answered ERR_UNSUP, EXPORT_NAME used
        Assert.False(client.Export.StructuredReplies);
        Assert.False(client.Export.Tls);
        Assert.Equal(NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.ReadOnly, client.Export.Flags);
        Assert.Equal(NbdTestPool.VdiSize, client.Size);
        Assert.Equal(await pool.Sha256Async(), await HashWithOurClientAsync(client));
        await Assert.ThrowsAsync<NbdException>(async () => await client.WriteAsync(0, new byte[512], NbdTestPool.Timeout()));
    }

    [Fact]
    public async Task Nbd_purpose_forces_tls_with_the_host_certificate_pinned_from_get_nbd_info()
    {
        await using var pool = await NbdTestPool.StartAsync("nbd");
        var info = await pool.NbdInfoAsync();
        Assert.Equal(Scenario.DefaultScenario.MasterName, V.Str(info["subject"]));
        var tls = NbdTlsOptions.Pinned(V.Str(info["cert"]), V.Str(info["subject"]));
        await using (var client = await NbdClient.ConnectAsync(ClientOptions(pool, V.Str(info["exportname"]), tls), NbdTestPool.Timeout()))
        {
            Assert.True(client.Export.Tls);
            Assert.Equal(await pool.Sha256Async(), await HashWithOurClientAsync(client));
        }
        // Every address get_nbd_info lists (master and member) serves the export with the same pinned certificate and subject.
        var all = V.Arr(await pool.Client.CallAsync("VDI.get_nbd_info", pool.VdiRef)).Select(V.Map).ToList();
        Assert.Contains(all, i => V.Str(i["address"]) == "127.0.0.2");
        foreach (var entry in all)
        {
            var options = ClientOptions(pool, V.Str(entry["exportname"]), NbdTlsOptions.Pinned(V.Str(entry["cert"]), V.Str(entry["subject"])))
                with { EndPoint = new IPEndPoint(IPAddress.Parse(V.Str(entry["address"])), (int)V.Long(entry["port"])) };
            await using var client = await NbdClient.ConnectAsync(options, NbdTestPool.Timeout());
            Assert.True(client.Export.Tls);
            var head = new byte[4096];
            await client.ReadAsync(0, head, NbdTestPool.Timeout());
            var expected = new byte[4096];
            Storage.DeterministicData.Fill(expected, 11, 0);
            Assert.Equal(expected, head);
        }

        // A plain client is told TLS is required (any option but STARTTLS), and EXPORT_NAME before TLS closes the connection.
        await using (var raw = await pool.RawAsync(NbdTestPool.Timeout()))
        {
            Assert.True(await raw.GreetingAsync(NbdTestPool.Timeout()));
            await raw.SendClientFlagsAsync(NbdTestPool.Timeout());
            await raw.SendOptionAsync(3, [], NbdTestPool.Timeout()); // LIST
            var reply = await raw.OptionReplyAsync(NbdTestPool.Timeout());
            Assert.Equal(0x80000005u, reply.Reply); // NBD_REP_ERR_TLS_REQD
            await raw.SendOptionAsync(1, System.Text.Encoding.UTF8.GetBytes(pool.ExportName), NbdTestPool.Timeout());
            Assert.Empty(await raw.ReadUpToAsync(134, NbdTestPool.Timeout()));
        }

        // A certificate other than the host's is not trusted.
        using var otherKey = RSA.Create(2048);
        using var other = new System.Security.Cryptography.X509Certificates.CertificateRequest($"CN={V.Str(info["subject"])}", otherKey, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1)
            .CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        var wrong = NbdTlsOptions.Pinned(other.ExportCertificatePem(), V.Str(info["subject"]));
        await Assert.ThrowsAnyAsync<Exception>(async () => await NbdClient.ConnectAsync(ClientOptions(pool, V.Str(info["exportname"]), wrong), NbdTestPool.Timeout()));
    }

    [Fact]
    public async Task Bad_session_unknown_vdi_cbt_metadata_vdi_and_malformed_names_close_the_connection()
    {
        await using var pool = await NbdTestPool.StartAsync("insecure_nbd");
        await pool.Client.CallAsync("VDI.enable_cbt", pool.VdiRef);
        var snapshot = V.Str(await pool.Client.CallAsync("VDI.snapshot", pool.VdiRef, new Dictionary<string, object?>()));
        var snapshotUuid = V.Str(await pool.Client.CallAsync("VDI.get_uuid", snapshot));
        // A snapshot VDI is served like any VDI while it has data...
        await using (var raw = await pool.RawAsync(NbdTestPool.Timeout()))
            Assert.Equal(NbdTestPool.VdiSize, (await raw.OpenExportAsync($"/{snapshotUuid}?session_id={pool.Session}", NbdTestPool.Timeout()))?.Size);
        // ...and refused once data_destroy made it cbt_metadata (which needs the dom0 VBD gone: VDI_IN_USE otherwise, as on XenServer).
        await pool.WaitForNoDom0VbdsAsync(snapshot);
        await pool.Client.CallAsync("VDI.data_destroy", snapshot);
        Assert.Equal("cbt_metadata", V.Str(await pool.Client.CallAsync("VDI.get_type", snapshot)));

        var loggedOut = new XapiTestClient(pool.Sim.Url);
        await loggedOut.LoginAsync(pool.Sim.User, pool.Sim.Password);
        string stale = loggedOut.Session!;
        await loggedOut.CallAsync("session.logout");
        loggedOut.Dispose();

        string[] refused =
        [
            $"/{pool.VdiUuid}?session_id=OpaqueRef:00000000-0000-0000-0000-000000000000", // unknown session
            $"/{pool.VdiUuid}?session_id={stale}",                                          // logged out
            $"/{pool.VdiUuid}",                                                              // no session
            $"/{Guid.NewGuid()}?session_id={pool.Session}",                                  // unknown VDI
            $"/{snapshotUuid}?session_id={pool.Session}",                                    // cbt_metadata
            "",
        ];
        foreach (var name in refused)
        {
            await using var raw = await pool.RawAsync(NbdTestPool.Timeout());
            Assert.True(await raw.GreetingAsync(NbdTestPool.Timeout()));
            await raw.SendClientFlagsAsync(NbdTestPool.Timeout());
            await raw.SendOptionAsync(1, System.Text.Encoding.UTF8.GetBytes(name), NbdTestPool.Timeout());
            Assert.True((await raw.ReadUpToAsync(134, NbdTestPool.Timeout())).Length == 0, $"'{name}' should close the connection");
        }
        Assert.Empty(await pool.Dom0VbdsAsync()); // refused before any plug: nothing was ever created for the live VDI

        // The real name still works after all that.
        await using (var raw = await pool.RawAsync(NbdTestPool.Timeout()))
            Assert.Equal(NbdTestPool.VdiSize, (await raw.OpenExportAsync(pool.ExportName, NbdTestPool.Timeout()))?.Size);
    }

    [Fact]
    public async Task A_dom0_vbd_is_plugged_while_connected_and_removed_on_disconnect()
    {
        await using var pool = await NbdTestPool.StartAsync("insecure_nbd");
        Assert.Empty(await pool.Dom0VbdsAsync());
        await using (var client = await NbdClient.ConnectAsync(ClientOptions(pool), NbdTestPool.Timeout()))
        {
            var vbds = await pool.Dom0VbdsAsync();
            var vbd = Assert.Single(vbds);
            Assert.True(V.Bool(vbd["currently_attached"]));
            Assert.Equal("RO", V.Str(vbd["mode"]));
            Assert.Equal("Disk", V.Str(vbd["type"]));
            var dom0 = await pool.Client.RecordAsync("VM", V.Str(vbd["VM"]));
            Assert.Equal(await pool.Client.CallAsync("pool.get_master", V.Str(V.Arr(await pool.Client.CallAsync("pool.get_all"))[0])), dom0["resident_on"]);
            var buffer = new byte[4096];
            await client.ReadAsync(0, buffer, NbdTestPool.Timeout());
        }
        // The server unplugs after it sees the disconnect: wait (bounded) for that state change.
        await pool.WaitForNoDom0VbdsAsync();
    }

    [Fact]
    public async Task At_most_16_connections_per_host_the_17th_is_closed_without_a_greeting()
    {
        await using var pool = await NbdTestPool.StartAsync("insecure_nbd");
        var open = new List<NbdRawClient>();
        try
        {
            for (int i = 0; i < 16; i++)
            {
                var raw = await pool.RawAsync(NbdTestPool.Timeout());
                open.Add(raw);
                Assert.True(await raw.GreetingAsync(NbdTestPool.Timeout()), $"connection {i + 1} of 16 should be greeted");
            }
            await using (var extra = await pool.RawAsync(NbdTestPool.Timeout()))
                Assert.False(await extra.GreetingAsync(NbdTestPool.Timeout()), "the 17th connection should be closed (server busy)");

            // One closes: a new connection is served again once the server has noticed (bounded wait for that state).
            await open[0].DisposeAsync();
            open.RemoveAt(0);
            var deadline = DateTime.UtcNow.AddSeconds(15);
            while (true)
            {
                await using var again = await pool.RawAsync(NbdTestPool.Timeout());
                if (await again.GreetingAsync(NbdTestPool.Timeout())) break;
                Assert.True(DateTime.UtcNow < deadline, "no connection was accepted within 15 s after one of the 16 closed");
                await Task.Delay(20);
            }
        }
        finally
        {
            foreach (var raw in open) await raw.DisposeAsync();
        }
    }

    [Fact]
    public async Task One_request_at_a_time_pipelined_reads_are_answered_in_order()
    {
        await using var pool = await NbdTestPool.StartAsync("insecure_nbd");
        await using var raw = await pool.RawAsync(NbdTestPool.Timeout());
        Assert.NotNull(await raw.OpenExportAsync(pool.ExportName, NbdTestPool.Timeout()));
        for (ulong cookie = 1; cookie <= 8; cookie++) await raw.SendReadAsync(cookie, (long)(cookie - 1) * 65536, 65536, NbdTestPool.Timeout());
        await raw.SendReadAsync(100, 1, 512, NbdTestPool.Timeout()); // unaligned: EINVAL
        var expected = new byte[65536];
        for (ulong cookie = 1; cookie <= 8; cookie++)
        {
            var reply = await raw.SimpleReplyAsync(NbdTestPool.Timeout());
            Assert.Equal((0u, cookie), reply);
            var data = await raw.ReadUpToAsync(65536, NbdTestPool.Timeout());
            Storage.DeterministicData.Fill(expected, 11, (long)(cookie - 1) * 65536);
            Assert.Equal(expected, data);
        }
        Assert.Equal((22u, 100ul), await raw.SimpleReplyAsync(NbdTestPool.Timeout()));
    }

    [Fact]
    public async Task Drop_fault_cuts_the_connection_after_exactly_the_given_bytes()
    {
        await using var pool = await NbdTestPool.StartAsync("insecure_nbd");
        const int handshake = 18 + 134;
        const int after = handshake + 16 + 1000; // mid-way through the first read's data
        await pool.PostFaultAsync($$"""{"drop":"nbd","afterBytes":{{after}},"count":1}""");
        await using (var raw = await pool.RawAsync(NbdTestPool.Timeout()))
        {
            Assert.NotNull(await raw.OpenExportAsync(pool.ExportName, NbdTestPool.Timeout()));
            await raw.SendReadAsync(1, 0, 65536, NbdTestPool.Timeout());
            var got = await raw.ReadUpToAsync(16 + 65536, NbdTestPool.Timeout());
            Assert.Equal(16 + 1000, got.Length);
        }
        // Used up: the next connection reads the whole range.
        await using (var raw = await pool.RawAsync(NbdTestPool.Timeout()))
        {
            Assert.NotNull(await raw.OpenExportAsync(pool.ExportName, NbdTestPool.Timeout()));
            await raw.SendReadAsync(2, 0, 65536, NbdTestPool.Timeout());
            Assert.Equal(16 + 65536, (await raw.ReadUpToAsync(16 + 65536, NbdTestPool.Timeout())).Length);
        }
    }

    [Fact]
    public async Task Latency_fault_holds_each_reply_back()
    {
        await using var pool = await NbdTestPool.StartAsync("insecure_nbd");
        await using var raw = await pool.RawAsync(NbdTestPool.Timeout());
        Assert.NotNull(await raw.OpenExportAsync(pool.ExportName, NbdTestPool.Timeout()));
        await pool.PostFaultAsync("""{"latency":"nbd","ms":3000}""");
        await raw.SendReadAsync(1, 0, 512, NbdTestPool.Timeout());
        // One-sided: a reply delayed by 3 s cannot arrive within 300 ms, however slow or fast the machine.
        Assert.False(await raw.AnythingArrivesWithinAsync(TimeSpan.FromMilliseconds(300)), "the reply came before the injected 3 s latency");
        // It does arrive afterwards: delayed, not lost.
        var reply = await raw.ReadUpToAsync(16 + 512, NbdTestPool.Timeout());
        Assert.Equal(16 + 512, reply.Length);
    }

    [Fact]
    public async Task Read_error_fault_answers_eio_for_reads_covering_the_offset_never_zeros()
    {
        await using var pool = await NbdTestPool.StartAsync("insecure_nbd");
        await pool.PostFaultAsync("""{"readError":"nbd","offset":5767168,"count":1}"""); // 5.5 MiB, inside written data
        await using var raw = await pool.RawAsync(NbdTestPool.Timeout());
        Assert.NotNull(await raw.OpenExportAsync(pool.ExportName, NbdTestPool.Timeout()));
        // A read not covering the offset is served.
        await raw.SendReadAsync(1, 0, 65536, NbdTestPool.Timeout());
        Assert.Equal((0u, 1ul), await raw.SimpleReplyAsync(NbdTestPool.Timeout()));
        Assert.Equal(65536, (await raw.ReadUpToAsync(65536, NbdTestPool.Timeout())).Length);
        // The read covering it gets EIO and no data (the next bytes are the following reply's header).
        await raw.SendReadAsync(2, 5L << 20, 1 << 20, NbdTestPool.Timeout());
        await raw.SendReadAsync(3, 5L << 20, 1 << 20, NbdTestPool.Timeout());
        Assert.Equal((5u, 2ul), await raw.SimpleReplyAsync(NbdTestPool.Timeout()));
        // count 1: the retry reads the real bytes.
        Assert.Equal((0u, 3ul), await raw.SimpleReplyAsync(NbdTestPool.Timeout()));
        var data = await raw.ReadUpToAsync(1 << 20, NbdTestPool.Timeout());
        var expected = new byte[1 << 20];
        Storage.DeterministicData.Fill(expected, 12, 5L << 20);
        Assert.Equal(expected, data);

        // Our client surfaces it as an NBD error with EIO, not as a buffer of zeros.
        await pool.PostFaultAsync("""{"readError":"nbd","offset":5767168,"count":1}""");
        await using var client = await NbdClient.ConnectAsync(ClientOptions(pool), NbdTestPool.Timeout());
        var ex = await Assert.ThrowsAsync<NbdException>(async () => await client.ReadAsync(5L << 20, new byte[1 << 20], NbdTestPool.Timeout()));
        Assert.Equal(NbdErrno.EIO, ex.Errno);
    }

    [Theory]
    [InlineData("/0f3e-uuid?session_id=OpaqueRef:abc", "0f3e-uuid", "OpaqueRef:abc")]
    [InlineData("0f3e-uuid?session_id=OpaqueRef:abc", "0f3e-uuid", "OpaqueRef:abc")]            // no leading slash: still a URI path
    [InlineData("/0f3e-uuid?x=1&session_id=OpaqueRef%3Aabc&y", "0f3e-uuid", "OpaqueRef:abc")]   // other parameters, percent-encoding
    public void Export_names_are_read_as_uris(string name, string uuid, string session)
    {
        Assert.True(XapiNbdExportName.TryParse(name, out var parsed));
        Assert.Equal(new XapiNbdExportName(uuid, session), parsed);
    }

    [Theory]
    [InlineData("")]
    [InlineData("/")]
    [InlineData("/0f3e-uuid")]
    [InlineData("/0f3e-uuid?session_id=")]
    [InlineData("/?session_id=OpaqueRef:abc")]
    [InlineData("/0f3e-uuid?sessionid=OpaqueRef:abc")]
    public void Export_names_without_a_vdi_or_a_session_are_rejected(string name)
        => Assert.False(XapiNbdExportName.TryParse(name, out _));

    [Fact]
    public async Task Read_error_faults_are_listed_consumed_and_validated_by_the_control_api()
    {
        await using var pool = await NbdTestPool.StartAsync("insecure_nbd");
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        var faultsUrl = new Uri(pool.Sim.ControlUrl, "sim/faults");
        await pool.PostFaultAsync("""{"readError":"nbd","offset":4096,"count":2}""");
        var listed = JsonNode.Parse(await http.GetStringAsync(faultsUrl))!["readErrors"]!.AsArray();
        var fault = Assert.Single(listed)!;
        Assert.Equal(4096, (long)fault["Offset"]!);
        Assert.Equal(2, (int)fault["Count"]!);
        using (var bad = await http.PostAsync(faultsUrl, new StringContent("""{"readError":"smb","offset":0}""")))
            Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);

        await using var client = await NbdClient.ConnectAsync(ClientOptions(pool), NbdTestPool.Timeout());
        for (int i = 0; i < 2; i++)
            Assert.Equal(NbdErrno.EIO, (await Assert.ThrowsAsync<NbdException>(async () => await client.ReadAsync(0, new byte[8192], NbdTestPool.Timeout()))).Errno);
        Assert.Empty(JsonNode.Parse(await http.GetStringAsync(faultsUrl))!["readErrors"]!.AsArray());
        var data = new byte[8192];
        await client.ReadAsync(0, data, NbdTestPool.Timeout());
        var expected = new byte[8192];
        Storage.DeterministicData.Fill(expected, 11, 0);
        Assert.Equal(expected, data);
    }

    [Fact]
    public async Task A_vdi_on_a_local_sr_is_served_only_by_the_host_that_sees_the_sr()
    {
        await using var pool = await NbdTestPool.StartAsync("insecure_nbd");
        var localSr = await pool.Client.RefByNameAsync("SR", $"Local storage {Scenario.DefaultScenario.MemberName}");
        var vdi = V.Str(await pool.Client.CallAsync("VDI.create", VdiTests.VdiRecord(localSr, 4L << 20)));
        var uuid = V.Str(await pool.Client.CallAsync("VDI.get_uuid", vdi));
        var infos = V.Arr(await pool.Client.CallAsync("VDI.get_nbd_info", vdi)).Select(V.Map).ToList();
        Assert.Equal(["127.0.0.2"], infos.Select(i => V.Str(i["address"])));
        string name = $"/{uuid}?session_id={pool.Session}";
        await using (var member = await NbdRawClient.ConnectAsync(IPAddress.Parse("127.0.0.2"), pool.Sim.NbdPort, NbdTestPool.Timeout()))
            Assert.Equal(4L << 20, (await member.OpenExportAsync(name, NbdTestPool.Timeout()))?.Size);
        await using (var master = await pool.RawAsync(NbdTestPool.Timeout()))
            Assert.Null(await master.OpenExportAsync(name, NbdTestPool.Timeout())); // the master has no PBD for that SR: closed
    }

    [Fact]
    public async Task An_open_connection_keeps_serving_after_its_session_logs_out_but_new_ones_are_refused()
    {
        await using var pool = await NbdTestPool.StartAsync("insecure_nbd");
        var other = new XapiTestClient(pool.Sim.Url);
        await other.LoginAsync(pool.Sim.User, pool.Sim.Password);
        string name = $"/{pool.VdiUuid}?session_id={other.Session}";
        await using var raw = await pool.RawAsync(NbdTestPool.Timeout());
        Assert.NotNull(await raw.OpenExportAsync(name, NbdTestPool.Timeout()));
        await other.CallAsync("session.logout");
        other.Dispose();
        await raw.SendReadAsync(7, 0, 4096, NbdTestPool.Timeout());
        Assert.Equal((0u, 7ul), await raw.SimpleReplyAsync(NbdTestPool.Timeout()));
        Assert.Equal(4096, (await raw.ReadUpToAsync(4096, NbdTestPool.Timeout())).Length);
        await using var again = await pool.RawAsync(NbdTestPool.Timeout());
        Assert.Null(await again.OpenExportAsync(name, NbdTestPool.Timeout()));
    }

    [Fact]
    public async Task A_drop_during_the_export_name_answer_still_unplugs_the_dom0_vbd()
    {
        await using var pool = await NbdTestPool.StartAsync("insecure_nbd");
        await pool.PostFaultAsync("""{"drop":"nbd","afterBytes":100,"count":1}"""); // greeting (18) + 82 of the 134-byte answer
        await using (var raw = await pool.RawAsync(NbdTestPool.Timeout()))
        {
            Assert.True(await raw.GreetingAsync(NbdTestPool.Timeout()));
            await raw.SendClientFlagsAsync(NbdTestPool.Timeout());
            await raw.SendOptionAsync(1, System.Text.Encoding.UTF8.GetBytes(pool.ExportName), NbdTestPool.Timeout());
            Assert.Equal(82, (await raw.ReadUpToAsync(134, NbdTestPool.Timeout())).Length);
        }
        await pool.WaitForNoDom0VbdsAsync(); // the VDI was plugged for this connection and must not stay plugged
    }
}
