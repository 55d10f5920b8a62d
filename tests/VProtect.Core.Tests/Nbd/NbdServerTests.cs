using System.Net.Security;
using VProtect.Core.IO;
using VProtect.Core.Nbd;
using Xunit;
using static VProtect.Core.Tests.Nbd.FakeNbdPeer;
using static VProtect.Core.Tests.Nbd.NbdTestSupport;

namespace VProtect.Core.Tests.Nbd;

/// <summary>Our server driven byte by byte: xapi-nbd mode exactly as the notes describe, and the normal mode's edges.</summary>
public class NbdServerTests
{
    private static NbdServer XapiServer(IBlockSource disk, NbdTlsMode tls = NbdTlsMode.Off, System.Security.Cryptography.X509Certificates.X509Certificate2? cert = null, int max = 16)
        => StartServer(disk, configure: o => o with { XapiNbdMode = true, TlsMode = _ => tls, Certificate = cert, MaxConnections = max }, name: "/vdi-uuid?session_id=OpaqueRef:s");

    private static async Task<Wire> HandshakeAsync(NbdServer server, uint clientFlags = 1)
    {
        var w = await ConnectRawAsync(server);
        await w.ReadGreetingAsync();
        await w.SendAsync(U32(clientFlags));
        return w;
    }

    [Fact]
    public async Task Xapi_mode_offers_fixed_newstyle_only_and_refuses_go_info_and_structured_replies()
    {
        await using var server = XapiServer(new SparseMemoryDisk(1 << 20));
        await using var w = await ConnectRawAsync(server);
        var (magic, flags) = await w.ReadGreetingAsync();
        Assert.Equal(NbdProtocol.IHaveOpt, magic);
        Assert.Equal(NbdHandshakeFlags.FixedNewstyle, flags);
        await w.SendAsync(U32(1));
        foreach (var opt in new[] { NbdOption.Go, NbdOption.Info, NbdOption.StructuredReply, NbdOption.SetMetaContext, (NbdOption)42 })
        {
            await w.SendOptionAsync(opt, opt is NbdOption.Go or NbdOption.Info ? NameData("/vdi-uuid?session_id=OpaqueRef:s") : null);
            var (echo, reply, _) = await w.ReadOptionReplyAsync();
            Assert.Equal(opt, echo);
            Assert.Equal(NbdOptionReply.ErrUnsup, reply);
        }
        await w.SendOptionAsync(NbdOption.List);
        Assert.Equal(NbdOptionReply.ErrPolicy, (await w.ReadOptionReplyAsync()).Reply);
        await w.SendOptionAsync(NbdOption.StartTls);
        Assert.Equal(NbdOptionReply.ErrPolicy, (await w.ReadOptionReplyAsync()).Reply); // no TLS in insecure_nbd mode
        // EXPORT_NAME: 8 + 2 + 124 zero bytes, flags 0x0003.
        await w.SendOptionAsync(NbdOption.ExportName, "/vdi-uuid?session_id=OpaqueRef:s"u8.ToArray());
        var answer = await w.ReadAsync(134);
        Assert.Equal(FakeNbdPeer.U64(1 << 20), answer[..8]);
        Assert.Equal(FakeNbdPeer.U16(0x0003), answer[8..10]);
        Assert.All(answer[10..], b => Assert.Equal(0, b));
    }

