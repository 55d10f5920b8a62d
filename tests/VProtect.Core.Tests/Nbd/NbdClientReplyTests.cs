using VProtect.Core.Nbd;
using Xunit;
using static VProtect.Core.Tests.Nbd.FakeNbdPeer;
using static VProtect.Core.Tests.Nbd.NbdTestSupport;

namespace VProtect.Core.Tests.Nbd;

/// <summary>Malformed and error replies in transmission: each must fail the request, never deliver bad data as good.</summary>
public class NbdClientReplyTests
{
    private const NbdTransmissionFlags ReadOnly = NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.ReadOnly;

    private static FakeNbdPeer Peer(bool structured, Func<Wire, (NbdCommand Command, ulong Cookie, long Offset, uint Length), Task> onRequest, uint? context = null)
        => new(async w =>
        {
            await w.NegotiateGoAsync(1 << 20, ReadOnly, structured, context);
            await onRequest(w, await w.ReadRequestAsync());
        });

    private static async Task<T> ReadFails<T>(FakeNbdPeer peer, long offset = 4096, int length = 8192) where T : Exception
    {
        await using var c = await NbdConnection.ConnectAsync(peer.Options(), Timeout());
        return await Assert.ThrowsAsync<T>(() => c.ReadAsync(offset, new byte[length], Timeout()));
    }

    [Fact]
    public async Task Wrong_reply_magic_ends_the_connection()
    {
        await using var peer = Peer(false, (w, r) => w.SimpleReplyAsync(r.Cookie, magic: 0x12345678));
        var ex = await ReadFails<NbdProtocolException>(peer);
        Assert.Contains("0x12345678", ex.Message);
    }

    [Fact]
    public async Task Structured_magic_without_negotiation_is_a_violation()
    {
        await using var peer = Peer(false, (w, r) => w.ChunkAsync(r.Cookie, NbdChunkType.None, [], true));
        await ReadFails<NbdProtocolException>(peer);
    }

    [Fact]
    public async Task Unknown_cookie_ends_the_connection()
    {
        await using var peer = Peer(false, (w, r) => w.SimpleReplyAsync(r.Cookie + 1000, 0, new byte[r.Length]));
        var ex = await ReadFails<NbdProtocolException>(peer);
        Assert.Contains("cookie", ex.Message);
    }

    [Fact]
    public async Task Truncated_simple_reply_loses_the_connection()
    {
        await using var peer = Peer(false, (w, r) => w.SimpleReplyAsync(r.Cookie, 0, new byte[r.Length / 2])); // then closes
        await ReadFails<NbdConnectionLostException>(peer);
    }

