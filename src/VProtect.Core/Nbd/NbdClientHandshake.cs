using System.Buffers.Binary;
using System.Net.Security;
using System.Text;

namespace VProtect.Core.Nbd;

/// <summary>
/// Client side of fixed-newstyle option haggling, in libnbd's order: STARTTLS, STRUCTURED_REPLY,
/// SET_META_CONTEXT (base:allocation), GO with INFO_BLOCK_SIZE; EXPORT_NAME when GO is unsupported (xapi-nbd).
/// </summary>
internal static class NbdClientHandshake
{
    public static async Task<(Stream Stream, NbdExportInfo Info)> RunAsync(Stream stream, NbdClientOptions options, CancellationToken ct)
    {
        var hello = new byte[18];
        await ReadOrNegotiationFailure(stream, hello, "the server greeting", ct);
        if (BinaryPrimitives.ReadUInt64BigEndian(hello) != NbdProtocol.NbdMagic)
            throw new NbdProtocolException($"the greeting starts with 0x{BinaryPrimitives.ReadUInt64BigEndian(hello):x16}, not NBDMAGIC");
        ulong second = BinaryPrimitives.ReadUInt64BigEndian(hello.AsSpan(8));
        if (second != NbdProtocol.IHaveOpt)
            throw new NbdNegotiationException(second == 0x00420281861253
                ? "The server speaks old-style NBD, which has no export names or TLS; run it in newstyle mode."
                : $"The greeting's second magic is 0x{second:x16}, not IHAVEOPT; the peer is not an NBD newstyle server.");
        var serverFlags = (NbdHandshakeFlags)BinaryPrimitives.ReadUInt16BigEndian(hello.AsSpan(16));
        if ((serverFlags & NbdHandshakeFlags.FixedNewstyle) == 0)
            throw new NbdNegotiationException("The server does not offer fixed newstyle negotiation; it is too old to use safely.");
        bool noZeroes = (serverFlags & NbdHandshakeFlags.NoZeroes) != 0;
        var clientFlags = NbdClientFlags.FixedNewstyle | (noZeroes ? NbdClientFlags.NoZeroes : 0);
        var cf = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(cf, (uint)clientFlags);
        await stream.WriteAsync(cf, ct);

        bool tls = false;
        if (options.Tls.Enabled)
        {
            // STARTTLS first, and give up if refused: no silent downgrade (proto.md, TLS client rules).
            await SendOptionAsync(stream, NbdOption.StartTls, [], ct);
            var (reply, data) = await ReadOptionReplyAsync(stream, NbdOption.StartTls, ct);
            if (reply != NbdOptionReply.Ack)
                throw new NbdNegotiationException($"The server refused STARTTLS ({Describe(reply, data)}); it serves without TLS. Use NbdTlsOptions.Insecure only if that is intended (insecure_nbd).", reply);
            var ssl = new SslStream(stream, leaveInnerStreamOpen: false);
            try { await ssl.AuthenticateAsClientAsync(options.Tls.CreateAuthenticationOptions(), ct); }
            catch (Exception ex) when (ex is System.Security.Authentication.AuthenticationException or IOException)
            {
                await ssl.DisposeAsync();
                throw new NbdNegotiationException($"TLS handshake with the NBD server failed: {ex.Message}. Check that the pinned certificate (VDI.get_nbd_info 'cert') and subject '{options.Tls.ServerName}' belong to this server.", null, ex);
            }
            stream = ssl;
            tls = true;
        }

        bool structured = false;
        uint? contextId = null;
        if (options.UseStructuredReplies)
        {
            await SendOptionAsync(stream, NbdOption.StructuredReply, [], ct);
            var (reply, data) = await ReadOptionReplyAsync(stream, NbdOption.StructuredReply, ct);
            ThrowIfTlsRequired(reply);
            structured = reply == NbdOptionReply.Ack;
            if (structured && options.UseBlockStatus) contextId = await SetMetaContextAsync(stream, options.ExportName, ct);
        }

        var go = await TryGoAsync(stream, options.ExportName, ct);
        if (go is not null) return (stream, go with { StructuredReplies = structured, AllocationContextId = contextId, Tls = tls });

        // EXPORT_NAME: no option reply; size, flags and (without NO_ZEROES) 124 zero bytes, or a closed connection on refusal.
        await SendOptionAsync(stream, NbdOption.ExportName, Encoding.UTF8.GetBytes(options.ExportName), ct);
        var answer = new byte[noZeroes ? 10 : 134];
        try { await NbdWire.ReadExactAsync(stream, answer, ct); }
        catch (EndOfStreamException ex)
        {
            throw new NbdNegotiationException($"The server closed the connection after NBD_OPT_EXPORT_NAME '{Redact(options.ExportName)}': the export does not exist or is not allowed (xapi-nbd: check the VDI uuid and that the session is still logged in).", null, ex);
        }
        long size = (long)BinaryPrimitives.ReadUInt64BigEndian(answer);
        var flags = (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(answer.AsSpan(8));
        if (size < 0) throw new NbdProtocolException($"export size {(ulong)size} is beyond 2^63");
        return (stream, new NbdExportInfo
        {
            Size = size, Flags = flags, StructuredReplies = structured, AllocationContextId = contextId, NegotiatedWithGo = false, Tls = tls,
        });
    }

    private static async Task<uint?> SetMetaContextAsync(Stream stream, string export, CancellationToken ct)
    {
        var data = new List<byte>();
        NbdWire.WriteString(data, export);
        NbdWire.WriteU32(data, 1);
        NbdWire.WriteString(data, NbdProtocol.BaseAllocation);
        await SendOptionAsync(stream, NbdOption.SetMetaContext, data.ToArray(), ct);
        uint? id = null;
        for (int replies = 0; ; replies++)
        {
            var (reply, payload) = await ReadOptionReplyAsync(stream, NbdOption.SetMetaContext, ct);
            if (reply == NbdOptionReply.Ack) return id;
            if (IsError(reply)) { ThrowIfTlsRequired(reply); return null; }
            if (reply != NbdOptionReply.MetaContext || payload.Length < 4)
                throw new NbdProtocolException($"unexpected reply {reply} of {payload.Length} bytes to SET_META_CONTEXT");
            if (replies > 16) throw new NbdProtocolException("more meta contexts than the one requested");
            string name = Encoding.UTF8.GetString(payload, 4, payload.Length - 4);
            if (name == NbdProtocol.BaseAllocation) id = BinaryPrimitives.ReadUInt32BigEndian(payload);
        }
    }

    private static async Task<NbdExportInfo?> TryGoAsync(Stream stream, string export, CancellationToken ct)
    {
        var data = new List<byte>();
        NbdWire.WriteString(data, export);
        NbdWire.WriteU16(data, 2);
        NbdWire.WriteU16(data, (ushort)NbdInfoType.BlockSize);
        NbdWire.WriteU16(data, (ushort)NbdInfoType.Description);
        await SendOptionAsync(stream, NbdOption.Go, data.ToArray(), ct);
        long? size = null; NbdTransmissionFlags flags = 0;
        int min = 512, preferred = 4096, max = NbdProtocol.DefaultMaxPayload; bool hasBlockSize = false; string? description = null;
        for (int replies = 0; ; replies++)
        {
            var (reply, payload) = await ReadOptionReplyAsync(stream, NbdOption.Go, ct);
            if (reply == NbdOptionReply.ErrUnsup) return null;
            if (reply == NbdOptionReply.Ack)
            {
                if (size is null) throw new NbdProtocolException("GO was acknowledged without NBD_INFO_EXPORT");
                return new NbdExportInfo
                {
                    Size = size.Value, Flags = flags, MinimumBlockSize = min, PreferredBlockSize = preferred, MaximumPayload = max,
                    HasBlockSizeInfo = hasBlockSize, NegotiatedWithGo = true, Description = description,
                };
            }
            if (IsError(reply))
            {
                ThrowIfTlsRequired(reply);
                throw new NbdNegotiationException(reply == NbdOptionReply.ErrUnknown
                    ? $"The server has no export named '{Redact(export)}' ({Describe(reply, payload)}). Check the export name."
                    : $"The server refused export '{Redact(export)}': {Describe(reply, payload)}.", reply);
            }
            if (reply != NbdOptionReply.Info) throw new NbdProtocolException($"unexpected reply {reply} to NBD_OPT_GO");
            if (replies > 64) throw new NbdProtocolException("too many INFO replies to NBD_OPT_GO");
            if (payload.Length < 2) throw new NbdProtocolException("an NBD_REP_INFO reply shorter than its type field");
            switch ((NbdInfoType)BinaryPrimitives.ReadUInt16BigEndian(payload))
            {
                case NbdInfoType.Export:
                    if (payload.Length != 12) throw new NbdProtocolException($"NBD_INFO_EXPORT of {payload.Length} bytes, expected 12");
                    long s = (long)BinaryPrimitives.ReadUInt64BigEndian(payload.AsSpan(2));
                    if (s < 0) throw new NbdProtocolException("export size beyond 2^63");
                    size = s;
                    flags = (NbdTransmissionFlags)BinaryPrimitives.ReadUInt16BigEndian(payload.AsSpan(10));
                    break;
                case NbdInfoType.BlockSize:
                    if (payload.Length != 14) throw new NbdProtocolException($"NBD_INFO_BLOCK_SIZE of {payload.Length} bytes, expected 14");
                    uint mn = BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(2)), pr = BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(6)), mx = BinaryPrimitives.ReadUInt32BigEndian(payload.AsSpan(10));
                    if (mn == 0 || mn > 65536 || (mn & (mn - 1)) != 0 || pr < mn || mx < mn)
                        throw new NbdProtocolException($"invalid block sizes min {mn}, preferred {pr}, max {mx}");
                    min = (int)mn; preferred = (int)Math.Min(pr, 1u << 30); max = (int)Math.Min(mx, (uint)NbdProtocol.DefaultMaxPayload);
                    hasBlockSize = true;
                    break;
                case NbdInfoType.Description:
                    description = Encoding.UTF8.GetString(payload, 2, payload.Length - 2);
                    break;
                default: break; // unknown info types are ignored (proto.md)
            }
        }
    }

    internal static async Task SendOptionAsync(Stream stream, NbdOption option, byte[] data, CancellationToken ct)
    {
        await stream.WriteAsync(NbdWire.Option(option, data), ct);
        await stream.FlushAsync(ct);
    }

    internal static async Task<(NbdOptionReply Reply, byte[] Data)> ReadOptionReplyAsync(Stream stream, NbdOption option, CancellationToken ct)
    {
        var header = new byte[20];
        await ReadOrNegotiationFailure(stream, header, $"the reply to {option}", ct);
        ulong magic = BinaryPrimitives.ReadUInt64BigEndian(header);
        if (magic != NbdProtocol.OptionReplyMagic) throw new NbdProtocolException($"option reply magic 0x{magic:x16} in the reply to {option}");
        uint echoed = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
        if (echoed != (uint)option) throw new NbdProtocolException($"the reply to option {option} names option {echoed}");
        var reply = (NbdOptionReply)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
        uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(16));
        if (length > NbdProtocol.MaxOptionReplyLength) throw new NbdProtocolException($"option reply of {length} bytes to {option} (limit {NbdProtocol.MaxOptionReplyLength})");
        var data = new byte[length];
        await ReadOrNegotiationFailure(stream, data, $"the reply to {option}", ct);
        return (reply, data);
    }

    private static async Task ReadOrNegotiationFailure(Stream stream, byte[] buffer, string what, CancellationToken ct)
    {
        try { await NbdWire.ReadExactAsync(stream, buffer, ct); }
        catch (EndOfStreamException ex) { throw new NbdNegotiationException($"The server closed the connection while we waited for {what}.", null, ex); }
    }

    private static bool IsError(NbdOptionReply r) => ((uint)r & 0x80000000) != 0;

    private static void ThrowIfTlsRequired(NbdOptionReply reply)
    {
        if (reply == NbdOptionReply.ErrTlsReqd)
            throw new NbdNegotiationException("The server requires TLS (NBD_REP_ERR_TLS_REQD). Connect with NbdTlsOptions.Pinned(cert, subject) from VDI.get_nbd_info.", reply);
    }

    private static string Describe(NbdOptionReply reply, byte[] data)
        => data.Length > 0 && IsError(reply) ? $"{reply}: {Encoding.UTF8.GetString(data)}" : reply.ToString();

    /// <summary>xapi-nbd export names carry a session reference, which is a secret: never print it.</summary>
    internal static string Redact(string export)
    {
        int q = export.IndexOf("session_id=", StringComparison.Ordinal);
        return q < 0 ? export : export[..(q + 11)] + "***";
    }
}
