using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text;
using VProtect.Core.Nbd;

namespace VProtect.Core.Tests.Nbd;

/// <summary>
/// A scripted NBD peer on loopback that lets a test send exactly the bytes it wants (bad magic, truncated or
/// oversized replies, unknown cookies) to our client, or act as a raw client against our server.
/// </summary>
internal sealed class FakeNbdPeer : IAsyncDisposable
{
    private readonly TcpListener _listener;
    private readonly Task _script;

    public FakeNbdPeer(Func<Wire, Task> script)
    {
        _listener = new TcpListener(IPAddress.Loopback, 0);
        _listener.Start();
        _script = Task.Run(async () =>
        {
            using var client = await _listener.AcceptTcpClientAsync(NbdTestSupport.Timeout());
            await using var stream = client.GetStream();
            await script(new Wire(stream));
        });
    }

    public int Port => ((IPEndPoint)_listener.LocalEndpoint).Port;

    public NbdClientOptions Options(string export = "x") => new(new IPEndPoint(IPAddress.Loopback, Port), export)
    {
        Connections = 1, MaxRetries = 0, ConnectTimeout = TimeSpan.FromSeconds(10), RequestTimeout = TimeSpan.FromSeconds(10),
    };

    /// <summary>Waits for the script; exceptions from a script whose peer hung up are expected and ignored.</summary>
    public async ValueTask DisposeAsync()
    {
        try { await _script.WaitAsync(TimeSpan.FromSeconds(10)); } catch (Exception ex) when (ex is IOException or SocketException or EndOfStreamException or OperationCanceledException or TimeoutException) { }
        _listener.Stop();
    }

    public static async Task<Wire> ConnectRawAsync(NbdServer server)
    {
        var c = new TcpClient();
        await c.ConnectAsync(IPAddress.Loopback, server.Port);
        return new Wire(c.GetStream());
    }

    internal sealed class Wire(Stream stream) : IAsyncDisposable
    {
        public Stream Stream { get; set; } = stream;

        public async Task SendAsync(params byte[][] parts) { foreach (var p in parts) await Stream.WriteAsync(p); await Stream.FlushAsync(); }

        public async Task<byte[]> ReadAsync(int n)
        {
            var b = new byte[n];
            int done = 0;
            while (done < n)
            {
                int r = await Stream.ReadAsync(b.AsMemory(done), NbdTestSupport.Timeout());
                if (r == 0) throw new EndOfStreamException();
                done += r;
            }
            return b;
        }

        /// <summary>True if the peer closed the connection (reads end of stream) before sending anything more.</summary>
        public async Task<bool> IsClosedAsync()
        {
            var b = new byte[1];
            try { return await Stream.ReadAsync(b, NbdTestSupport.Timeout()) == 0; }
            catch (IOException) { return true; }
        }

        // --- server side of a handshake ---
        public Task GreetAsync(NbdHandshakeFlags flags = NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes, ulong second = NbdProtocol.IHaveOpt, ulong magic = NbdProtocol.NbdMagic)
            => SendAsync(U64(magic), U64(second), U16((ushort)flags));

        public async Task<uint> ReadClientFlagsAsync() => BinaryPrimitives.ReadUInt32BigEndian(await ReadAsync(4));

