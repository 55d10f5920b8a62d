using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography.X509Certificates;

namespace VProtect.Core.Nbd;

/// <summary>
/// How the client secures a connection. Trust is pinned (the PEM <c>VDI.get_nbd_info</c> returns, or a CA file),
/// never the machine's store; the name checked is the certificate subject, not the IP connected to.
/// </summary>
public sealed class NbdTlsOptions
{
    private NbdTlsOptions(X509Certificate2Collection? trusted, string? serverName)
    {
        TrustedCertificates = trusted;
        ServerName = serverName;
    }

    /// <summary>No TLS (xapi-nbd on an <c>insecure_nbd</c> network, or a local test server).</summary>
    public static NbdTlsOptions Insecure { get; } = new(null, null);

    /// <summary>Trusts exactly the certificate(s) in <paramref name="pem"/> (a self-signed host certificate or its CA) for <paramref name="subject"/>.</summary>
    public static NbdTlsOptions Pinned(string pem, string subject)
    {
        ArgumentException.ThrowIfNullOrEmpty(pem);
        ArgumentException.ThrowIfNullOrEmpty(subject);
        var certs = new X509Certificate2Collection();
        certs.ImportFromPem(pem);
        if (certs.Count == 0) throw new ArgumentException("The pinned PEM holds no certificate; pass the 'cert' field of VDI.get_nbd_info.", nameof(pem));
        return new NbdTlsOptions(certs, subject);
    }

    /// <summary>Trusts the CA certificate(s) in a PEM file (nbdkit/qemu-nbd setups) for host name <paramref name="serverName"/>.</summary>
    public static NbdTlsOptions FromCaFile(string caFile, string serverName) => Pinned(File.ReadAllText(caFile), serverName);

    public bool Enabled => TrustedCertificates is not null;
    public X509Certificate2Collection? TrustedCertificates { get; }
    public string? ServerName { get; }
    public SslProtocols Protocols { get; init; } = SslProtocols.Tls12 | SslProtocols.Tls13;

    internal SslClientAuthenticationOptions CreateAuthenticationOptions() => new()
    {
        TargetHost = ServerName,
        EnabledSslProtocols = Protocols,
        CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
        RemoteCertificateValidationCallback = (_, cert, _, errors) => Validate(cert, errors),
    };

    /// <summary>Accepts the peer only if its chain ends in a pinned certificate and its name matches.</summary>
    internal bool Validate(X509Certificate? certificate, SslPolicyErrors errors)
    {
        if (certificate is null || TrustedCertificates is null) return false;
        if ((errors & (SslPolicyErrors.RemoteCertificateNameMismatch | SslPolicyErrors.RemoteCertificateNotAvailable)) != 0) return false;
        using var leaf = new X509Certificate2(certificate);
        foreach (var pinned in TrustedCertificates)
            if (pinned.RawDataMemory.Span.SequenceEqual(leaf.RawDataMemory.Span)) return true;
        using var chain = new X509Chain();
        chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
        chain.ChainPolicy.CustomTrustStore.AddRange(TrustedCertificates);
        chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
        return chain.Build(leaf);
    }
}
