using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using System.Text.Json;
using VProtect.Core.IO;
using VProtect.Core.Nbd;
using Xunit;

namespace VProtect.Interop.Tests;

/// <summary>Our NBD server read by nbdinfo, nbdcopy and qemu-img over TCP, a Unix socket and TLS.</summary>
public class NbdServerInteropTests
{
    private static CancellationToken Timeout() => new CancellationTokenSource(TimeSpan.FromSeconds(45)).Token;

    /// <summary>24 MiB: random data in 1 MiB runs every 3 MiB (some unaligned), holes elsewhere.</summary>
    private static async Task<(SparseMemoryDisk Disk, string Hash)> DiskAsync()
    {
        var disk = new SparseMemoryDisk(24 << 20);
        var rng = new Random(5);
        var chunk = new byte[1 << 20];
        for (long pos = 0; pos < disk.Length; pos += 3L << 20)
        {
            rng.NextBytes(chunk);
            await disk.WriteAsync(pos, chunk, default);
        }
        var all = new byte[disk.Length];
        await disk.ReadAsync(0, all, default);
        return (disk, Convert.ToHexString(SHA256.HashData(all)));
    }

    private static NbdServer Serve(IBlockSource disk, EndPoint endPoint, Func<NbdServerOptions, NbdServerOptions>? configure = null, string name = "disk")
    {
        var o = new NbdServerOptions
        {
            EndPoint = endPoint,
            ResolveExport = (r, _) => ValueTask.FromResult(r.Name == name ? new NbdExport(disk) { Description = "test disk" } : null),
        };
        return NbdServer.Start(configure?.Invoke(o) ?? o);
    }

    private static async Task<string> RawFileAsync(TempDir dir, SparseMemoryDisk disk)
    {
        string path = dir.File("expected.raw");
        var all = new byte[disk.Length];
        await disk.ReadAsync(0, all, default);
        await File.WriteAllBytesAsync(path, all);
        return path;
    }

    [Fact]
    public async Task Nbdinfo_nbdcopy_and_qemu_img_read_our_server_over_tcp()
    {
        using var dir = new TempDir();
        var (disk, hash) = await DiskAsync();
        await using var server = Serve(disk, new IPEndPoint(IPAddress.Loopback, 0));
        string uri = $"nbd://127.0.0.1:{server.Port}/disk";

        var (exit, json, err) = await NbdPeers.RunAsync("nbdinfo", "libnbd-bin", ["--json", uri]);
        Assert.True(exit == 0, err);
        using (var doc = JsonDocument.Parse(json))
        {
            var export = doc.RootElement.GetProperty("exports")[0];
            Assert.Equal(disk.Length, export.GetProperty("export-size").GetInt64());
            Assert.True(export.GetProperty("is_read_only").GetBoolean());
            Assert.True(export.GetProperty("can_multi_conn").GetBoolean());
            Assert.Equal("test disk", export.GetProperty("description").GetString());
            Assert.Equal("newstyle-fixed", doc.RootElement.GetProperty("protocol").GetString());
            Assert.True(doc.RootElement.GetProperty("structured").GetBoolean());
        }
        Assert.Equal(hash, await NbdPeers.NbdcopyHashAsync(uri));

        string expected = await RawFileAsync(dir, disk);
        (exit, _, err) = await NbdPeers.RunAsync("qemu-img", "qemu-utils", ["compare", "-f", "raw", "-F", "raw", expected, uri]);
        Assert.True(exit == 0, $"qemu-img compare: {exit} {err}");
        string converted = dir.File("converted.raw");
        (exit, _, err) = await NbdPeers.RunAsync("qemu-img", "qemu-utils", ["convert", "-f", "raw", "-O", "raw", uri, converted]);
        Assert.True(exit == 0, err);
        Assert.Equal(hash, Convert.ToHexString(SHA256.HashData(await File.ReadAllBytesAsync(converted))));
    }

    [Fact]
    public async Task Nbdinfo_map_over_a_unix_socket_matches_the_holes_we_report()
    {
        using var dir = new TempDir();
        var (disk, hash) = await DiskAsync();
        string socket = dir.File("ours.sock");
        await using var server = Serve(disk, new UnixDomainSocketEndPoint(socket));
        string uri = NbdPeers.UnixUri(socket).Replace("nbd+unix:///", "nbd+unix:///disk");
        Assert.Equal(hash, await NbdPeers.NbdcopyHashAsync(uri));

        var (exit, json, err) = await NbdPeers.RunAsync("nbdinfo", "libnbd-bin", ["--map", "--json", uri]);
        Assert.True(exit == 0, err);
        var data = new List<Extent>();
        long covered = 0;
        foreach (var e in JsonDocument.Parse(json).RootElement.EnumerateArray())
        {
            long offset = e.GetProperty("offset").GetInt64(), length = e.GetProperty("length").GetInt64();
            int type = e.GetProperty("type").GetInt32();
            Assert.Equal(covered, offset);
            covered += length;
            Assert.True(type is 0 or 3, $"type {type} at {offset}");
            if (type == 0)
            {
                if (data.Count > 0 && data[^1].End == offset) data[^1] = data[^1] with { Length = data[^1].Length + length };
                else data.Add(new Extent(offset, length));
            }
        }
        Assert.Equal(disk.Length, covered);
        var ours = new List<Extent>();
        await foreach (var e in disk.GetAllocatedExtentsAsync(0, disk.Length, default)) ours.Add(e);
        Assert.Equal(ours, data);
    }