        public async Task<(NbdOption Option, byte[] Data)> ReadOptionAsync()
        {
            var h = await ReadAsync(16);
            if (BinaryPrimitives.ReadUInt64BigEndian(h) != NbdProtocol.IHaveOpt) throw new InvalidDataException("not an option");
            var opt = (NbdOption)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(8));
            var data = await ReadAsync((int)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(12)));
            return (opt, data);
        }

        public Task ReplyAsync(NbdOption option, NbdOptionReply reply, byte[]? data = null, ulong magic = NbdProtocol.OptionReplyMagic, uint? length = null)
        {
            data ??= [];
            return SendAsync(U64(magic), U32((uint)option), U32((uint)reply), U32(length ?? (uint)data.Length), data);
        }

        /// <summary>Answers options like a simple modern server until GO, then ACKs it with the given export info.</summary>
        public async Task NegotiateGoAsync(long size, NbdTransmissionFlags flags, bool structured, uint? contextId = null, byte[]? blockSize = null)
        {
            await GreetAsync();
            await ReadClientFlagsAsync();
            while (true)
            {
                var (opt, _) = await ReadOptionAsync();
                switch (opt)
                {
                    case NbdOption.StructuredReply:
                        await ReplyAsync(opt, structured ? NbdOptionReply.Ack : NbdOptionReply.ErrUnsup);
                        break;
                    case NbdOption.SetMetaContext:
                        if (contextId is { } id) await ReplyAsync(opt, NbdOptionReply.MetaContext, [.. U32(id), .. Encoding.UTF8.GetBytes("base:allocation")]);
                        await ReplyAsync(opt, NbdOptionReply.Ack);
                        break;
                    case NbdOption.Go:
                        await ReplyAsync(opt, NbdOptionReply.Info, [.. U16(0), .. U64((ulong)size), .. U16((ushort)flags)]);
                        if (blockSize is not null) await ReplyAsync(opt, NbdOptionReply.Info, blockSize);
                        await ReplyAsync(opt, NbdOptionReply.Ack);
                        return;
                    default:
                        await ReplyAsync(opt, NbdOptionReply.ErrUnsup);
                        break;
                }
            }
        }

        public async Task<(NbdCommand Command, ulong Cookie, long Offset, uint Length)> ReadRequestAsync()
        {
            var h = await ReadAsync(28);
            if (BinaryPrimitives.ReadUInt32BigEndian(h) != NbdProtocol.RequestMagic) throw new InvalidDataException("not a request");
            return ((NbdCommand)BinaryPrimitives.ReadUInt16BigEndian(h.AsSpan(6)), BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(8)),
                (long)BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(16)), BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(24)));
        }

        public Task SimpleReplyAsync(ulong cookie, uint error = 0, byte[]? data = null, uint magic = NbdProtocol.SimpleReplyMagic)
            => SendAsync(U32(magic), U32(error), U64(cookie), data ?? []);

        public Task ChunkAsync(ulong cookie, NbdChunkType type, byte[] payload, bool done, uint? length = null)
            => SendAsync(U32(NbdProtocol.StructuredReplyMagic), U16((ushort)(done ? 1 : 0)), U16((ushort)type), U64(cookie), U32(length ?? (uint)payload.Length), payload);

        // --- client side against our server ---
        public async Task<(ulong Magic, NbdHandshakeFlags Flags)> ReadGreetingAsync()
        {
            var g = await ReadAsync(18);
            return (BinaryPrimitives.ReadUInt64BigEndian(g.AsSpan(8)), (NbdHandshakeFlags)BinaryPrimitives.ReadUInt16BigEndian(g.AsSpan(16)));
        }

        public Task SendOptionAsync(NbdOption option, byte[]? data = null)
            => SendAsync(U64(NbdProtocol.IHaveOpt), U32((uint)option), U32((uint)(data?.Length ?? 0)), data ?? []);

        public async Task<(NbdOption Option, NbdOptionReply Reply, byte[] Data)> ReadOptionReplyAsync()
        {
            var h = await ReadAsync(20);
            var data = await ReadAsync((int)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(16)));
            return ((NbdOption)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(8)), (NbdOptionReply)BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(12)), data);
        }

        public Task SendRequestAsync(NbdCommand command, ulong cookie, long offset, uint length, NbdCommandFlags flags = 0)
            => SendAsync(U32(NbdProtocol.RequestMagic), U16((ushort)flags), U16((ushort)command), U64(cookie), U64((ulong)offset), U32(length));

        public async Task<(uint Error, ulong Cookie)> ReadSimpleReplyAsync()
        {
            var h = await ReadAsync(16);
            if (BinaryPrimitives.ReadUInt32BigEndian(h) != NbdProtocol.SimpleReplyMagic) throw new InvalidDataException($"reply magic {BinaryPrimitives.ReadUInt32BigEndian(h):x8}");
            return (BinaryPrimitives.ReadUInt32BigEndian(h.AsSpan(4)), BinaryPrimitives.ReadUInt64BigEndian(h.AsSpan(8)));
        }

        public ValueTask DisposeAsync() => Stream.DisposeAsync();
    }

    public static byte[] U16(ushort v) { var b = new byte[2]; BinaryPrimitives.WriteUInt16BigEndian(b, v); return b; }
    public static byte[] U32(uint v) { var b = new byte[4]; BinaryPrimitives.WriteUInt32BigEndian(b, v); return b; }
    public static byte[] U64(ulong v) { var b = new byte[8]; BinaryPrimitives.WriteUInt64BigEndian(b, v); return b; }
    public static byte[] NameData(string name, params ushort[] infos)
        => [.. U32((uint)Encoding.UTF8.GetByteCount(name)), .. Encoding.UTF8.GetBytes(name), .. U16((ushort)infos.Length), .. infos.SelectMany(U16)];
}
