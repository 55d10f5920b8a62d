using System.Security.Cryptography;
using VProtect.Core.IO;
using VProtect.Core.Nbd;
using Xunit;

namespace VProtect.Interop.Tests;

/// <summary>Our NBD client against nbdkit and qemu-nbd; contents compared by hash with nbdcopy or the source file.</summary>
public class NbdClientInteropTests
{
    private static CancellationToken Timeout() => new CancellationTokenSource(TimeSpan.FromSeconds(45)).Token;

    private static NbdClientOptions Options(System.Net.EndPoint ep, string export = "") => new(ep, export)
    {
        ConnectTimeout = TimeSpan.FromSeconds(30), RequestTimeout = TimeSpan.FromSeconds(60), RequestSize = 256 * 1024,
    };

    /// <summary>Reads the whole export in order through ReadExtentsAsync and hashes it; also counts bytes delivered.</summary>
    private static async Task<(string Hash, long Delivered)> HashWithOurClientAsync(NbdClient client)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long next = 0;
        await client.ReadExtentsAsync([new Extent(0, client.Size)], (o, d, _) =>
        {
            Assert.Equal(next, o);
            sha.AppendData(d.Span);
            next = o + d.Length;
            return ValueTask.CompletedTask;
        }, cancellationToken: Timeout());
        Assert.Equal(client.Size, next);
        return (Convert.ToHexString(sha.GetHashAndReset()), next);
    }

    [Fact]
    public async Task Reads_nbdkit_sparse_random_identically_to_nbdcopy_skipping_holes()
    {
        using var dir = new TempDir();
        await using var nbdkit = await NbdkitProcess.StartAsync(dir, "sparse-random", "64M", "seed=4242", "percent=50");
        await using var client = await NbdClient.ConnectAsync(Options(nbdkit.EndPoint), Timeout());
        Assert.True(client.Export.NegotiatedWithGo);
        Assert.True(client.Export.StructuredReplies);
        Assert.NotNull(client.Export.AllocationContextId);
        var holes = new List<NbdAllocationExtent>();
        await foreach (var a in client.GetAllocationAsync(0, client.Size, Timeout())) if (a.ReadsAsZeroes) holes.Add(a);
        Assert.NotEmpty(holes); // the map is used, so holes are not read
        var (ours, _) = await HashWithOurClientAsync(client);
        Assert.Equal(await NbdPeers.NbdcopyHashAsync(nbdkit.Uri()), ours);
    }

    [Fact]
    public async Task Writes_then_reads_nbdkit_memory_and_nbdcopy_sees_the_same_bytes()
    {
        using var dir = new TempDir();
        await using var nbdkit = await NbdkitProcess.StartAsync(dir, "memory", "32M");
        var data = new byte[32 << 20];
        new Random(11).NextBytes(data.AsSpan(1 << 20, 5 << 20));
        new Random(12).NextBytes(data.AsSpan(20 << 20, 3 << 20));
        await using (var client = await NbdClient.ConnectAsync(Options(nbdkit.EndPoint), Timeout()))
        {
            Assert.False(client.Export.ReadOnly);
            Assert.True(client.Export.CanMultiConn);
            await client.WriteAsync(1 << 20, data.AsMemory(1 << 20, 5 << 20), Timeout());
            await client.WriteAsync(20 << 20, data.AsMemory(20 << 20, 3 << 20), Timeout());
            await client.WriteZeroesAsync(2 << 20, 4096, Timeout());
            data.AsSpan(2 << 20, 4096).Clear();
            await client.FlushAsync(Timeout());
            var (ours, _) = await HashWithOurClientAsync(client);
            Assert.Equal(Convert.ToHexString(SHA256.HashData(data)), ours);
        }
        Assert.Equal(Convert.ToHexString(SHA256.HashData(data)), await NbdPeers.NbdcopyHashAsync(nbdkit.Uri()));
    }

    [Fact]
    public async Task Reads_nbdkit_data_plugin_bytes_exactly()
    {
        using var dir = new TempDir();
        await using var nbdkit = await NbdkitProcess.StartAsync(dir, "data", "1 2 3 4 @0x100000 0xAA 0xBB @0x1FFFFF 9", "size=2M");
        await using var client = await NbdClient.ConnectAsync(Options(nbdkit.EndPoint), Timeout());
        var all = new byte[client.Size];
        await client.ReadAsync(0, all, Timeout());
        var expected = new byte[2 << 20];
        expected[0] = 1; expected[1] = 2; expected[2] = 3; expected[3] = 4;
        expected[0x100000] = 0xAA; expected[0x100001] = 0xBB; expected[0x1FFFFF] = 9;
        Assert.Equal(expected, all);
    }

    [Fact]
    public async Task Reads_nbdkit_without_structured_replies()
    {
        using var dir = new TempDir();
        await using var nbdkit = await NbdkitProcess.StartAsync(dir, "--no-sr", "sparse-random", "16M", "seed=7", "percent=50");
        await using var client = await NbdClient.ConnectAsync(Options(nbdkit.EndPoint), Timeout());
        Assert.False(client.Export.StructuredReplies);
        Assert.Null(client.Export.AllocationContextId);
        var (ours, delivered) = await HashWithOurClientAsync(client);
        Assert.Equal(16L << 20, delivered);
        Assert.Equal(await NbdPeers.NbdcopyHashAsync(nbdkit.Uri()), ours);
    }

    [Fact]
    public async Task Reads_nbdkit_with_the_delay_filter_identically()
    {
        using var dir = new TempDir();
        await using var nbdkit = await NbdkitProcess.StartAsync(dir, "--filter=delay", "sparse-random", "16M", "seed=8", "percent=50", "rdelay=20ms");
        await using var client = await NbdClient.ConnectAsync(Options(nbdkit.EndPoint), Timeout());
        var (ours, _) = await HashWithOurClientAsync(client);
        Assert.Equal(await NbdPeers.NbdcopyHashAsync(nbdkit.Uri()), ours);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Read_errors_from_the_error_filter_fail_with_eio_and_deliver_nothing(bool noStructuredReplies)
    {
        using var dir = new TempDir();
        // pattern: every byte is data, so reads really happen (with sparse data nothing would be read; see the notes).
        string[] args = ["--filter=error", "pattern", "8M", "error-pread=EIO", "error-pread-rate=100%"];
        await using var nbdkit = await NbdkitProcess.StartAsync(dir, noStructuredReplies ? ["--no-sr", .. args] : args);
        await using var client = await NbdClient.ConnectAsync(Options(nbdkit.EndPoint), Timeout());
        long delivered = 0;
        var ex = await Assert.ThrowsAnyAsync<NbdException>(() => client.ReadExtentsAsync([new Extent(0, client.Size)],
            (_, d, _) => { delivered += d.Length; return ValueTask.CompletedTask; }, cancellationToken: Timeout()));
        Assert.IsNotType<NbdProtocolException>(ex);
        Assert.Equal(NbdErrno.EIO, ex.Errno);
        Assert.Equal(0, delivered);
    }

    [Fact]
    public async Task Reads_qemu_nbd_raw_file_identically()
    {
        using var dir = new TempDir();
        string file = dir.File("disk.raw");
        await WriteRandomSparseFileAsync(file, 24 << 20);
        await using var qemu = await QemuNbdProcess.StartAsync(dir, file);
        await using var client = await NbdClient.ConnectAsync(Options(qemu.EndPoint), Timeout());
        Assert.True(client.Export.StructuredReplies);
        var (ours, _) = await HashWithOurClientAsync(client);
        Assert.Equal(Convert.ToHexString(SHA256.HashData(await File.ReadAllBytesAsync(file))), ours);
    }

    [Fact]
    public async Task Reads_qemu_nbd_over_tls_with_a_ca_file()
    {
        using var dir = new TempDir();
        string pki = await TestCertificates.CreateAsync(dir);
        string file = dir.File("disk.raw");
        await WriteRandomSparseFileAsync(file, 8 << 20);
        await using var qemu = await QemuNbdProcess.StartAsync(dir, file, "--object", $"tls-creds-x509,id=tls0,endpoint=server,dir={pki},verify-peer=off", "--tls-creds", "tls0");
        await using var client = await NbdClient.ConnectAsync(Options(qemu.EndPoint) with { Tls = NbdTlsOptions.FromCaFile(Path.Combine(pki, "ca-cert.pem"), "localhost") }, Timeout());
        Assert.True(client.Export.Tls);
        var (ours, _) = await HashWithOurClientAsync(client);
        Assert.Equal(Convert.ToHexString(SHA256.HashData(await File.ReadAllBytesAsync(file))), ours);
    }

    [Fact]
    public async Task Reads_nbdkit_over_required_tls_with_ca_file_and_with_a_pinned_server_certificate()
    {
        using var dir = new TempDir();
        string pki = await TestCertificates.CreateAsync(dir);
        await using var nbdkit = await NbdkitProcess.StartAsync(dir, "--tls=require", $"--tls-certificates={pki}", "sparse-random", "16M", "seed=9", "percent=50");
        string reference = await NbdPeers.NbdcopyHashAsync(nbdkit.Uri(pki));
        await using (var client = await NbdClient.ConnectAsync(Options(nbdkit.EndPoint) with { Tls = NbdTlsOptions.FromCaFile(Path.Combine(pki, "ca-cert.pem"), "localhost") }, Timeout()))
        {
            Assert.True(client.Export.Tls);
            Assert.Equal(reference, (await HashWithOurClientAsync(client)).Hash);
        }
        string serverPem = await File.ReadAllTextAsync(Path.Combine(pki, "server-cert.pem"));
        await using (var client = await NbdClient.ConnectAsync(Options(nbdkit.EndPoint) with { Tls = NbdTlsOptions.Pinned(serverPem, "localhost") }, Timeout()))
            Assert.Equal(reference, (await HashWithOurClientAsync(client)).Hash);
    }

    [Fact]
    public async Task Tls_refuses_nbdkit_for_the_wrong_subject_and_plain_connections_are_told_tls_is_required()
    {
        using var dir = new TempDir();
        string pki = await TestCertificates.CreateAsync(dir);
        await using var nbdkit = await NbdkitProcess.StartAsync(dir, "--tls=require", $"--tls-certificates={pki}", "memory", "1M");
        await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdClient.ConnectAsync(Options(nbdkit.EndPoint) with { Tls = NbdTlsOptions.FromCaFile(Path.Combine(pki, "ca-cert.pem"), "xenserver.example") }, Timeout()));
        var ex = await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdClient.ConnectAsync(Options(nbdkit.EndPoint), Timeout()));
        Assert.Equal(NbdOptionReply.ErrTlsReqd, ex.Reply);
    }

    internal static async Task WriteRandomSparseFileAsync(string path, long size)
    {
        await using var f = new FileStream(path, FileMode.Create, FileAccess.Write);
        f.SetLength(size);
        var rng = new Random(99);
        var chunk = new byte[1 << 20];
        for (long pos = 0; pos < size; pos += 3L << 20) // 1 MiB data, 2 MiB hole
        {
            rng.NextBytes(chunk);
            f.Position = pos;
            await f.WriteAsync(chunk.AsMemory(0, (int)Math.Min(chunk.Length, size - pos)));
        }
    }
}
