using System.Net;

namespace VProtect.Core.Nbd;

/// <summary>Where and how an <see cref="NbdClient"/> connects, and how hard it pipelines.</summary>
public sealed record NbdClientOptions
{
    public NbdClientOptions(EndPoint endPoint, string exportName = "")
    {
        EndPoint = endPoint;
        ExportName = exportName;
    }

    /// <summary>
    /// Options for one record of <c>VDI.get_nbd_info</c> (fields address, port, exportname, cert, subject): TLS pinned to
    /// <paramref name="cert"/> and <paramref name="subject"/>, or no TLS when cert is empty (an <c>insecure_nbd</c> network).
    /// </summary>
    public static NbdClientOptions FromXapiNbdInfo(string address, long port, string exportName, string? cert, string? subject)
    {
        ArgumentException.ThrowIfNullOrEmpty(address);
        ArgumentOutOfRangeException.ThrowIfLessThan(port, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(port, 65535);
        EndPoint endPoint = IPAddress.TryParse(address, out var ip) ? new IPEndPoint(ip, (int)port) : new DnsEndPoint(address, (int)port);
        var tls = string.IsNullOrWhiteSpace(cert) ? NbdTlsOptions.Insecure
            : NbdTlsOptions.Pinned(cert, string.IsNullOrEmpty(subject) ? throw new ArgumentException("get_nbd_info gave a certificate without a subject.", nameof(subject)) : subject);
        return new NbdClientOptions(endPoint, exportName) { Tls = tls };
    }

    /// <summary><see cref="IPEndPoint"/>, <see cref="DnsEndPoint"/> or <see cref="System.Net.Sockets.UnixDomainSocketEndPoint"/>.</summary>
    public EndPoint EndPoint { get; init; }
    /// <summary>For xapi-nbd: the <c>exportname</c> of <c>VDI.get_nbd_info</c> (<c>/uuid?session_id=...</c>).</summary>
    public string ExportName { get; init; }
    public NbdTlsOptions Tls { get; init; } = NbdTlsOptions.Insecure;

    /// <summary>Connections opened when the server allows several (CAN_MULTI_CONN, or a read-only export). xapi-nbd allows 16 per host.</summary>
    public int Connections { get; init; } = 4;
    /// <summary>Requests in flight per connection (1 = one request at a time, the naive client).</summary>
    public int MaxRequestsInFlight { get; init; } = 16;
    /// <summary>Bytes per READ request; lowered to the server's maximum block size.</summary>
    public int RequestSize { get; init; } = 1024 * 1024;
    /// <summary>Cap on bytes read but not yet handed to the consumer, over all connections: the memory bound.</summary>
    public long MaxBytesInFlight { get; init; } = 64L * 1024 * 1024;

    /// <summary>Negotiate structured replies and <c>base:allocation</c> (skip holes) when the server offers them.</summary>
    public bool UseStructuredReplies { get; init; } = true;
    public bool UseBlockStatus { get; init; } = true;

    public TimeSpan ConnectTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>A connection with requests pending and no byte received for this long is considered dead.</summary>
    public TimeSpan RequestTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>How many times a request is retried on a fresh connection after the connection dropped.</summary>
    public int MaxRetries { get; init; } = 3;

    internal void Validate()
    {
        ArgumentNullException.ThrowIfNull(EndPoint);
        ArgumentNullException.ThrowIfNull(ExportName);
        if (System.Text.Encoding.UTF8.GetByteCount(ExportName) > 4096) throw new ArgumentException("NBD export names are at most 4096 bytes.", nameof(ExportName));
        ArgumentOutOfRangeException.ThrowIfLessThan(Connections, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxRequestsInFlight, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(RequestSize, 512);
        ArgumentOutOfRangeException.ThrowIfLessThan(MaxBytesInFlight, RequestSize);
        ArgumentOutOfRangeException.ThrowIfNegative(MaxRetries);
    }
}

/// <summary>What the server told us about the export during negotiation.</summary>
public sealed record NbdExportInfo
{
    public required long Size { get; init; }
    public required NbdTransmissionFlags Flags { get; init; }
    /// <summary>Offsets and lengths of requests are multiples of this (512 when the server gave no block size).</summary>
    public int MinimumBlockSize { get; init; } = 512;
    public int PreferredBlockSize { get; init; } = 4096;
    public int MaximumPayload { get; init; } = NbdProtocol.DefaultMaxPayload;
    /// <summary>True when the server gave NBD_INFO_BLOCK_SIZE.</summary>
    public bool HasBlockSizeInfo { get; init; }
    public bool StructuredReplies { get; init; }
    /// <summary>Context id of <c>base:allocation</c>, or null when block status is unavailable.</summary>
    public uint? AllocationContextId { get; init; }
    /// <summary>True when entered with NBD_OPT_GO; false after the EXPORT_NAME fallback (xapi-nbd).</summary>
    public bool NegotiatedWithGo { get; init; }
    public bool Tls { get; init; }
    public string? Description { get; init; }

    public bool ReadOnly => (Flags & NbdTransmissionFlags.ReadOnly) != 0;
    public bool CanMultiConn => (Flags & NbdTransmissionFlags.CanMultiConn) != 0;
}