    [Fact]
    public async Task Xapi_mode_enforces_alignment_read_only_and_unsupported_commands_with_simple_replies()
    {
        var disk = await RandomSparseDiskAsync(1 << 20);
        await using var server = XapiServer(disk);
        await using var w = await HandshakeAsync(server);
        await w.SendOptionAsync(NbdOption.ExportName, "/vdi-uuid?session_id=OpaqueRef:s"u8.ToArray());
        await w.ReadAsync(134);

        await w.SendRequestAsync(NbdCommand.Read, 1, 100, 512);
        Assert.Equal((22u, 1ul), await w.ReadSimpleReplyAsync());
        await w.SendRequestAsync(NbdCommand.Read, 2, 512, 100);
        Assert.Equal((22u, 2ul), await w.ReadSimpleReplyAsync());
        await w.SendAsync(U32(NbdProtocol.RequestMagic), U16(0), U16((ushort)NbdCommand.Write), U64(3), U64(0), U32(512), new byte[512]);
        Assert.Equal((1u, 3ul), await w.ReadSimpleReplyAsync());
        foreach (var (cmd, cookie) in new[] { (NbdCommand.Flush, 4ul), (NbdCommand.Trim, 5ul), (NbdCommand.BlockStatus, 6ul), (NbdCommand.WriteZeroes, 7ul) })
        {
            await w.SendRequestAsync(cmd, cookie, 0, cmd == NbdCommand.Flush ? 0u : 512u);
            Assert.Equal((22u, cookie), await w.ReadSimpleReplyAsync());
        }
        await w.SendRequestAsync(NbdCommand.Read, 8, 1024, 4096);
        Assert.Equal((0u, 8ul), await w.ReadSimpleReplyAsync());
        var expected = new byte[4096];
        await disk.ReadAsync(1024, expected, default);
        Assert.Equal(expected, await w.ReadAsync(4096));
        await w.SendRequestAsync(NbdCommand.Disconnect, 9, 0, 0);
        Assert.True(await w.IsClosedAsync());
    }

    [Fact]
    public async Task Xapi_mode_serves_pipelined_requests_one_at_a_time_in_order()
    {
        var disk = await RandomSparseDiskAsync(1 << 20);
        await using var server = XapiServer(disk);
        await using var w = await HandshakeAsync(server);
        await w.SendOptionAsync(NbdOption.ExportName, "/vdi-uuid?session_id=OpaqueRef:s"u8.ToArray());
        await w.ReadAsync(134);
        for (ulong c = 1; c <= 8; c++) await w.SendRequestAsync(NbdCommand.Read, c, (long)c * 8192, 8192);
        for (ulong c = 1; c <= 8; c++)
        {
            Assert.Equal((0u, c), await w.ReadSimpleReplyAsync());
            await w.ReadAsync(8192);
        }
    }

    [Fact]
    public async Task Xapi_mode_closes_the_connection_on_a_bad_export_name()
    {
        await using var server = XapiServer(new SparseMemoryDisk(1 << 20));
        await using var w = await HandshakeAsync(server);
        await w.SendOptionAsync(NbdOption.ExportName, "/other?session_id=OpaqueRef:bad"u8.ToArray());
        Assert.True(await w.IsClosedAsync());
    }

