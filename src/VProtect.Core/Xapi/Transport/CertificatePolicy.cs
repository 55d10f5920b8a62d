using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace VProtect.Core.Xapi.Transport;

/// <summary>One place that decides whether a server certificate is acceptable, shared by RPC and HTTP transfers.</summary>
internal sealed class CertificatePolicy
{
    private readonly bool _skip;
    private readonly string? _pin;

    public CertificatePolicy(XapiConnectionOptions options)
    {
        _skip = options.SkipCertificateCheck;
        _pin = NormalizeThumbprint(options.CertificateThumbprint);
    }

    /// <summary>The last rejection reason, so connection errors can say why TLS failed.</summary>
    public string? LastRejection { get; private set; }

    public bool Validate(object? sender, X509Certificate? certificate, X509Chain? chain, SslPolicyErrors errors)
    {
        if (_skip) return true;
        if (_pin is not null)
        {
            if (certificate is null) { LastRejection = "the server sent no certificate"; return false; }
            var der = certificate.GetRawCertData();
            var sha1 = Convert.ToHexString(SHA1.HashData(der));
            var sha256 = Convert.ToHexString(SHA256.HashData(der));
            if (string.Equals(_pin, sha1, StringComparison.Ordinal) || string.Equals(_pin, sha256, StringComparison.Ordinal))
                return true;
            LastRejection = $"the server certificate (SHA-256 {sha256}) does not match the pinned thumbprint";
            return false;
        }
        if (errors == SslPolicyErrors.None) return true;
        LastRejection = $"the server certificate is not trusted ({errors}); install its CA, pin its thumbprint, or skip the check explicitly";
        return false;
    }

    internal static string? NormalizeThumbprint(string? thumbprint)
    {
        if (string.IsNullOrWhiteSpace(thumbprint)) return null;
        var hex = new string(thumbprint.Where(c => !char.IsWhiteSpace(c) && c != ':' && c != '-').ToArray()).ToUpperInvariant();
        if (hex.Length is not (40 or 64) || !hex.All(Uri.IsHexDigit))
            throw new ArgumentException("CertificateThumbprint must be the SHA-1 (40 hex digits) or SHA-256 (64 hex digits) of the server certificate.");
        return hex;
    }
}
