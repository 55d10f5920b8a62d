using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace VProtect.Simulator.Tests.DataPlane;

/// <summary>
/// A byte-exact NBD client for the xapi-nbd tests: it sees what our full client would hide (a close instead of a
/// greeting, the exact bytes before a drop, the errno of one reply). Every read is bounded by the given token.
/// </summary>
internal sealed class NbdRawClient : IAsyncDisposable
{
    private readonly Socket _socket;
    private NbdRawClient(Socket socket) => _socket = socket;

    public static async Task<NbdRawClient> ConnectAsync(IPAddress address, int port, CancellationToken ct)
    {
        var socket = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        await socket.ConnectAsync(new IPEndPoint(address, port), ct);
        return new NbdRawClient(socket);
    }

    /// <summary>Reads up to <paramref name="count"/> bytes; fewer means the server closed the connection.</summary>
    public async Task<byte[]> ReadUpToAsync(int count, CancellationToken ct)
    {
        var buffer = new byte[count];
        int got = 0;
        while (got < count)
        {
            int n;
            try { n = await _socket.ReceiveAsync(buffer.AsMemory(got), SocketFlags.None, ct); }
            catch (SocketException) { n = 0; } // reset by the server: also a close
            if (n == 0) break;
            got += n;
        }
        return buffer[..got];
    }

    /// <summary>True when the server sent the fixed-newstyle greeting; false when it closed the connection instead.</summary>
    public async Task<bool> GreetingAsync(CancellationToken ct)
    {
        var hello = await ReadUpToAsync(18, ct);
        if (hello.Length == 0) return false;
        Assert.Equal(18, hello.Length);
        Assert.Equal("NBDMAGIC", Encoding.ASCII.GetString(hello, 0, 8));
        Assert.Equal(0x49484156454F5054UL, BinaryPrimitives.ReadUInt64BigEndian(hello.AsSpan(8)));
        Assert.Equal((ushort)1, BinaryPrimitives.ReadUInt16BigEndian(hello.AsSpan(16))); // FIXED_NEWSTYLE only, never NO_ZEROES
        return true;
    }

    public Task SendClientFlagsAsync(CancellationToken ct)
        => SendAsync(new byte[] { 0, 0, 0, 1 }, ct);

    public async Task SendOptionAsync(uint option, byte[] data, CancellationToken ct)
    {
        var header = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(header, 0x49484156454F5054UL);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(header.AsSpan(12), (uint)data.Length);
        data.CopyTo(header, 16);
        await SendAsync(header, ct);
    }

    /// <summary>Reads one option reply: (option, reply type, data).</summary>
    public async Task<(uint Option, uint Reply, byte[] Data)> OptionReplyAsync(CancellationToken ct)
    {
        var h = await ReadUpToAsync(20, ct);
        Assert.Equal(20, h.Length);
        Assert.Equal(0x3e889045565a9UL, BinaryPrimitives.ReadUInt64BigEndian(h));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(16));
        var data = await ReadUpToAsync((int)length, ct);
        Assert.Equal((int)length, data.Length);
        return (BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(8)), BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(12)), data);
    }

    /// <summary>Greeting, client flags, EXPORT_NAME: the export's (size, flags), or null when the server closed the connection.</summary>
    public async Task<(long Size, ushort Flags)?> OpenExportAsync(string name, CancellationToken ct)
    {
        if (!await GreetingAsync(ct)) return null;
        await SendClientFlagsAsync(ct);
        await SendOptionAsync(1, Encoding.UTF8.GetBytes(name), ct);
        var answer = await ReadUpToAsync(134, ct);
        if (answer.Length == 0) return null;
        Assert.Equal(134, answer.Length); // 8 size + 2 flags + 124 zeros: xapi-nbd never offers NO_ZEROES
        Assert.All(answer[10..], b => Assert.Equal(0, b));
        return ((long)BinaryPrimitives.ReadUInt64BigEndian(answer), BinaryPrimitives.ReadUInt16BigEndian(answer.AsSpan(8)));
    }

    public async Task SendReadAsync(ulong cookie, long offset, uint length, CancellationToken ct)
    {
        var r = new byte[28];
        BinaryPrimitives.WriteUInt32BigEndian(r, 0x25609513);
        BinaryPrimitives.WriteUInt16BigEndian(r.AsSpan(6), 0); // NBD_CMD_READ
        BinaryPrimitives.WriteUInt64BigEndian(r.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt64BigEndian(r.AsSpan(16), (ulong)offset);
        BinaryPrimitives.WriteUInt32BigEndian(r.AsSpan(24), length);
        await SendAsync(r, ct);
    }

    /// <summary>A simple reply header: (errno, cookie); null when the connection closed first.</summary>
    public async Task<(uint Errno, ulong Cookie)?> SimpleReplyAsync(CancellationToken ct)
    {
        var h = await ReadUpToAsync(16, ct);
        if (h.Length < 16) return null;
        Assert.Equal(0x67446698U, BinaryPrimitives.ReadUInt32BigEndian(h));
        return (BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(4)), BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(8)));
    }

    private async Task SendAsync(byte[] data, CancellationToken ct) => await _socket.SendAsync(data, SocketFlags.None, ct);

    public ValueTask DisposeAsync()
    {
        _socket.Dispose();
        return ValueTask.CompletedTask;
    }
}
