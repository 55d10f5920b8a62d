using System.Buffers.Binary;
using System.Net.Security;
using System.Net.Sockets;
using System.Security.Authentication;
using System.Text;

namespace VProtect.Core.Nbd;

/// <summary>One server connection: option haggling (this file) then transmission (NbdServerSession.Transmission.cs).</summary>
internal sealed partial class NbdServerSession
{
    private readonly NbdServerOptions _options;
    private readonly Socket _socket;
    private readonly NbdConnectionInfo _info;
    private readonly long? _dropAfter;
    private Stream _stream;
    private long _bytesSent;
    private bool _noZeroes;
    private bool _structured;
    private string? _metaExport;
    private bool _metaAllocation;

    public NbdServerSession(NbdServerOptions options, Socket socket, NbdConnectionInfo info)
    {
        _options = options;
        _socket = socket;
        _info = info;
        _stream = new NetworkStream(socket, ownsSocket: true);
        _dropAfter = options.Hooks?.DropConnectionAfterBytes(info);
    }

    private bool Xapi => _options.XapiNbdMode;

    public async Task RunAsync(CancellationToken stopping)
    {
        NbdExport? export = null;
        try
        {
            var tlsMode = _options.TlsMode(_info);
            if (tlsMode == NbdTlsMode.RefuseConnection) return;
            if (tlsMode != NbdTlsMode.Off && _options.Certificate is null)
                throw new InvalidOperationException("NbdServerOptions.Certificate is required when TLS is optional or required.");
            string exportName;
            using (var handshake = CancellationTokenSource.CreateLinkedTokenSource(stopping))
            {
                handshake.CancelAfter(_options.HandshakeTimeout);
                (export, exportName) = await NegotiateAsync(tlsMode, handshake.Token);
            }
            if (export is null) return;
            await TransmitAsync(export, exportName, stopping);
        }
        catch (Exception ex) when (ex is IOException or SocketException or OperationCanceledException or ObjectDisposedException or AuthenticationException or EndOfStreamException or ConnectionDroppedException)
        {
            // The peer went away, broke the protocol, or the server is stopping: nothing to answer.
        }
        catch (Exception ex)
        {
            // A resolver or hook failed: close this connection only; the server goes on serving others.
            _options.OnConnectionError?.Invoke(_info, ex);
        }
        finally
        {
            try { await _stream.DisposeAsync(); } catch (Exception) { }
            if (export?.OnClosed is { } closed)
            {
                try { await closed(); } catch (Exception ex) { _options.OnConnectionError?.Invoke(_info, ex); }
            }
        }
    }

