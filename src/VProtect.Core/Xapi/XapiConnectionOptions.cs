namespace VProtect.Core.Xapi;

/// <summary>Which wire protocol a session speaks. Both reach the same API; JSON-RPC is the modern default.</summary>
public enum XapiProtocol { JsonRpc, XmlRpc }

/// <summary>How to reach a XAPI host. The defaults validate TLS certificates normally.</summary>
public sealed class XapiConnectionOptions
{
    public XapiProtocol Protocol { get; set; } = XapiProtocol.JsonRpc;

    /// <summary>Accept any server certificate. An explicit, insecure choice (self-signed lab hosts).</summary>
    public bool SkipCertificateCheck { get; set; }

    /// <summary>Pin: SHA-1 or SHA-256 hex of the server certificate (colons/spaces ignored). When set, only that certificate is accepted.</summary>
    public string? CertificateThumbprint { get; set; }

    /// <summary>Per-call timeout for RPCs and for connecting/response headers of HTTP transfers (not their whole body).</summary>
    public TimeSpan Timeout { get; set; } = TimeSpan.FromSeconds(60);

    /// <summary>Sent as login's originator so host admins can see who holds sessions.</summary>
    public string Originator { get; set; } = "VProtect.PowerShell";

    /// <summary>Longest pause between two polls of a running task (polls start faster and back off to this).</summary>
    public TimeSpan TaskPollInterval { get; set; } = TimeSpan.FromSeconds(1);

    internal XapiConnectionOptions Clone() => (XapiConnectionOptions)MemberwiseClone();
}
