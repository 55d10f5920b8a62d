using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using VProtect.Core.Xapi;
using Xunit;

namespace VProtect.Core.Tests.Xapi;

public class XapiTlsTests
{
    private static CancellationToken Bounded() => new CancellationTokenSource(TimeSpan.FromSeconds(20)).Token;

    private static X509Certificate2 SelfSigned()
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest("CN=xs-master.test", key, HashAlgorithmName.SHA256);
        var san = new SubjectAlternativeNameBuilder();
        san.AddIpAddress(System.Net.IPAddress.Loopback);
        request.CertificateExtensions.Add(san.Build());
        using var cert = request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-1), DateTimeOffset.UtcNow.AddDays(1));
        // Re-load from PKCS#12 so the private key is usable by SslStream on every platform.
        return X509CertificateLoader.LoadPkcs12(cert.Export(X509ContentType.Pfx), null);
    }

    private static XapiConnectionOptions Options(Action<XapiConnectionOptions> configure)
    {
        var o = new XapiConnectionOptions { Timeout = TimeSpan.FromSeconds(10) };
        configure(o);
        return o;
    }

    [Fact]
    public async Task Untrusted_certificate_is_refused_by_default_with_a_tls_message()
    {
        using var cert = SelfSigned();
        await using var fake = new FakeXapi(cert).WithStandardPool();
        var ex = await Assert.ThrowsAsync<XapiConnectionException>(() =>
            XapiSession.LoginAsync(fake.Url, "root", "secret", Options(_ => { }), Bounded()));
        Assert.Contains("TLS", ex.Message);
        Assert.Contains($"127.0.0.1:{fake.Port}", ex.Message);
        Assert.Empty(fake.Calls); // nothing, not even the password, went over the untrusted channel
    }

    [Theory]
    [InlineData("sha256")]
    [InlineData("sha1")]
    [InlineData("sha256-colons-lower")]
    public async Task Pinned_thumbprint_is_accepted(string form)
    {
        using var cert = SelfSigned();
        await using var fake = new FakeXapi(cert).WithStandardPool();
        var pin = form switch
        {
            "sha256" => Convert.ToHexString(SHA256.HashData(cert.RawData)),
            "sha1" => cert.Thumbprint,
            _ => string.Join(":", Convert.ToHexString(SHA256.HashData(cert.RawData)).ToLowerInvariant().Chunk(2).Select(c => new string(c))),
        };
        await using var session = await XapiSession.LoginAsync(fake.Url, "root", "secret", Options(o => o.CertificateThumbprint = pin), Bounded());
        Assert.Equal("Fake pool", session.PoolName);
    }

    [Fact]
    public async Task Wrong_pin_is_refused_even_if_skip_is_not_set()
    {
        using var cert = SelfSigned();
        await using var fake = new FakeXapi(cert).WithStandardPool();
        var ex = await Assert.ThrowsAsync<XapiConnectionException>(() => XapiSession.LoginAsync(fake.Url, "root", "secret",
            Options(o => o.CertificateThumbprint = new string('A', 64)), Bounded()));
        Assert.Contains("pinned", ex.Message);
        Assert.Empty(fake.Calls);
    }

    [Fact]
    public async Task Skip_certificate_check_accepts_and_transfers_use_the_same_policy()
    {
        using var cert = SelfSigned();
        await using var fake = new FakeXapi(cert).WithStandardPool().WithTasks();
        fake.HttpHandler = async (req, ct) =>
        {
            await FakeHttpServer.WriteResponseAsync(req.Connection, 200, "OK", new[] { ("Connection", "close") }, null, ct);
            await req.Connection.WriteAsync("over-tls"u8.ToArray(), ct);
            fake.CompleteTask(req.Query["task_id"], "<value></value>");
            return false;
        };
        await using var session = await XapiSession.LoginAsync(fake.Url, "root", "secret",
            Options(o => { o.SkipCertificateCheck = true; o.TaskPollInterval = TimeSpan.FromMilliseconds(20); }), Bounded());
        await using var download = await new XapiHttpTransfer(session).ExportVmAsync("OpaqueRef:vm-1", ct: Bounded());
        using var copy = new MemoryStream();
        await download.Content.CopyToAsync(copy, Bounded());
        Assert.Equal("over-tls"u8.ToArray(), copy.ToArray());
        await download.CompleteAsync(Bounded());
    }

    [Fact]
    public async Task Transfers_refuse_an_untrusted_certificate_too()
    {
        using var cert = SelfSigned();
        await using var fake = new FakeXapi(cert).WithStandardPool().WithTasks();
        var pin = Convert.ToHexString(SHA256.HashData(cert.RawData));
        await using var session = await XapiSession.LoginAsync(fake.Url, "root", "secret", Options(o => o.CertificateThumbprint = pin), Bounded());
        // A 302 to a host with another certificate must not be followed blindly: the pin does not match there.
        using var otherCert = SelfSigned();
        await using var other = new FakeHttpServer((req, ct) => Task.FromResult(false), otherCert);
        fake.HttpHandler = async (req, ct) =>
        {
            await FakeHttpServer.WriteResponseAsync(req.Connection, 302, "Found", new[] { ("Location", new Uri(other.Url, req.Target).ToString()) }, Array.Empty<byte>(), ct);
            return false;
        };
        var ex = await Assert.ThrowsAsync<XapiConnectionException>(() => new XapiHttpTransfer(session).ExportVmAsync("OpaqueRef:vm-1", ct: Bounded()));
        Assert.Contains("TLS", ex.Message);
        Assert.Empty(fake.Tasks);
    }
}
