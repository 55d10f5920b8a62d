using VProtect.Core.Nbd;
using Xunit;
using static VProtect.Core.Tests.Nbd.FakeNbdPeer;
using static VProtect.Core.Tests.Nbd.NbdTestSupport;

namespace VProtect.Core.Tests.Nbd;

/// <summary>Every branch of the client's option haggling, against a scripted server.</summary>
public class NbdClientHandshakeTests
{
    [Fact]
    public async Task Bad_greeting_magic_is_a_protocol_violation()
    {
        await using var peer = new FakeNbdPeer(w => w.GreetAsync(magic: 0x1122334455667788));
        var ex = await Assert.ThrowsAsync<NbdProtocolException>(() => NbdConnection.ConnectAsync(peer.Options(), Timeout()));
        Assert.Contains("NBDMAGIC", ex.Message);
    }

    [Fact]
    public async Task Oldstyle_server_is_refused_with_a_clear_message()
    {
        await using var peer = new FakeNbdPeer(w => w.GreetAsync(second: 0x00420281861253));
        var ex = await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdConnection.ConnectAsync(peer.Options(), Timeout()));
        Assert.Contains("old-style", ex.Message);
    }

    [Fact]
    public async Task Server_without_fixed_newstyle_is_refused()
    {
        await using var peer = new FakeNbdPeer(w => w.GreetAsync(NbdHandshakeFlags.None));
        var ex = await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdConnection.ConnectAsync(peer.Options(), Timeout()));
        Assert.Contains("fixed newstyle", ex.Message);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Go_unsupported_falls_back_to_export_name_with_or_without_padding(bool noZeroes)
    {
        uint seenFlags = 0; string? seenName = null;
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.GreetAsync(NbdHandshakeFlags.FixedNewstyle | (noZeroes ? NbdHandshakeFlags.NoZeroes : 0));
            seenFlags = await w.ReadClientFlagsAsync();
            while (true)
            {
                var (opt, data) = await w.ReadOptionAsync();
                if (opt == NbdOption.ExportName)
                {
                    seenName = System.Text.Encoding.UTF8.GetString(data);
                    await w.SendAsync(U64(1 << 20), U16(0x0003), noZeroes ? [] : new byte[124]);
                    // One read to prove the stream is framed right after the answer.
                    var (cmd, cookie, off, len) = await w.ReadRequestAsync();
                    await w.SimpleReplyAsync(cookie, 0, Enumerable.Repeat((byte)0xAB, (int)len).ToArray());
                    return;
                }
                await w.ReplyAsync(opt, NbdOptionReply.ErrUnsup);
            }
        });
        await using var c = await NbdConnection.ConnectAsync(peer.Options("/uuid?session_id=OpaqueRef:secret"), Timeout());
        Assert.False(c.Export.NegotiatedWithGo);
        Assert.False(c.Export.StructuredReplies);
        Assert.Equal(1 << 20, c.Export.Size);
        Assert.Equal(NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.ReadOnly, c.Export.Flags);
        Assert.Equal(noZeroes ? 3u : 1u, seenFlags);
        Assert.Equal("/uuid?session_id=OpaqueRef:secret", seenName);
        var buf = new byte[4096];
        await c.ReadAsync(512, buf, Timeout());
        Assert.All(buf, b => Assert.Equal(0xAB, b));
    }

    [Fact]
    public async Task Export_name_refused_by_closing_names_the_export_without_the_session_secret()
    {
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.GreetAsync(NbdHandshakeFlags.FixedNewstyle);
            await w.ReadClientFlagsAsync();
            while ((await w.ReadOptionAsync()) is var (opt, _) && opt != NbdOption.ExportName) await w.ReplyAsync(opt, NbdOptionReply.ErrUnsup);
        });
        var ex = await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdConnection.ConnectAsync(peer.Options("/vdi?session_id=OpaqueRef:topsecret"), Timeout()));
        Assert.Contains("/vdi?session_id=", ex.Message);
        Assert.DoesNotContain("topsecret", ex.Message);
    }

    [Fact]
    public async Task Go_error_unknown_export_is_reported()
    {
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.GreetAsync(); await w.ReadClientFlagsAsync();
            while ((await w.ReadOptionAsync()) is var (opt, _))
            {
                if (opt == NbdOption.Go) { await w.ReplyAsync(opt, NbdOptionReply.ErrUnknown, "no such export"u8.ToArray()); return; }
                await w.ReplyAsync(opt, NbdOptionReply.ErrUnsup);
            }
        });
        var ex = await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdConnection.ConnectAsync(peer.Options(), Timeout()));
        Assert.Equal(NbdOptionReply.ErrUnknown, ex.Reply);
        Assert.Contains("no such export", ex.Message);
    }

    [Fact]
    public async Task Go_ack_without_export_info_is_a_protocol_violation()
    {
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.GreetAsync(); await w.ReadClientFlagsAsync();
            while ((await w.ReadOptionAsync()) is var (opt, _))
            {
                if (opt == NbdOption.Go) { await w.ReplyAsync(opt, NbdOptionReply.Ack); return; }
                await w.ReplyAsync(opt, NbdOptionReply.ErrUnsup);
            }
        });
        await Assert.ThrowsAsync<NbdProtocolException>(() => NbdConnection.ConnectAsync(peer.Options(), Timeout()));
    }

    [Fact]
    public async Task Oversized_option_reply_is_a_protocol_violation()
    {
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.GreetAsync(); await w.ReadClientFlagsAsync();
            var (opt, _) = await w.ReadOptionAsync();
            await w.ReplyAsync(opt, NbdOptionReply.ErrUnsup, [], length: 100_000_000);
        });
        var ex = await Assert.ThrowsAsync<NbdProtocolException>(() => NbdConnection.ConnectAsync(peer.Options(), Timeout()));
        Assert.Contains("100000000", ex.Message);
    }

    [Fact]
    public async Task Option_reply_with_bad_magic_is_a_protocol_violation()
    {
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.GreetAsync(); await w.ReadClientFlagsAsync();
            var (opt, _) = await w.ReadOptionAsync();
            await w.ReplyAsync(opt, NbdOptionReply.Ack, magic: 0xdeadbeef);
        });
        var ex = await Assert.ThrowsAsync<NbdProtocolException>(() => NbdConnection.ConnectAsync(peer.Options(), Timeout()));
        Assert.Contains("magic", ex.Message);
    }

    [Fact]
    public async Task Option_reply_for_another_option_is_a_protocol_violation()
    {
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.GreetAsync(); await w.ReadClientFlagsAsync();
            await w.ReadOptionAsync();
            await w.ReplyAsync(NbdOption.List, NbdOptionReply.Ack);
        });
        await Assert.ThrowsAsync<NbdProtocolException>(() => NbdConnection.ConnectAsync(peer.Options(), Timeout()));
    }

    [Fact]
    public async Task Truncated_option_reply_fails_negotiation()
    {
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.GreetAsync(); await w.ReadClientFlagsAsync();
            var (opt, _) = await w.ReadOptionAsync();
            await w.SendAsync(U64(NbdProtocol.OptionReplyMagic), U32((uint)opt)); // header cut short, then close
        });
        await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdConnection.ConnectAsync(peer.Options(), Timeout()));
    }

    [Fact]
    public async Task Tls_required_reply_tells_the_user_to_pin_the_certificate()
    {
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.GreetAsync(); await w.ReadClientFlagsAsync();
            var (opt, _) = await w.ReadOptionAsync();
            await w.ReplyAsync(opt, NbdOptionReply.ErrTlsReqd);
        });
        var ex = await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdConnection.ConnectAsync(peer.Options(), Timeout()));
        Assert.Equal(NbdOptionReply.ErrTlsReqd, ex.Reply);
        Assert.Contains("Pinned", ex.Message);
    }

    [Fact]
    public async Task Starttls_is_sent_first_and_a_refusal_is_not_downgraded()
    {
        NbdOption? first = null;
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.GreetAsync(); await w.ReadClientFlagsAsync();
            var (opt, _) = await w.ReadOptionAsync();
            first = opt;
            await w.ReplyAsync(opt, NbdOptionReply.ErrUnsup);
            Assert.True(await w.IsClosedAsync());
        });
        using var cert = SelfSignedCertificate();
        await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdConnection.ConnectAsync(peer.Options() with { Tls = NbdTlsOptions.Pinned(Pem(cert), "nbd.test") }, Timeout()));
        await peer.DisposeAsync();
        Assert.Equal(NbdOption.StartTls, first);
    }

    [Fact]
    public async Task Block_size_info_is_obeyed_for_alignment_and_request_size()
    {
        byte[] blockSize = [.. U16(3), .. U32(4096), .. U32(65536), .. U32(128 * 1024)];
        var requests = new List<(long Offset, uint Length)>();
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.NegotiateGoAsync(1 << 20, NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.ReadOnly, structured: false, blockSize: blockSize);
            while (true)
            {
                var (cmd, cookie, off, len) = await w.ReadRequestAsync();
                if (cmd == NbdCommand.Disconnect) return;
                lock (requests) requests.Add((off, len));
                await w.SimpleReplyAsync(cookie, 0, new byte[len]);
            }
        });
        await using (var client = await NbdClient.ConnectAsync(peer.Options(), Timeout()))
        {
            Assert.Equal(4096, client.Alignment);
            Assert.Equal(128 * 1024, client.RequestSize);
            var buf = new byte[300_000];
            await client.ReadAsync(1000, buf, Timeout());
        }
        await peer.DisposeAsync();
        Assert.NotEmpty(requests);
        Assert.All(requests, r => { Assert.Equal(0, r.Offset % 4096); Assert.Equal(0u, r.Length % 4096); Assert.True(r.Length <= 128 * 1024); });
        Assert.Equal(0, requests.Min(r => r.Offset));
        Assert.True(requests.Max(r => r.Offset + r.Length) >= 301_000);
    }

    [Fact]
    public async Task Invalid_block_size_info_is_a_protocol_violation()
    {
        byte[] blockSize = [.. U16(3), .. U32(3000), .. U32(4096), .. U32(65536)]; // minimum not a power of two
        await using var peer = new FakeNbdPeer(w => w.NegotiateGoAsync(1 << 20, NbdTransmissionFlags.HasFlags, false, blockSize: blockSize));
        await Assert.ThrowsAsync<NbdProtocolException>(() => NbdConnection.ConnectAsync(peer.Options(), Timeout()));
    }

    [Fact]
    public async Task Multi_conn_is_used_only_when_allowed()
    {
        await using var peer = new FakeNbdPeer(w => w.NegotiateGoAsync(1 << 20, NbdTransmissionFlags.HasFlags, false)); // writable, no multi-conn
        await using var client = await NbdClient.ConnectAsync(peer.Options() with { Connections = 4 }, Timeout());
        await client.WhenConnectedAsync();
        Assert.Equal(1, client.ConnectionCount);
    }
}