    [Fact]
    public async Task Xapi_mode_serves_our_client_through_export_name()
    {
        var disk = await RandomSparseDiskAsync(2 << 20);
        await using var server = XapiServer(disk);
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server, "/vdi-uuid?session_id=OpaqueRef:s") with { RequestSize = 256 * 1024 }, Timeout());
        Assert.False(client.Export.NegotiatedWithGo);
        Assert.False(client.Export.StructuredReplies);
        Assert.Equal(NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.ReadOnly, client.Export.Flags);
        Assert.Equal(512, client.Alignment);
        await client.WhenConnectedAsync();
        Assert.Equal(4, client.ConnectionCount); // read-only: several connections are safe
        var copy = new byte[disk.Length];
        await client.ReadExtentsAsync([new Extent(0, disk.Length)], (o, d, _) => { d.CopyTo(copy.AsMemory((int)o)); return ValueTask.CompletedTask; }, cancellationToken: Timeout());
        Assert.Equal(await ReadAllAsync(disk), copy);
        // An unaligned range is read through an aligned cover (xapi-nbd would answer EINVAL otherwise).
        var part = new byte[1001];
        await client.ReadAsync(333, part, Timeout());
        Assert.Equal(copy.AsSpan(333, 1001).ToArray(), part);
    }

    [Fact]
    public async Task Xapi_mode_caps_connections_at_sixteen()
    {
        await using var server = XapiServer(new SparseMemoryDisk(1 << 20));
        var held = new List<Wire>();
        try
        {
            for (int i = 0; i < 16; i++)
            {
                var w = await ConnectRawAsync(server);
                await w.ReadGreetingAsync(); // served
                held.Add(w);
            }
            await using var extra = await ConnectRawAsync(server);
            Assert.True(await extra.IsClosedAsync());
            Assert.Equal(16, server.ActiveConnections);
        }
        finally { foreach (var w in held) await w.DisposeAsync(); }
    }

    [Fact]
    public async Task Forced_tls_answers_tls_required_and_closes_on_export_name_before_tls()
    {
        using var cert = SelfSignedCertificate();
        await using var server = XapiServer(new SparseMemoryDisk(1 << 20), NbdTlsMode.Required, cert);
        await using (var w = await HandshakeAsync(server))
        {
            await w.SendOptionAsync(NbdOption.List);
            Assert.Equal(NbdOptionReply.ErrTlsReqd, (await w.ReadOptionReplyAsync()).Reply);
            await w.SendOptionAsync(NbdOption.Go, NameData("x"));
            Assert.Equal(NbdOptionReply.ErrTlsReqd, (await w.ReadOptionReplyAsync()).Reply);
            await w.SendOptionAsync(NbdOption.ExportName, "/vdi-uuid?session_id=OpaqueRef:s"u8.ToArray());
            Assert.True(await w.IsClosedAsync());
        }
        await using (var w = await HandshakeAsync(server, clientFlags: 0)) // no C_FIXED_NEWSTYLE: rejected under forced TLS
            Assert.True(await w.IsClosedAsync());
    }

    [Fact]
    public async Task Starttls_twice_is_invalid_and_export_name_works_over_tls()
    {
        using var cert = SelfSignedCertificate();
        var disk = await RandomSparseDiskAsync(1 << 20);
        await using var server = XapiServer(disk, NbdTlsMode.Required, cert);
        await using var w = await HandshakeAsync(server);
        await w.SendOptionAsync(NbdOption.StartTls);
        Assert.Equal(NbdOptionReply.Ack, (await w.ReadOptionReplyAsync()).Reply);
        var ssl = new SslStream(w.Stream, false);
        await ssl.AuthenticateAsClientAsync(new SslClientAuthenticationOptions { TargetHost = "nbd.test", RemoteCertificateValidationCallback = (_, _, _, _) => true });
        Assert.True(ssl.SslProtocol is System.Security.Authentication.SslProtocols.Tls12 or System.Security.Authentication.SslProtocols.Tls13, $"negotiated {ssl.SslProtocol}");
        w.Stream = ssl;
        await w.SendOptionAsync(NbdOption.StartTls);
        Assert.Equal(NbdOptionReply.ErrInvalid, (await w.ReadOptionReplyAsync()).Reply);
        await w.SendOptionAsync(NbdOption.ExportName, "/vdi-uuid?session_id=OpaqueRef:s"u8.ToArray());
        var answer = await w.ReadAsync(134);
        Assert.Equal(FakeNbdPeer.U16(0x0003), answer[8..10]);
    }

    [Fact]
    public async Task Refused_tls_mode_closes_before_the_greeting()
    {
        await using var server = StartServer(new SparseMemoryDisk(1 << 20), configure: o => o with { TlsMode = _ => NbdTlsMode.RefuseConnection });
        await using var w = await ConnectRawAsync(server);
        Assert.True(await w.IsClosedAsync());
    }

    [Fact]
    public async Task Normal_mode_lists_exports_answers_unknown_options_and_abort()
    {
        await using var server = StartServer(new SparseMemoryDisk(1 << 20), configure: o => o with { ListExports = () => ["disk", "other"] });
        await using var w = await ConnectRawAsync(server);
        var (_, flags) = await w.ReadGreetingAsync();
        Assert.Equal(NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes, flags);
        await w.SendAsync(U32(3));
        await w.SendOptionAsync(NbdOption.List);
        var names = new List<string>();
        while (await w.ReadOptionReplyAsync() is var (_, reply, data) && reply == NbdOptionReply.Server)
            names.Add(System.Text.Encoding.UTF8.GetString(data, 4, data.Length - 4));
        Assert.Equal(["disk", "other"], names);
        await w.SendOptionAsync((NbdOption)99, [1, 2, 3]);
        Assert.Equal(NbdOptionReply.ErrUnsup, (await w.ReadOptionReplyAsync()).Reply);
        await w.SendOptionAsync(NbdOption.SetMetaContext, [.. NameData("disk")[..^2], .. U32(1), .. U32(15), .. "base:allocation"u8.ToArray()]);
        Assert.Equal(NbdOptionReply.ErrInvalid, (await w.ReadOptionReplyAsync()).Reply); // before STRUCTURED_REPLY
        await w.SendOptionAsync(NbdOption.Info, NameData("disk", 3));
        var replies = new List<(NbdOptionReply, byte[])>();
        while (await w.ReadOptionReplyAsync() is var (_, reply, data)) { replies.Add((reply, data)); if (reply == NbdOptionReply.Ack) break; }
        Assert.Contains(replies, r => r.Item1 == NbdOptionReply.Info && r.Item2.Length == 12);
        Assert.Contains(replies, r => r.Item1 == NbdOptionReply.Info && r.Item2.Length == 14);
        await w.SendOptionAsync(NbdOption.Abort);
        Assert.Equal(NbdOptionReply.Ack, (await w.ReadOptionReplyAsync()).Reply);
        Assert.True(await w.IsClosedAsync());
    }

    [Fact]
    public async Task Normal_mode_rejects_reads_beyond_the_end_and_block_status_without_context()
    {
        await using var server = StartServer(new SparseMemoryDisk(1 << 20));
        await using var w = await HandshakeAsync(server, 3);
        await w.SendOptionAsync(NbdOption.Go, NameData("disk"));
        while ((await w.ReadOptionReplyAsync()).Reply != NbdOptionReply.Ack) { }
        await w.SendRequestAsync(NbdCommand.Read, 1, (1 << 20) - 512, 1024);
        Assert.Equal((22u, 1ul), await w.ReadSimpleReplyAsync());
        await w.SendRequestAsync(NbdCommand.BlockStatus, 2, 0, 4096);
        Assert.Equal((22u, 2ul), await w.ReadSimpleReplyAsync());
        await w.SendRequestAsync((NbdCommand)77, 3, 0, 0);
        Assert.Equal((22u, 3ul), await w.ReadSimpleReplyAsync());
    }
}

