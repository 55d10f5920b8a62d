using System.Net;
using System.Net.Sockets;
using VProtect.Core.IO;
using VProtect.Core.Nbd;
using Xunit;
using static VProtect.Core.Tests.Nbd.NbdTestSupport;

namespace VProtect.Core.Tests.Nbd;

/// <summary>Our client against our server: data, holes, order, writes, TLS, hooks.</summary>
public class NbdLoopbackTests
{
    [Fact]
    public async Task Reads_extents_in_order_with_holes_skipped_by_block_status()
    {
        var disk = await RandomSparseDiskAsync(8 << 20);
        var expected = await ReadAllAsync(disk);
        await using var server = StartServer(disk);
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server) with { RequestSize = 64 * 1024 }, Timeout());
        Assert.True(client.Export.NegotiatedWithGo);
        Assert.True(client.Export.StructuredReplies);
        Assert.NotNull(client.Export.AllocationContextId);
        Assert.True(client.Export.ReadOnly);
        await client.WhenConnectedAsync();
        Assert.Equal(4, client.ConnectionCount);

        var extents = new[] { new Extent(5_000_000, 1_234_567), new Extent(17, 100_001), new Extent(disk.Length - 777, 777) };
        var received = new List<(long Offset, byte[] Data)>();
        var reports = new List<TransferProgress>();
        await client.ReadExtentsAsync(extents, (o, d, _) => { received.Add((o, d.ToArray())); return ValueTask.CompletedTask; },
            new SyncProgress(reports.Add), cancellationToken: Timeout());

        long pos = -1; int extent = 0; long inExtent = 0;
        foreach (var (o, d) in received)
        {
            if (inExtent == extents[extent].Length) { extent++; inExtent = 0; }
            Assert.Equal(extents[extent].Offset + inExtent, o); // contiguous and in the order given
            Assert.Equal(expected.AsSpan((int)o, d.Length).ToArray(), d);
            inExtent += d.Length; pos = o;
        }
        Assert.Equal(extents.Length - 1, extent);
        Assert.Equal(extents[^1].Length, inExtent);
        Assert.Equal(extents.Sum(e => e.Length), reports[^1].BytesDone);
        Assert.Equal(reports[^1].BytesTotal, reports[^1].BytesDone);
    }

    [Fact]
    public async Task Skip_zeroes_delivers_only_allocated_data_but_counts_everything()
    {
        var disk = await RandomSparseDiskAsync(4 << 20);
        await using var server = StartServer(disk);
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server), Timeout());
        long delivered = 0; TransferProgress last = default;
        var copy = new SparseMemoryDisk(disk.Length);
        await client.ReadExtentsAsync([new Extent(0, disk.Length)], async (o, d, ct) => { delivered += d.Length; await copy.WriteAsync(o, d, ct); },
            new SyncProgress(p => last = p), skipZeroes: true, cancellationToken: Timeout());
        long allocated = 0;
        await foreach (var e in disk.GetAllocatedExtentsAsync(0, disk.Length, default)) allocated += e.Length;
        Assert.Equal(allocated, delivered);
        Assert.Equal(disk.Length, last.BytesDone);
        Assert.Equal(await ReadAllAsync(disk), await ReadAllAsync(copy));
    }

    [Fact]
    public async Task Block_source_adapter_reads_unaligned_ranges_and_reports_allocation()
    {
        var disk = await RandomSparseDiskAsync(4 << 20);
        await using var server = StartServer(disk);
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server), Timeout());
        IBlockSource source = client.AsBlockSource();
        Assert.Equal(disk.Length, source.Length);
        var a = new byte[100_003]; var b = new byte[100_003];
        await source.ReadAsync(1_398_101, a, Timeout());
        await disk.ReadAsync(1_398_101, b, default);
        Assert.Equal(b, a);
        var ours = new List<Extent>(); var theirs = new List<Extent>();
        await foreach (var e in source.GetAllocatedExtentsAsync(0, disk.Length, Timeout())) ours.Add(e);
        await foreach (var e in disk.GetAllocatedExtentsAsync(0, disk.Length, default)) theirs.Add(e);
        Assert.Equal(theirs, ours);
    }

    [Fact]
    public async Task Without_structured_replies_reads_use_simple_replies_and_read_everything()
    {
        var disk = await RandomSparseDiskAsync(2 << 20);
        await using var server = StartServer(disk);
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server) with { UseStructuredReplies = false, MaxRequestsInFlight = 1, Connections = 1 }, Timeout());
        Assert.False(client.Export.StructuredReplies);
        Assert.Null(client.Export.AllocationContextId);
        var buffer = new byte[disk.Length];
        await client.ReadAsync(0, buffer, Timeout());
        Assert.Equal(await ReadAllAsync(disk), buffer);
    }

    [Fact]
    public async Task Writes_flush_trim_and_write_zeroes_reach_a_writable_export()
    {
        var disk = new SparseMemoryDisk(4 << 20);
        await using var server = StartServer(disk, disk);
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server) with { RequestSize = 128 * 1024 }, Timeout());
        Assert.False(client.Export.ReadOnly);
        var data = new byte[1_000_000];
        new Random(3).NextBytes(data);
        await client.WriteAsync(512, data, Timeout());
        await client.FlushAsync(Timeout());
        var back = new byte[data.Length];
        await disk.ReadAsync(512, back, default);
        Assert.Equal(data, back);
        await client.WriteZeroesAsync(512, 65536, Timeout());
        await client.TrimAsync(65536 * 4, 65536, Timeout());
        await disk.ReadAsync(512, back, default);
        Assert.All(back.AsSpan(0, 65536).ToArray(), x => Assert.Equal(0, x));
        Assert.All(back.AsSpan(65536 * 4 - 512, 65536).ToArray(), x => Assert.Equal(0, x));
        Assert.Equal(data.AsSpan(65536, 1000).ToArray(), back.AsSpan(65536, 1000).ToArray());
    }

    [Fact]
    public async Task Read_only_export_refuses_writes_with_eperm()
    {
        var disk = new SparseMemoryDisk(1 << 20);
        await using var server = StartServer(disk);
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server), Timeout());
        var ex = await Assert.ThrowsAnyAsync<NbdException>(() => client.WriteAsync(0, new byte[512], Timeout()));
        Assert.Equal(NbdErrno.EPERM, ex.Errno);
    }

    [Fact]
    public async Task Unknown_export_name_fails_negotiation_naming_the_export()
    {
        await using var server = StartServer(new SparseMemoryDisk(1 << 20));
        var ex = await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdClient.ConnectAsync(ClientOptions(server, "nope"), Timeout()));
        Assert.Equal(NbdOptionReply.ErrUnknown, ex.Reply);
        Assert.Contains("nope", ex.Message);
    }

    [Fact]
    public async Task Server_read_error_hook_fails_the_read_with_its_errno_and_delivers_nothing_after_it()
    {
        var disk = await RandomSparseDiskAsync(2 << 20);
        await using var server = StartServer(disk, configure: o => o with { Hooks = new FailReadsFrom(1 << 20, NbdErrno.EIO) });
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server) with { RequestSize = 256 * 1024, UseBlockStatus = false }, Timeout());
        long deliveredEnd = 0;
        var ex = await Assert.ThrowsAnyAsync<NbdException>(() => client.ReadExtentsAsync([new Extent(0, disk.Length)],
            (o, d, _) => { deliveredEnd = o + d.Length; return ValueTask.CompletedTask; }, cancellationToken: Timeout()));
        Assert.Equal(NbdErrno.EIO, ex.Errno);
        Assert.True(deliveredEnd <= 1 << 20, $"delivered up to {deliveredEnd}, past the failing offset");
        // The connection survives a server errno: the next good read works.
        var ok = new byte[4096];
        await client.ReadAsync(0, ok, Timeout());
    }

    [Fact]
    public async Task Dropped_connection_is_reestablished_and_the_read_retried()
    {
        var disk = await RandomSparseDiskAsync(4 << 20);
        var hooks = new DropFirstConnections(count: 2, afterBytes: 300_000);
        await using var server = StartServer(disk, configure: o => o with { Hooks = hooks });
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server) with { Connections = 1, RequestSize = 128 * 1024, UseBlockStatus = false }, Timeout());
        var copy = new byte[disk.Length];
        await client.ReadExtentsAsync([new Extent(0, disk.Length)], (o, d, _) => { d.CopyTo(copy.AsMemory((int)o)); return ValueTask.CompletedTask; }, cancellationToken: Timeout());
        Assert.Equal(await ReadAllAsync(disk), copy);
        Assert.True(server.AcceptedConnections >= 3, $"only {server.AcceptedConnections} connections: the drops did not happen");
    }

    [Fact]
    public async Task Retries_are_bounded_when_every_connection_drops()
    {
        var disk = await RandomSparseDiskAsync(2 << 20);
        await using var server = StartServer(disk, configure: o => o with { Hooks = new DropFirstConnections(count: int.MaxValue, afterBytes: 200_000) });
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server) with { Connections = 1, MaxRetries = 2, RequestSize = 512 * 1024, UseBlockStatus = false }, Timeout());
        await Assert.ThrowsAsync<NbdConnectionLostException>(() => client.ReadAsync(0, new byte[512 * 1024], Timeout()));
        Assert.Equal(3, server.AcceptedConnections); // first + 2 retries
    }

    [Fact]
    public async Task Latency_hook_delays_but_pipelined_reads_stay_correct()
    {
        var disk = await RandomSparseDiskAsync(2 << 20);
        await using var server = StartServer(disk, configure: o => o with { Hooks = new Latency(TimeSpan.FromMilliseconds(5)) });
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server) with { RequestSize = 64 * 1024 }, Timeout());
        var copy = new byte[disk.Length];
        await client.ReadAsync(0, copy, Timeout());
        Assert.Equal(await ReadAllAsync(disk), copy);
    }

    [Fact]
    public async Task Tls_with_pinned_certificate_and_subject_serves_data()
    {
        using var cert = SelfSignedCertificate("nbd.test");
        var disk = await RandomSparseDiskAsync(1 << 20);
        await using var server = StartServer(disk, configure: o => o with { TlsMode = _ => NbdTlsMode.Required, Certificate = cert });
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server) with { Tls = NbdTlsOptions.Pinned(Pem(cert), "nbd.test") }, Timeout());
        Assert.True(client.Export.Tls);
        var copy = new byte[disk.Length];
        await client.ReadAsync(0, copy, Timeout());
        Assert.Equal(await ReadAllAsync(disk), copy);
    }

    [Fact]
    public async Task Tls_rejects_a_certificate_that_is_not_the_pinned_one()
    {
        using var cert = SelfSignedCertificate("nbd.test");
        using var other = SelfSignedCertificate("nbd.test");
        await using var server = StartServer(new SparseMemoryDisk(1 << 20), configure: o => o with { TlsMode = _ => NbdTlsMode.Required, Certificate = cert });
        var ex = await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdClient.ConnectAsync(ClientOptions(server) with { Tls = NbdTlsOptions.Pinned(Pem(other), "nbd.test") }, Timeout()));
        Assert.Contains("TLS handshake", ex.Message);
    }

    [Fact]
    public async Task Tls_rejects_the_right_certificate_for_the_wrong_subject()
    {
        using var cert = SelfSignedCertificate("nbd.test");
        await using var server = StartServer(new SparseMemoryDisk(1 << 20), configure: o => o with { TlsMode = _ => NbdTlsMode.Required, Certificate = cert });
        await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdClient.ConnectAsync(ClientOptions(server) with { Tls = NbdTlsOptions.Pinned(Pem(cert), "other.test") }, Timeout()));
    }

    [Fact]
    public async Task Forced_tls_server_tells_a_plain_client_that_tls_is_required()
    {
        using var cert = SelfSignedCertificate();
        await using var server = StartServer(new SparseMemoryDisk(1 << 20), configure: o => o with { TlsMode = _ => NbdTlsMode.Required, Certificate = cert });
        var ex = await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdClient.ConnectAsync(ClientOptions(server), Timeout()));
        Assert.Equal(NbdOptionReply.ErrTlsReqd, ex.Reply);
    }

    [Fact]
    public async Task Client_wanting_tls_refuses_a_server_without_tls()
    {
        using var cert = SelfSignedCertificate();
        await using var server = StartServer(new SparseMemoryDisk(1 << 20));
        var ex = await Assert.ThrowsAsync<NbdNegotiationException>(() => NbdClient.ConnectAsync(ClientOptions(server) with { Tls = NbdTlsOptions.Pinned(Pem(cert), "nbd.test") }, Timeout()));
        Assert.Equal(NbdOptionReply.ErrPolicy, ex.Reply);
    }

    [Fact]
    public async Task Serves_over_a_unix_socket()
    {
        string path = Path.Combine(Path.GetTempPath(), $"nbd-{Guid.NewGuid():N}.sock");
        var disk = await RandomSparseDiskAsync(1 << 20);
        await using (var server = StartServer(disk, configure: o => o with { EndPoint = new UnixDomainSocketEndPoint(path) }))
        {
            await using var client = await NbdClient.ConnectAsync(new NbdClientOptions(new UnixDomainSocketEndPoint(path), "disk"), Timeout());
            var copy = new byte[disk.Length];
            await client.ReadAsync(0, copy, Timeout());
            Assert.Equal(await ReadAllAsync(disk), copy);
        }
        Assert.False(File.Exists(path));
    }

    [Fact]
    public async Task Cancellation_stops_a_transfer_promptly()
    {
        var disk = await RandomSparseDiskAsync(8 << 20);
        await using var server = StartServer(disk, configure: o => o with { Hooks = new Latency(TimeSpan.FromMilliseconds(20)) });
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server) with { RequestSize = 64 * 1024, UseBlockStatus = false }, Timeout());
        using var cts = new CancellationTokenSource();
        int calls = 0;
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => client.ReadExtentsAsync([new Extent(0, disk.Length)],
            (_, _, _) => { if (++calls == 3) cts.Cancel(); return ValueTask.CompletedTask; }, cancellationToken: cts.Token));
        Assert.Equal(3, calls);
    }

    internal sealed class SyncProgress(Action<TransferProgress> report) : IProgress<TransferProgress>
    {
        public void Report(TransferProgress value) => report(value);
    }

    private sealed class FailReadsFrom(long offset, int errno) : INbdServerHooks
    {
        public int GetReadError(NbdRequestInfo r) => r.Offset + r.Length > offset ? errno : 0;
    }

    private sealed class DropFirstConnections(int count, long afterBytes) : INbdServerHooks
    {
        public long? DropConnectionAfterBytes(NbdConnectionInfo c) => c.Id <= count ? afterBytes : null;
    }

    private sealed class Latency(TimeSpan delay) : INbdServerHooks
    {
        public async ValueTask OnRequestAsync(NbdRequestInfo request, CancellationToken ct) => await Task.Delay(delay, ct);
    }

    [Fact]
    public async Task Reads_start_on_the_first_connection_while_the_others_are_still_connecting()
    {
        var disk = await RandomSparseDiskAsync(4 << 20);
        var expected = await ReadAllAsync(disk);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        int resolved = 0;
        // Like xapi-nbd plugging the VDI into dom0: every connection after the first waits here until released.
        await using var server = StartServer(disk, configure: o => o with
        {
            ResolveExport = async (req, ct) =>
            {
                if (Interlocked.Increment(ref resolved) > 1) await release.Task.WaitAsync(ct);
                return new NbdExport(disk);
            },
        });
        await using var client = await NbdClient.ConnectAsync(ClientOptions(server) with { Connections = 3 }, Timeout());
        Assert.Equal(1, client.ConnectionCount);
        var copy = new byte[disk.Length];
        await client.ReadExtentsAsync([new Extent(0, disk.Length)], (o, d, _) => { d.CopyTo(copy.AsMemory((int)o)); return ValueTask.CompletedTask; }, cancellationToken: Timeout());
        Assert.Equal(expected, copy);
        Assert.Equal(1, client.ConnectionCount); // the whole read went over the first connection
        Assert.False(client.WhenConnectedAsync().IsCompleted);

        release.SetResult();
        await client.WhenConnectedAsync().WaitAsync(Timeout());
        Assert.Equal(3, client.ConnectionCount);
        var again = new byte[disk.Length];
        await client.ReadExtentsAsync([new Extent(0, disk.Length)], (o, d, _) => { d.CopyTo(again.AsMemory((int)o)); return ValueTask.CompletedTask; }, cancellationToken: Timeout());
        Assert.Equal(expected, again);
    }

    [Fact]
    public async Task Closing_the_client_while_the_others_are_still_connecting_stops_connecting()
    {
        var disk = await RandomSparseDiskAsync(1 << 20);
        int resolved = 0;
        await using var server = StartServer(disk, configure: o => o with
        {
            ResolveExport = async (req, ct) =>
            {
                if (Interlocked.Increment(ref resolved) > 1) await Task.Delay(300, CancellationToken.None);
                return new NbdExport(disk);
            },
        });
        var client = await NbdClient.ConnectAsync(ClientOptions(server) with { Connections = 4 }, Timeout());
        await client.DisposeAsync().AsTask().WaitAsync(Timeout()); // while the second connect waits in the resolver
        Assert.True(client.WhenConnectedAsync().IsCompleted);
        await Task.Delay(1500); // long enough for connects 3 and 4 had the client gone on
        Assert.True(Volatile.Read(ref resolved) <= 2, $"the client kept connecting after it was closed ({resolved} connects)");
        await Assert.ThrowsAsync<ObjectDisposedException>(() => client.ReadAsync(0, new byte[512], Timeout()));
    }
}
