using System.Net;
using System.Security.Cryptography;
using VProtect.Core.Nbd;

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
        // ...and refused once data_destroy made it cbt_metadata.
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
        Assert.Empty(await pool.Dom0VbdsAsync()); // nothing left plugged by the refused attempts

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
        var deadline = DateTime.UtcNow.AddSeconds(15);
        while ((await pool.Dom0VbdsAsync()).Count > 0)
        {
            Assert.True(DateTime.UtcNow < deadline, "the dom0 VBD was not removed within 15 s of the disconnect");
            await Task.Delay(20);
        }
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
        using (var shortWait = new CancellationTokenSource(TimeSpan.FromMilliseconds(300)))
            await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await raw.ReadUpToAsync(16, shortWait.Token));
        // It does arrive afterwards (delayed, not lost); the connection was not cut by the cancelled receive.
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
}