    [Fact]
    public async Task Libnbd_and_qemu_read_our_server_over_tls()
    {
        using var dir = new TempDir();
        string pki = await TestCertificates.CreateAsync(dir);
        using var pem = X509Certificate2.CreateFromPemFile(Path.Combine(pki, "server-cert.pem"), Path.Combine(pki, "server-key.pem"));
        using var cert = X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pfx), null);
        var (disk, hash) = await DiskAsync();
        await using var server = Serve(disk, new IPEndPoint(IPAddress.Loopback, 0), o => o with { TlsMode = _ => NbdTlsMode.Required, Certificate = cert });
        string uri = $"nbds://localhost:{server.Port}/disk?tls-certificates={pki}";

        var (exit, json, err) = await NbdPeers.RunAsync("nbdinfo", "libnbd-bin", ["--json", uri]);
        Assert.True(exit == 0, err);
        Assert.True(JsonDocument.Parse(json).RootElement.GetProperty("TLS").GetBoolean());
        Assert.Equal(hash, await NbdPeers.NbdcopyHashAsync(uri));

        // A plain client is refused: nothing is served without TLS.
        (exit, _, _) = await NbdPeers.RunAsync("nbdinfo", "libnbd-bin", [$"nbd://localhost:{server.Port}/disk"]);
        Assert.NotEqual(0, exit);

        string expected = await RawFileAsync(dir, disk);
        (exit, _, err) = await NbdPeers.RunAsync("qemu-img", "qemu-utils", ["compare",
            "--object", $"tls-creds-x509,id=tls0,endpoint=client,dir={pki}",
            "--image-opts", $"driver=raw,file.driver=file,file.filename={expected}",
            $"driver=raw,file.driver=nbd,file.server.type=inet,file.server.host=localhost,file.server.port={server.Port},file.export=disk,file.tls-creds=tls0"]);
        Assert.True(exit == 0, $"qemu-img compare over TLS: {exit} {err}");
    }

    [Fact]
    public async Task Xapi_mode_is_read_by_nbdinfo_through_export_name_and_by_our_client()
    {
        var (disk, hash) = await DiskAsync();
        const string name = "/0b6c8a54-7d5e-4b1f-9a51-3f0e2c7d9a11?session_id=OpaqueRef:abc";
        await using var server = Serve(disk, new IPEndPoint(IPAddress.Loopback, 0), o => o with { XapiNbdMode = true }, name);
        // libnbd tries GO, gets ERR_UNSUP and falls back to NBD_OPT_EXPORT_NAME, as with a real xapi-nbd.
        string uri = $"nbd://127.0.0.1:{server.Port}/{Uri.EscapeDataString(name)}";
        var (exit, json, err) = await NbdPeers.RunAsync("nbdinfo", "libnbd-bin", ["--json", uri]);
        Assert.True(exit == 0, err);
        using (var doc = JsonDocument.Parse(json))
        {
            Assert.Equal("newstyle-fixed", doc.RootElement.GetProperty("protocol").GetString());
            Assert.False(doc.RootElement.GetProperty("structured").GetBoolean()); // simple replies only
            var export = doc.RootElement.GetProperty("exports")[0];
            Assert.True(export.GetProperty("is_read_only").GetBoolean());
            Assert.False(export.GetProperty("can_multi_conn").GetBoolean());
            Assert.Equal(disk.Length, export.GetProperty("export-size").GetInt64());
        }
        Assert.Equal(hash, await NbdPeers.NbdcopyHashAsync(uri));

        await using var client = await NbdClient.ConnectAsync(new NbdClientOptions(new IPEndPoint(IPAddress.Loopback, server.Port), name), Timeout());
        Assert.False(client.Export.NegotiatedWithGo);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        await client.ReadExtentsAsync([new Extent(0, disk.Length)], (_, d, _) => { sha.AppendData(d.Span); return ValueTask.CompletedTask; }, cancellationToken: Timeout());
        Assert.Equal(hash, Convert.ToHexString(sha.GetHashAndReset()));
    }
}