public class NbdServerResilienceTests
{
    [Fact]
    public async Task A_throwing_resolver_closes_only_that_connection_and_is_reported()
    {
        var disk = await RandomSparseDiskAsync(1 << 20);
        var errors = new List<Exception>();
        int calls = 0;
        await using var server = StartServer(disk, configure: o => o with
        {
            ResolveExport = (r, _) => Interlocked.Increment(ref calls) == 1 ? throw new InvalidOperationException("boom") : ValueTask.FromResult<NbdExport?>(new NbdExport(disk)),
            OnConnectionError = (_, ex) => { lock (errors) errors.Add(ex); },
        });
        await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdClient.ConnectAsync(ClientOptions(server) with { Connections = 1 }, Timeout()));
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server) with { Connections = 1 }, Timeout());
        var back = new byte[4096];
        await client.ReadAsync(0, back, Timeout());
        Assert.Equal((await ReadAllAsync(disk)).AsSpan(0, 4096).ToArray(), back);
        lock (errors) Assert.Contains(errors, e => e.Message == "boom");
    }

    [Fact]
    public async Task On_closed_runs_when_a_connection_ends()
    {
        var closed = new TaskCompletionSource();
        var disk = new SparseMemoryDisk(1 << 20);
        await using var server = StartServer(disk, configure: o => o with
        {
            ResolveExport = (_, _) => ValueTask.FromResult<NbdExport?>(new NbdExport(disk) { OnClosed = () => { closed.TrySetResult(); return ValueTask.CompletedTask; } }),
        });
        await using (var client = await NbdClient.ConnectAsync(ClientOptions(server) with { Connections = 1 }, Timeout())) { }
        await closed.Task.WaitAsync(TestTimeout);
    }
}

