using System.Net;
using System.Security.Cryptography.X509Certificates;
using VProtect.Core.IO;

namespace VProtect.Core.Nbd;

/// <summary>TLS policy of one server connection (decided when it is accepted).</summary>
public enum NbdTlsMode
{
    /// <summary>No TLS: STARTTLS is answered ERR_POLICY.</summary>
    Off,
    /// <summary>STARTTLS accepted, plain connections served too.</summary>
    Optional,
    /// <summary>FORCEDTLS: every option but STARTTLS answered TLS_REQD; EXPORT_NAME before TLS closes the connection.</summary>
    Required,
    /// <summary>The connection is closed at once (xapi-nbd when networks have both or neither NBD purpose).</summary>
    RefuseConnection,
}

/// <summary>Who is connected, passed to the per-connection decisions.</summary>
public sealed record NbdConnectionInfo(long Id, EndPoint? RemoteEndPoint)
{
    /// <summary>True once STARTTLS succeeded on this connection.</summary>
    public bool Tls { get; internal set; }
}

/// <summary>A client asked for an export (GO, INFO or EXPORT_NAME).</summary>
public sealed record NbdExportRequest(string Name, NbdConnectionInfo Connection, NbdOption Option);

/// <summary>What a server serves under one name: read-only (<see cref="Target"/> null) or read-write.</summary>
public sealed class NbdExport
{
    public NbdExport(IBlockSource source, IBlockTarget? target = null)
    {
        Source = source ?? throw new ArgumentNullException(nameof(source));
        Target = target;
        if (target is not null && target.Length != source.Length) throw new ArgumentException("Source and target of an export must be the same size.", nameof(target));
    }

    public IBlockSource Source { get; }
    public IBlockTarget? Target { get; }
    public string? Description { get; init; }
    /// <summary>Advertise CAN_MULTI_CONN (the source/target must be safe to use from several connections).</summary>
    public bool MultiConn { get; init; } = true;
    /// <summary>Largest READ/WRITE payload accepted (NBD_INFO_BLOCK_SIZE maximum).</summary>
    public int MaximumPayload { get; init; } = NbdProtocol.DefaultMaxPayload;
    public int PreferredBlockSize { get; init; } = 4096;
    /// <summary>Called when a connection serving this export ends (the simulator unplugs its dom0 VBD here).</summary>
    public Func<ValueTask>? OnClosed { get; init; }
}

/// <summary>Description of one transmission request, for hooks.</summary>
public readonly record struct NbdRequestInfo(NbdConnectionInfo Connection, NbdCommand Command, long Offset, uint Length);

/// <summary>Fault injection and observation points (the simulator's latency, drops and read errors).</summary>
public interface INbdServerHooks
{
    /// <summary>Called before a request is served; await a delay here to add latency per request.</summary>
    ValueTask OnRequestAsync(NbdRequestInfo request, CancellationToken cancellationToken) => ValueTask.CompletedTask;
    /// <summary>An NBD errno to fail this READ with instead of serving data (0 = serve normally).</summary>
    int GetReadError(NbdRequestInfo request) => 0;
    /// <summary>Total bytes this connection may send before it is dropped mid-stream (null = unlimited).</summary>
    long? DropConnectionAfterBytes(NbdConnectionInfo connection) => null;
}

/// <summary>Everything an <see cref="NbdServer"/> decides, most of it per connection.</summary>
public sealed record NbdServerOptions
{
    /// <summary>TCP (<see cref="IPEndPoint"/>, port 0 for any) or <see cref="System.Net.Sockets.UnixDomainSocketEndPoint"/>.</summary>
    public required EndPoint EndPoint { get; init; }
    /// <summary>Resolves an export name to what is served; null refuses it (ERR_UNKNOWN, or a closed connection after EXPORT_NAME).</summary>
    public required Func<NbdExportRequest, CancellationToken, ValueTask<NbdExport?>> ResolveExport { get; init; }
    /// <summary>TLS policy, asked for each accepted connection (xapi-nbd reads the network purposes here).</summary>
    public Func<NbdConnectionInfo, NbdTlsMode> TlsMode { get; init; } = _ => NbdTlsMode.Off;
    public X509Certificate2? Certificate { get; init; }
    /// <summary>Behave exactly as xapi-nbd: EXPORT_NAME only, simple replies, read-only 0x0003, 512-byte alignment, one request at a time.</summary>
    public bool XapiNbdMode { get; init; }
    /// <summary>Connections served at once; more are closed on accept (xapi-nbd: 16 per host).</summary>
    public int MaxConnections { get; init; } = 16;
    /// <summary>Names answered to NBD_OPT_LIST (null = ERR_POLICY, as xapi-nbd).</summary>
    public Func<IReadOnlyList<string>>? ListExports { get; init; }
    public INbdServerHooks? Hooks { get; init; }
    /// <summary>Requests served concurrently per connection outside xapi-nbd mode.</summary>
    public int MaxRequestsPerConnection { get; init; } = 16;
    /// <summary>Option haggling (and the TLS handshake) must finish within this.</summary>
    public TimeSpan HandshakeTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>An idle connection in transmission is closed after this (null = never).</summary>
    public TimeSpan? IdleTimeout { get; init; }
    /// <summary>Told when a connection ends because ResolveExport, a hook or OnClosed threw (for logging); the server keeps running.</summary>
    public Action<NbdConnectionInfo, Exception>? OnConnectionError { get; init; }
}
