using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using VProtect.Core.IO;
using VProtect.Core.Nbd;

namespace VProtect.Core.Tests.Nbd;

internal static class NbdTestSupport
{
    public static readonly TimeSpan TestTimeout = TimeSpan.FromSeconds(30);

    public static CancellationToken Timeout() => new CancellationTokenSource(TestTimeout).Token;

    /// <summary>A disk with random data in a few regions (unaligned ends included) and holes elsewhere.</summary>
    public static async Task<SparseMemoryDisk> RandomSparseDiskAsync(long size, int seed = 7)
    {
        var disk = new SparseMemoryDisk(size);
        var rng = new Random(seed);
        long[] starts = [0, size / 3 + 12345, size / 2, size - 100_000];
        foreach (var s in starts)
        {
            var data = new byte[Math.Min(300_000, size - s)];
            rng.NextBytes(data);
            await disk.WriteAsync(s, data, default);
        }
        return disk;
    }

    public static async Task<byte[]> ReadAllAsync(IBlockSource source)
    {
        var all = new byte[source.Length];
        await source.ReadAsync(0, all, default);
        return all;
    }

    public static NbdServer StartServer(IBlockSource source, IBlockTarget? target = null, Func<NbdServerOptions, NbdServerOptions>? configure = null, string name = "disk")
    {
        var options = new NbdServerOptions
        {
            EndPoint = new IPEndPoint(IPAddress.Loopback, 0),
            ResolveExport = (req, _) => ValueTask.FromResult(req.Name == name ? new NbdExport(source, target) : null),
        };
        return NbdServer.Start(configure?.Invoke(options) ?? options);
    }

    public static NbdClientOptions ClientOptions(NbdServer server, string name = "disk")
        => new(new IPEndPoint(IPAddress.Loopback, server.Port), name) { RequestTimeout = TimeSpan.FromSeconds(20), ConnectTimeout = TimeSpan.FromSeconds(20) };

    /// <summary>A self-signed server certificate for CN/SAN <paramref name="dnsName"/>, usable by SslStream on Linux and Windows.</summary>
    public static X509Certificate2 SelfSignedCertificate(string dnsName = "nbd.test")
    {
        using var key = RSA.Create(2048);
        var req = new CertificateRequest($"CN={dnsName}", key, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1);
        var san = new SubjectAlternativeNameBuilder();
        san.AddDnsName(dnsName);
        req.CertificateExtensions.Add(san.Build());
        req.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension([new Oid("1.3.6.1.5.5.7.3.1")], false));
        using var cert = req.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(30));
        // Round-trip through PFX so the private key is usable by SslStream everywhere.
        return X509CertificateLoader.LoadPkcs12(cert.Export(X509ContentType.Pfx), null);
    }

    public static string Pem(X509Certificate2 cert) => cert.ExportCertificatePem();
}