public class NbdXapiClientTests
{
    [Fact]
    public async Task Options_from_get_nbd_info_read_a_forced_tls_xapi_server()
    {
        using var cert = SelfSignedCertificate("host1.pool.test");
        var disk = await RandomSparseDiskAsync(2 << 20);
        const string name = "/3f0e2c7d-9a11-4b1f-9a51-0b6c8a547d5e?session_id=OpaqueRef:s";
        await using var server = StartServer(disk, configure: o => o with { XapiNbdMode = true, TlsMode = _ => NbdTlsMode.Required, Certificate = cert }, name: name);
        var options = NbdClientOptions.FromXapiNbdInfo("127.0.0.1", server.Port, name, Pem(cert), "host1.pool.test");
        await using var client = await NbdClient.ConnectAsync(options, Timeout());
        Assert.True(client.Export.Tls);
        Assert.False(client.Export.NegotiatedWithGo);
        var copy = new byte[disk.Length];
        await client.ReadAsync(0, copy, Timeout());
        Assert.Equal(await ReadAllAsync(disk), copy);
    }

    [Fact]
    public void Options_from_get_nbd_info_without_cert_are_insecure_and_reject_bad_ports()
    {
        var o = NbdClientOptions.FromXapiNbdInfo("::1", 10809, "/x?session_id=y", "", null);
        Assert.False(o.Tls.Enabled);
        Assert.Equal(new System.Net.IPEndPoint(System.Net.IPAddress.IPv6Loopback, 10809), o.EndPoint);
        Assert.IsType<System.Net.DnsEndPoint>(NbdClientOptions.FromXapiNbdInfo("host1", 10809, "/x", null, null).EndPoint);
        Assert.Throws<ArgumentOutOfRangeException>(() => NbdClientOptions.FromXapiNbdInfo("host1", 0, "/x", null, null));
    }
}

public class NbdServerTlsModeTests
{
    [Fact]
    public async Task Optional_tls_serves_plain_and_tls_clients_and_the_mode_is_asked_per_connection()
    {
        using var cert = SelfSignedCertificate("nbd.test");
        var disk = await RandomSparseDiskAsync(1 << 20);
        var asked = new List<long>();
        await using var server = StartServer(disk, configure: o => o with { TlsMode = c => { lock (asked) asked.Add(c.Id); return NbdTlsMode.Optional; }, Certificate = cert });
        await using (var plain = await NbdClient.ConnectAsync(ClientOptions(server) with { Connections = 1 }, Timeout()))
            Assert.False(plain.Export.Tls);
        await using (var secure = await NbdClient.ConnectAsync(ClientOptions(server) with { Connections = 1, Tls = NbdTlsOptions.Pinned(Pem(cert), "nbd.test") }, Timeout()))
        {
            Assert.True(secure.Export.Tls);
            Assert.True(secure.Export.StructuredReplies); // negotiated again after STARTTLS
            var copy = new byte[disk.Length];
            await secure.ReadAsync(0, copy, Timeout());
            Assert.Equal(await ReadAllAsync(disk), copy);
        }
        lock (asked) Assert.Equal([1L, 2L], asked);
    }
}