    /// <summary>Returns the export to serve, or null when the connection should just close.</summary>
    private async Task<(NbdExport?, string)> NegotiateAsync(NbdTlsMode tlsMode, CancellationToken ct)
    {
        var hello = new byte[18];
        BinaryPrimitives.WriteUInt64BigEndian(hello, NbdProtocol.NbdMagic);
        BinaryPrimitives.WriteUInt64BigEndian(hello.AsSpan(8), NbdProtocol.IHaveOpt);
        var offered = Xapi ? NbdHandshakeFlags.FixedNewstyle : NbdHandshakeFlags.FixedNewstyle | NbdHandshakeFlags.NoZeroes;
        BinaryPrimitives.WriteUInt16BigEndian(hello.AsSpan(16), (ushort)offered);
        await WriteAsync(hello, ct);

        var cf = new byte[4];
        await NbdWire.ReadExactAsync(_stream, cf, ct);
        var clientFlags = (NbdClientFlags)BinaryPrimitives.ReadUInt32BigEndian(cf);
        if ((clientFlags & ~(NbdClientFlags.FixedNewstyle | NbdClientFlags.NoZeroes)) != 0) return (null, ""); // unknown flags: drop (proto.md)
        if ((clientFlags & NbdClientFlags.NoZeroes) != 0 && (offered & NbdHandshakeFlags.NoZeroes) == 0) return (null, "");
        bool fixedNewstyle = (clientFlags & NbdClientFlags.FixedNewstyle) != 0;
        if (!fixedNewstyle && (tlsMode == NbdTlsMode.Required || !Xapi)) return (null, ""); // TLS and our options need fixed newstyle
        _noZeroes = (clientFlags & NbdClientFlags.NoZeroes) != 0;

        var header = new byte[16];
        for (int count = 0; ; count++)
        {
            if (count > 1000) return (null, ""); // a client haggling forever
            await NbdWire.ReadExactAsync(_stream, header, ct);
            if (BinaryPrimitives.ReadUInt64BigEndian(header) != NbdProtocol.IHaveOpt) return (null, "");
            uint option = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8));
            uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(12));
            if (length > NbdProtocol.MaxOptionLength)
            {
                if (length > 16 * 1024 * 1024) return (null, "");
                await NbdWire.SkipAsync(_stream, length, ct);
                await ReplyAsync(option, NbdOptionReply.ErrTooBig, "option data too long", ct);
                continue;
            }
            var data = new byte[length];
            await NbdWire.ReadExactAsync(_stream, data, ct);
            var opt = (NbdOption)option;

            if (tlsMode == NbdTlsMode.Required && !_info.Tls && opt != NbdOption.StartTls)
            {
                if (opt is NbdOption.ExportName) return (null, "");
                if (opt is NbdOption.Abort) { if (!Xapi) await ReplyAsync(option, NbdOptionReply.Ack, (string?)null, ct); return (null, ""); }
                await ReplyAsync(option, NbdOptionReply.ErrTlsReqd, "TLS is required: send NBD_OPT_STARTTLS first", ct);
                continue;
            }

            switch (opt)
            {
                case NbdOption.ExportName:
                {
                    string name = Encoding.UTF8.GetString(data);
                    var export = await _options.ResolveExport(new NbdExportRequest(name, _info, opt), ct);
                    if (export is null) return (null, ""); // no error channel for EXPORT_NAME: close
                    var answer = new byte[_noZeroes ? 10 : 134];
                    BinaryPrimitives.WriteUInt64BigEndian(answer, (ulong)export.Source.Length);
                    BinaryPrimitives.WriteUInt16BigEndian(answer.AsSpan(8), (ushort)FlagsFor(export));
                    try { await WriteAsync(answer, ct); }
                    catch
                    {
                        // The export was opened but never handed to RunAsync: release it here (the simulator's dom0 VBD).
                        if (export.OnClosed is { } closed) await closed();
                        throw;
                    }
                    return (export, name);
                }
                case NbdOption.Abort:
                    await ReplyAsync(option, NbdOptionReply.Ack, (string?)null, ct);
                    return (null, "");
                case NbdOption.List:
                    if (length != 0) { await ReplyAsync(option, NbdOptionReply.ErrInvalid, "LIST takes no data", ct); break; }
                    if (Xapi || _options.ListExports is null) { await ReplyAsync(option, NbdOptionReply.ErrPolicy, "export listing is not allowed", ct); break; }
                    foreach (var n in _options.ListExports())
                    {
                        var d = new List<byte>();
                        NbdWire.WriteString(d, n);
                        await ReplyAsync(option, NbdOptionReply.Server, d.ToArray(), ct);
                    }
                    await ReplyAsync(option, NbdOptionReply.Ack, (string?)null, ct);
                    break;
                case NbdOption.StartTls:
                    if (length != 0) { await ReplyAsync(option, NbdOptionReply.ErrInvalid, "STARTTLS takes no data", ct); break; }
                    if (_info.Tls) { await ReplyAsync(option, NbdOptionReply.ErrInvalid, "TLS is already active", ct); break; }
                    if (tlsMode == NbdTlsMode.Off) { await ReplyAsync(option, NbdOptionReply.ErrPolicy, "this server does not offer TLS", ct); break; }
                    await ReplyAsync(option, NbdOptionReply.Ack, (string?)null, ct);
                    var ssl = new SslStream(_stream, leaveInnerStreamOpen: false);
                    await ssl.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
                    {
                        ServerCertificate = _options.Certificate,
                        EnabledSslProtocols = SslProtocols.Tls12 | SslProtocols.Tls13,
                        ClientCertificateRequired = false,
                    }, ct);
                    _stream = ssl;
                    _info.Tls = true;
                    _structured = false; _metaExport = null; _metaAllocation = false; // STARTTLS resets earlier state (proto.md)
                    break;
                case NbdOption.StructuredReply when !Xapi:
                    if (length != 0) { await ReplyAsync(option, NbdOptionReply.ErrInvalid, "STRUCTURED_REPLY takes no data", ct); break; }
                    _structured = true;
                    await ReplyAsync(option, NbdOptionReply.Ack, (string?)null, ct);
                    break;
                case NbdOption.SetMetaContext when !Xapi:
                case NbdOption.ListMetaContext when !Xapi:
                    await MetaContextAsync(opt, data, ct);
                    break;
                case NbdOption.Info when !Xapi:
                case NbdOption.Go when !Xapi:
                {
                    var (export, name) = await InfoAsync(opt, data, ct);
                    if (opt == NbdOption.Go && export is not null) return (export, name);
                    break;
                }
                default:
                    await ReplyAsync(option, NbdOptionReply.ErrUnsup, Xapi ? null : $"option {option} is not supported", ct);
                    break;
            }
        }
    }

    private async Task MetaContextAsync(NbdOption opt, byte[] data, CancellationToken ct)
    {
        if (!TryParseMeta(data, out var export, out var queries))
        {
            await ReplyAsync((uint)opt, NbdOptionReply.ErrInvalid, "malformed meta context request", ct);
            return;
        }
        if (!_structured)
        {
            await ReplyAsync((uint)opt, NbdOptionReply.ErrInvalid, "negotiate NBD_OPT_STRUCTURED_REPLY first", ct);
            return;
        }
        bool wantAllocation = opt == NbdOption.ListMetaContext && queries.Count == 0
            || queries.Any(q => q == NbdProtocol.BaseAllocation || (opt == NbdOption.ListMetaContext && q == "base:"));
        if (wantAllocation)
        {
            var d = new List<byte>();
            NbdWire.WriteU32(d, 1);
            d.AddRange(Encoding.UTF8.GetBytes(NbdProtocol.BaseAllocation));
            await ReplyAsync((uint)opt, NbdOptionReply.MetaContext, d.ToArray(), ct);
        }
        if (opt == NbdOption.SetMetaContext) { _metaExport = export; _metaAllocation = wantAllocation; }
        await ReplyAsync((uint)opt, NbdOptionReply.Ack, (string?)null, ct);
    }

    private static bool TryParseMeta(byte[] data, out string export, out List<string> queries)
    {
        export = ""; queries = new();
        int pos = 0;
        if (!TryReadString(data, ref pos, out export)) return false;
        if (data.Length - pos < 4) return false;
        uint n = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(pos)); pos += 4;
        for (uint i = 0; i < n; i++)
        {
            if (!TryReadString(data, ref pos, out var q)) return false;
            queries.Add(q);
        }
        return pos == data.Length;
    }

    private static bool TryReadString(byte[] data, ref int pos, out string s)
    {
        s = "";
        if (data.Length - pos < 4) return false;
        uint len = BinaryPrimitives.ReadUInt32BigEndian(data.AsSpan(pos)); pos += 4;
        if (len > 4096 || data.Length - pos < len) return false;
        s = Encoding.UTF8.GetString(data, pos, (int)len); pos += (int)len;
        return true;
    }

    private async Task<(NbdExport?, string)> InfoAsync(NbdOption opt, byte[] data, CancellationToken ct)
    {
        int pos = 0;
        if (!TryReadString(data, ref pos, out var name) || data.Length - pos < 2)
        {
            await ReplyAsync((uint)opt, NbdOptionReply.ErrInvalid, "malformed INFO/GO request", ct);
            return (null, "");
        }
        int count = BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(pos)); pos += 2;
        if (data.Length - pos != 2 * count)
        {
            await ReplyAsync((uint)opt, NbdOptionReply.ErrInvalid, "INFO/GO request count does not match its length", ct);
            return (null, "");
        }
        var requested = new HashSet<NbdInfoType>();
        for (int i = 0; i < count; i++) requested.Add((NbdInfoType)BinaryPrimitives.ReadUInt16BigEndian(data.AsSpan(pos + 2 * i)));
        var export = await _options.ResolveExport(new NbdExportRequest(name, _info, opt), ct);
        if (export is null)
        {
            await ReplyAsync((uint)opt, NbdOptionReply.ErrUnknown, $"no export named '{name}'", ct);
            return (null, "");
        }
        var info = new byte[14];
        BinaryPrimitives.WriteUInt16BigEndian(info, (ushort)NbdInfoType.Export);
        BinaryPrimitives.WriteUInt64BigEndian(info.AsSpan(2), (ulong)export.Source.Length);
        BinaryPrimitives.WriteUInt16BigEndian(info.AsSpan(10), (ushort)FlagsFor(export));
        await ReplyAsync((uint)opt, NbdOptionReply.Info, info.AsSpan(0, 12).ToArray(), ct);
        BinaryPrimitives.WriteUInt16BigEndian(info, (ushort)NbdInfoType.BlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(info.AsSpan(2), 1);
        BinaryPrimitives.WriteUInt32BigEndian(info.AsSpan(6), (uint)export.PreferredBlockSize);
        BinaryPrimitives.WriteUInt32BigEndian(info.AsSpan(10), (uint)export.MaximumPayload);
        await ReplyAsync((uint)opt, NbdOptionReply.Info, info, ct);
        if (requested.Contains(NbdInfoType.Name))
        {
            var d = new List<byte>(); NbdWire.WriteU16(d, (ushort)NbdInfoType.Name); d.AddRange(Encoding.UTF8.GetBytes(name));
            await ReplyAsync((uint)opt, NbdOptionReply.Info, d.ToArray(), ct);
        }
        if (requested.Contains(NbdInfoType.Description) && export.Description is not null)
        {
            var d = new List<byte>(); NbdWire.WriteU16(d, (ushort)NbdInfoType.Description); d.AddRange(Encoding.UTF8.GetBytes(export.Description));
            await ReplyAsync((uint)opt, NbdOptionReply.Info, d.ToArray(), ct);
        }
        await ReplyAsync((uint)opt, NbdOptionReply.Ack, (string?)null, ct);
        return (export, name);
    }

    private NbdTransmissionFlags FlagsFor(NbdExport export)
    {
        if (Xapi) return NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.ReadOnly;
        var f = NbdTransmissionFlags.HasFlags | NbdTransmissionFlags.SendFlush;
        if (export.Target is null) f |= NbdTransmissionFlags.ReadOnly;
        else f |= NbdTransmissionFlags.SendFua | NbdTransmissionFlags.SendTrim | NbdTransmissionFlags.SendWriteZeroes;
        if (_structured) f |= NbdTransmissionFlags.SendDf;
        if (export.MultiConn) f |= NbdTransmissionFlags.CanMultiConn;
        return f;
    }

    private Task ReplyAsync(uint option, NbdOptionReply reply, string? message, CancellationToken ct)
        => ReplyAsync(option, reply, message is null ? [] : Encoding.UTF8.GetBytes(message), ct);

    private async Task ReplyAsync(uint option, NbdOptionReply reply, byte[] data, CancellationToken ct)
        => await WriteAsync(NbdWire.OptionReply(option, reply, data), ct);

    /// <summary>Writes and counts bytes; past the hook's drop threshold the connection is cut mid-stream.</summary>
    private async ValueTask WriteAsync(ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        if (_dropAfter is { } limit && _bytesSent + data.Length > limit)
        {
            int allowed = (int)Math.Max(0, limit - _bytesSent);
            if (allowed > 0) await _stream.WriteAsync(data[..allowed], ct);
            await _stream.FlushAsync(ct);
            _socket.Shutdown(SocketShutdown.Both);
            _socket.Close();
            throw new ConnectionDroppedException();
        }
        await _stream.WriteAsync(data, ct);
        _bytesSent += data.Length;
    }

    /// <summary>Raised internally when a fault hook drops the connection on purpose.</summary>
    private sealed class ConnectionDroppedException : Exception { }
}