    [Fact]
    public async Task Simple_error_reply_fails_with_the_errno_and_unknown_values_become_einval()
    {
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.NegotiateGoAsync(1 << 20, ReadOnly, false);
            var r1 = await w.ReadRequestAsync();
            await w.SimpleReplyAsync(r1.Cookie, NbdErrno.EIO);
            var r2 = await w.ReadRequestAsync();
            await w.SimpleReplyAsync(r2.Cookie, 9999);
            var r3 = await w.ReadRequestAsync();
            await w.SimpleReplyAsync(r3.Cookie, 0, Enumerable.Repeat((byte)7, (int)r3.Length).ToArray());
        });
        await using var c = await NbdConnection.ConnectAsync(peer.Options(), Timeout());
        var e1 = await Assert.ThrowsAsync<NbdException>(() => c.ReadAsync(0, new byte[512], Timeout()));
        Assert.Equal(NbdErrno.EIO, e1.Errno);
        Assert.Contains("EIO", e1.Message);
        var e2 = await Assert.ThrowsAsync<NbdException>(() => c.ReadAsync(0, new byte[512], Timeout()));
        Assert.Equal(NbdErrno.EINVAL, e2.Errno);
        var ok = new byte[512];
        await c.ReadAsync(0, ok, Timeout()); // the connection survived both errors
        Assert.All(ok, b => Assert.Equal(7, b));
    }

    [Fact]
    public async Task Error_chunk_after_partial_data_fails_the_whole_read()
    {
        await using var peer = Peer(true, async (w, r) =>
        {
            await w.ChunkAsync(r.Cookie, NbdChunkType.OffsetData, [.. U64((ulong)r.Offset), .. new byte[1024]], false);
            var msg = "disk on fire"u8.ToArray();
            await w.ChunkAsync(r.Cookie, NbdChunkType.ErrorOffset, [.. U32(NbdErrno.EIO), .. U16((ushort)msg.Length), .. msg, .. U64((ulong)r.Offset + 1024)], true);
        });
        var ex = await ReadFails<NbdException>(peer);
        Assert.Equal(NbdErrno.EIO, ex.Errno);
        Assert.Contains("disk on fire", ex.Message);
    }

    [Fact]
    public async Task Data_chunk_outside_the_request_is_a_violation()
    {
        await using var peer = Peer(true, (w, r) => w.ChunkAsync(r.Cookie, NbdChunkType.OffsetData, [.. U64((ulong)r.Offset + r.Length - 100), .. new byte[200]], true));
        var ex = await ReadFails<NbdProtocolException>(peer);
        Assert.Contains("outside the request", ex.Message);
    }

    [Fact]
    public async Task Data_chunk_longer_than_the_request_is_a_violation()
    {
        await using var peer = Peer(true, (w, r) => w.ChunkAsync(r.Cookie, NbdChunkType.OffsetData, [.. U64((ulong)r.Offset), .. new byte[r.Length + 512]], true));
        await ReadFails<NbdProtocolException>(peer);
    }

    [Fact]
    public async Task Overlapping_chunks_are_a_violation()
    {
        await using var peer = Peer(true, async (w, r) =>
        {
            await w.ChunkAsync(r.Cookie, NbdChunkType.OffsetData, [.. U64((ulong)r.Offset), .. new byte[4096]], false);
            await w.ChunkAsync(r.Cookie, NbdChunkType.OffsetHole, [.. U64((ulong)r.Offset + 2048), .. U32(r.Length - 2048)], true);
        });
        var ex = await ReadFails<NbdProtocolException>(peer);
        Assert.Contains("overlaps", ex.Message);
    }

    [Fact]
    public async Task Reply_that_does_not_cover_the_request_is_a_violation_not_zeros()
    {
        await using var peer = Peer(true, (w, r) => w.ChunkAsync(r.Cookie, NbdChunkType.OffsetData, [.. U64((ulong)r.Offset), .. new byte[r.Length / 2]], true));
        var ex = await ReadFails<NbdProtocolException>(peer);
        Assert.Contains("covering only", ex.Message);
    }

    [Fact]
    public async Task Holes_and_data_chunks_in_any_order_assemble_the_buffer()
    {
        await using var peer = Peer(true, async (w, r) =>
        {
            await w.ChunkAsync(r.Cookie, NbdChunkType.OffsetData, [.. U64((ulong)r.Offset + 4096), .. Enumerable.Repeat((byte)9, (int)r.Length - 4096)], false);
            await w.ChunkAsync(r.Cookie, NbdChunkType.OffsetHole, [.. U64((ulong)r.Offset), .. U32(4096)], true);
        });
        await using var c = await NbdConnection.ConnectAsync(peer.Options(), Timeout());
        var buf = Enumerable.Repeat((byte)0xFF, 8192).ToArray();
        await c.ReadAsync(4096, buf, Timeout());
        Assert.All(buf.AsSpan(0, 4096).ToArray(), b => Assert.Equal(0, b));
        Assert.All(buf.AsSpan(4096).ToArray(), b => Assert.Equal(9, b));
    }

    [Fact]
    public async Task Unknown_chunk_type_without_error_bit_is_a_violation()
    {
        await using var peer = Peer(true, (w, r) => w.ChunkAsync(r.Cookie, (NbdChunkType)77, [1, 2, 3], true));
        await ReadFails<NbdProtocolException>(peer);
    }

    [Fact]
    public async Task Unknown_error_chunk_type_fails_the_request_with_einval()
    {
        await using var peer = Peer(true, (w, r) => w.ChunkAsync(r.Cookie, (NbdChunkType)0x8077, [.. U32(NbdErrno.ENOSPC), .. U16(0)], true));
        var ex = await ReadFails<NbdException>(peer);
        Assert.IsNotType<NbdProtocolException>(ex);
        Assert.Equal(NbdErrno.EINVAL, ex.Errno);
    }

    [Fact]
    public async Task Error_chunk_with_inconsistent_message_length_is_a_violation()
    {
        await using var peer = Peer(true, (w, r) => w.ChunkAsync(r.Cookie, NbdChunkType.Error, [.. U32(NbdErrno.EIO), .. U16(50), 1, 2], true));
        await ReadFails<NbdProtocolException>(peer);
    }

    [Fact]
    public async Task Oversized_chunk_length_is_a_violation()
    {
        await using var peer = Peer(true, (w, r) => w.ChunkAsync(r.Cookie, NbdChunkType.Error, [.. U32(NbdErrno.EIO), .. U16(0)], true, length: 0x7FFFFFFF));
        await ReadFails<NbdProtocolException>(peer);
    }

    [Fact]
    public async Task Block_status_for_an_unselected_context_is_a_violation()
    {
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.NegotiateGoAsync(1 << 20, ReadOnly, true, contextId: 5);
            var r = await w.ReadRequestAsync();
            await w.ChunkAsync(r.Cookie, NbdChunkType.BlockStatus, [.. U32(6), .. U32(4096), .. U32(3)], true);
        });
        await using var c = await NbdConnection.ConnectAsync(peer.Options(), Timeout());
        Assert.Equal(5u, c.Export.AllocationContextId);
        await Assert.ThrowsAsync<NbdProtocolException>(() => c.BlockStatusAsync(0, 1 << 20, Timeout()));
    }

    [Fact]
    public async Task Block_status_extents_are_parsed_in_sequence()
    {
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.NegotiateGoAsync(1 << 20, ReadOnly, true, contextId: 5);
            var r = await w.ReadRequestAsync();
            await w.ChunkAsync(r.Cookie, NbdChunkType.BlockStatus, [.. U32(5), .. U32(4096), .. U32(0), .. U32(8192), .. U32(3)], true);
        });
        await using var c = await NbdConnection.ConnectAsync(peer.Options(), Timeout());
        var extents = await c.BlockStatusAsync(65536, 1 << 19, Timeout());
        Assert.Equal([new NbdAllocationExtent(65536, 4096, NbdAllocationFlags.Data), new NbdAllocationExtent(69632, 8192, NbdAllocationFlags.Hole | NbdAllocationFlags.Zero)], extents);
        Assert.True(extents[1].ReadsAsZeroes);
    }

    [Fact]
    public async Task Silent_server_times_out_instead_of_hanging()
    {
        var release = new TaskCompletionSource();
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.NegotiateGoAsync(1 << 20, ReadOnly, false);
            await w.ReadRequestAsync();
            await release.Task.WaitAsync(TimeSpan.FromSeconds(20));
        });
        await using var c = await NbdConnection.ConnectAsync(peer.Options() with { RequestTimeout = TimeSpan.FromMilliseconds(300) }, Timeout());
        var ex = await Assert.ThrowsAsync<NbdConnectionLostException>(() => c.ReadAsync(0, new byte[512], Timeout()));
        Assert.Contains("sent nothing", ex.Message);
        Assert.True(c.IsBroken);
        release.SetResult();
    }

    [Fact]
    public async Task Replies_out_of_order_are_matched_by_cookie()
    {
        await using var peer = new FakeNbdPeer(async w =>
        {
            await w.NegotiateGoAsync(1 << 20, ReadOnly, false);
            var a = await w.ReadRequestAsync();
            var b = await w.ReadRequestAsync();
            await w.SimpleReplyAsync(b.Cookie, 0, Enumerable.Repeat((byte)2, (int)b.Length).ToArray());
            await w.SimpleReplyAsync(a.Cookie, 0, Enumerable.Repeat((byte)1, (int)a.Length).ToArray());
        });
        await using var c = await NbdConnection.ConnectAsync(peer.Options(), Timeout());
        var ba = new byte[512]; var bb = new byte[1024];
        var ta = c.ReadAsync(0, ba, Timeout());
        var tb = c.ReadAsync(4096, bb, Timeout());
        await Task.WhenAll(ta, tb);
        Assert.All(ba, x => Assert.Equal(1, x));
        Assert.All(bb, x => Assert.Equal(2, x));
    }
}
