using System.Net;
using System.Text;
using VProtect.Core.IO;
using VProtect.Core.Xapi;
using Xunit;

namespace VProtect.Core.Tests.Xapi;

public class XapiHttpTransferTests
{
    private static CancellationToken Bounded() => new CancellationTokenSource(TimeSpan.FromSeconds(30)).Token;

    private static byte[] Pattern(int length)
    {
        var data = new byte[length];
        for (var i = 0; i < length; i++) data[i] = (byte)(i * 31 + (i >> 12));
        return data;
    }

    private static async Task<(FakeXapi Fake, XapiSession Session)> StartAsync(XapiProtocol protocol = XapiProtocol.JsonRpc)
    {
        var fake = new FakeXapi().WithStandardPool().WithTasks();
        var options = new XapiConnectionOptions { Protocol = protocol, TaskPollInterval = TimeSpan.FromMilliseconds(20), Timeout = TimeSpan.FromSeconds(10) };
        return (fake, await XapiSession.LoginAsync(fake.Url, "root", "secret", options, Bounded()));
    }

    private static (string, string)[] XapiStreamHeaders(string taskRef) => new[]
    {
        ("Connection", "close"), ("Cache-Control", "no-cache, no-store"), ("task-id", taskRef), ("Content-Type", "application/octet-stream"),
    };

    private sealed class ListProgress : IProgress<TransferProgress>
    {
        public List<TransferProgress> Values { get; } = new();
        public void Report(TransferProgress value) { lock (Values) Values.Add(value); }
    }

    /// <summary>A stream that cannot seek, like a pipe or a network source.</summary>
    private sealed class ForwardOnlyStream(Stream inner) : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override int Read(byte[] buffer, int offset, int count) => inner.Read(buffer, offset, Math.Min(count, 100_000));
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    [Fact]
    public async Task Export_streams_until_close_with_session_cookie_and_task_id_then_completes_the_task()
    {
        var (fake, session) = await StartAsync();
        await using var _ = fake;
        await using var __ = session;
        var data = Pattern(3 * 1024 * 1024 + 123);
        var firstPartRead = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        FakeHttpRequest? seen = null;
        fake.HttpHandler = async (req, ct) =>
        {
            seen = req;
            var task = req.Query["task_id"];
            await FakeHttpServer.WriteResponseAsync(req.Connection, 200, "OK", XapiStreamHeaders(task), null, ct);
            await req.Connection.WriteAsync(data.AsMemory(0, 1000), ct);
            await req.Connection.FlushAsync(ct);
            await firstPartRead.Task.WaitAsync(ct); // the client must see data before the export is over
            await req.Connection.WriteAsync(data.AsMemory(1000), ct);
            fake.CompleteTask(task, "<value></value>");
            return false; // close: the end of the body
        };
        var progress = new ListProgress();
        var transfer = new XapiHttpTransfer(session);

        await using var download = await transfer.ExportVmAsync("OpaqueRef:snap-1", "zstd", progress, Bounded());
        var first = new byte[1000];
        await download.Content.ReadExactlyAsync(first, Bounded());
        firstPartRead.SetResult();
        using var rest = new MemoryStream();
        await download.Content.CopyToAsync(rest, Bounded());

        Assert.Equal(data, first.Concat(rest.ToArray()).ToArray());
        Assert.Equal("", await download.CompleteAsync(Bounded()));
        Assert.NotNull(seen);
        Assert.Equal("GET", seen!.Method);
        Assert.Equal("HTTP/1.1", seen.HttpVersion);
        Assert.Equal($"127.0.0.1:{fake.Port}", seen.Headers["Host"]);
        Assert.Equal("/export", seen.Path);
        Assert.Equal("OpaqueRef:snap-1", seen.Query["ref"]);
        Assert.Equal("zstd", seen.Query["use_compression"]);
        Assert.Equal(session.OpaqueRef, seen.Cookie("session_id"));
        Assert.Equal(session.OpaqueRef, seen.Query["session_id"]);
        Assert.Equal(download.TaskRef, seen.Query["task_id"]);
        Assert.Single(fake.Calls, c => c.Method == "task.create");
        Assert.Empty(fake.Tasks); // destroyed after completion
        Assert.Equal(data.Length, progress.Values[^1].BytesDone);
        Assert.True(progress.Values.Zip(progress.Values.Skip(1)).All(p => p.First.BytesDone < p.Second.BytesDone));
        Assert.DoesNotContain(session.OpaqueRef, download.Url.ToString());
    }

    [Fact]
    public async Task Transfers_reach_a_host_given_by_name()
    {
        var fake = new FakeXapi().WithStandardPool().WithTasks();
        await using var _ = fake;
        var byName = new UriBuilder(fake.Url) { Host = "localhost" }.Uri;
        await using var session = await XapiSession.LoginAsync(byName, "root", "secret",
            new XapiConnectionOptions { TaskPollInterval = TimeSpan.FromMilliseconds(20) }, Bounded());
        fake.HttpHandler = async (req, ct) =>
        {
            await FakeHttpServer.WriteResponseAsync(req.Connection, 200, "OK", XapiStreamHeaders(req.Query["task_id"]), null, ct);
            await req.Connection.WriteAsync("by-name"u8.ToArray(), ct);
            fake.CompleteTask(req.Query["task_id"], "<value></value>");
            return false;
        };
        await using var download = await session.Http.ExportVmAsync("OpaqueRef:vm-1", ct: Bounded());
        using var copy = new MemoryStream();
        await download.Content.CopyToAsync(copy, Bounded());
        Assert.Equal("by-name"u8.ToArray(), copy.ToArray());
        await download.CompleteAsync(Bounded());
    }

    [Fact]
    public async Task Chunked_response_bodies_are_decoded()
    {
        var (fake, session) = await StartAsync();
        await using var _ = fake;
        await using var __ = session;
        var data = Pattern(70_000);
        fake.HttpHandler = async (req, ct) =>
        {
            await FakeHttpServer.WriteResponseAsync(req.Connection, 200, "OK", new[] { ("Transfer-Encoding", "chunked") }, null, ct);
            foreach (var piece in new[] { data.AsMemory(0, 1), data.AsMemory(1, 40_000), data.AsMemory(40_001) })
            {
                await req.Connection.WriteAsync(Encoding.ASCII.GetBytes($"{piece.Length:x};ext=1\r\n"), ct);
                await req.Connection.WriteAsync(piece, ct);
                await req.Connection.WriteAsync("\r\n"u8.ToArray(), ct);
            }
            await req.Connection.WriteAsync("0\r\nX-Trailer: 1\r\n\r\n"u8.ToArray(), ct);
            await req.Connection.FlushAsync(ct);
            fake.CompleteTask(req.Query["task_id"], "<value>done</value>");
            return true; // keeps the connection: the chunk framing, not the close, ends the body
        };
        await using var download = await new XapiHttpTransfer(session).ExportRawVdiAsync("OpaqueRef:vdi-1", ct: Bounded());
        using var copy = new MemoryStream();
        await download.Content.CopyToAsync(copy, Bounded());
        Assert.Equal(data, copy.ToArray());
        Assert.Equal("done", await download.CompleteAsync(Bounded()));
    }

    [Fact]
    public async Task Get_follows_302_to_the_other_host_with_the_same_request()
    {
        var (fake, session) = await StartAsync();
        await using var _ = fake;
        await using var __ = session;
        FakeHttpRequest? atMember = null;
        await using var member = new FakeHttpServer(async (req, ct) =>
        {
            atMember = req;
            await FakeHttpServer.WriteResponseAsync(req.Connection, 200, "OK", XapiStreamHeaders(req.Query["task_id"]), null, ct);
            await req.Connection.WriteAsync("disk-bytes"u8.ToArray(), ct);
            fake.CompleteTask(req.Query["task_id"], "<value></value>");
            return false;
        }, address: IPAddress.IPv6Loopback);
        fake.HttpHandler = async (req, ct) =>
        {
            var location = new Uri(member.Url, req.Target).ToString(); // https://<host address><same path and query> in xapi
            await FakeHttpServer.WriteResponseAsync(req.Connection, 302, "Found", new[] { ("Location", location), ("Connection", "close") }, Array.Empty<byte>(), ct);
            return false;
        };

        await using var download = await new XapiHttpTransfer(session).ExportRawVdiAsync("OpaqueRef:vdi-1", "vhd", "OpaqueRef:vdi-base", ct: Bounded());
        using var copy = new MemoryStream();
        await download.Content.CopyToAsync(copy, Bounded());
        Assert.Equal("disk-bytes", Encoding.ASCII.GetString(copy.ToArray()));
        await download.CompleteAsync(Bounded());
        Assert.NotNull(atMember);
        Assert.Equal("/export_raw_vdi", atMember!.Path);
        Assert.Equal("vhd", atMember.Query["format"]);
        Assert.Equal("OpaqueRef:vdi-base", atMember.Query["base"]);
        Assert.Equal(session.OpaqueRef, atMember.Cookie("session_id"));
        Assert.Equal(member.Port, download.Url.Port);
    }

    [Fact]
    public async Task Get_refused_reports_the_task_error()
    {
        var (fake, session) = await StartAsync(XapiProtocol.XmlRpc);
        await using var _ = fake;
        await using var __ = session;
        fake.HttpHandler = async (req, ct) =>
        {
            fake.FailTask(req.Query["task_id"], "VM_BAD_POWER_STATE", "OpaqueRef:vm-1", "halted, suspended", "running");
            await FakeHttpServer.WriteResponseAsync(req.Connection, 500, "Internal Error", new[] { ("Connection", "close") }, Array.Empty<byte>(), ct);
            return false;
        };
        var ex = await Assert.ThrowsAsync<XapiException>(() => new XapiHttpTransfer(session).ExportVmAsync("OpaqueRef:vm-1", ct: Bounded()));
        Assert.Equal("VM_BAD_POWER_STATE", ex.ErrorCode);
        Assert.Equal("running", ex.ErrorParameters[2]);
        Assert.Empty(fake.Tasks); // abandoned task destroyed
    }

    [Fact]
    public async Task Get_refused_without_a_task_error_is_a_connection_exception_with_the_status()
    {
        var (fake, session) = await StartAsync();
        await using var _ = fake;
        await using var __ = session;
        fake.HttpHandler = async (req, ct) =>
        {
            Assert.False(req.Query.ContainsKey("task_id"));
            await FakeHttpServer.WriteResponseAsync(req.Connection, 401, "Unauthorised", new[] { ("WWW-Authenticate", "Basic realm=\"xapi\"") }, "no"u8.ToArray(), ct);
            return false;
        };
        var transfer = new XapiHttpTransfer(session) { TrackTasks = false };
        var ex = await Assert.ThrowsAsync<XapiConnectionException>(() => transfer.GetAsync("/export", new Dictionary<string, string> { ["uuid"] = "u" }, ct: Bounded()));
        Assert.Equal(401, ex.HttpStatusCode);
        Assert.DoesNotContain(session.OpaqueRef, ex.Message);
        Assert.DoesNotContain(fake.Calls, c => c.Method == "task.create");
        Assert.Empty(fake.HandlerErrors);
    }

    [Fact]
    public async Task Put_streams_with_content_length_never_chunked_and_returns_the_task_result()
    {
        var (fake, session) = await StartAsync();
        await using var _ = fake;
        await using var __ = session;
        var data = Pattern(2_500_000);
        FakeHttpRequest? seen = null;
        byte[]? received = null;
        fake.HttpHandler = async (req, ct) =>
        {
            seen = req;
            // Like xapi: the 200 header goes out before the body is read.
            await FakeHttpServer.WriteResponseAsync(req.Connection, 200, "OK", XapiStreamHeaders(req.Query["task_id"]), null, ct);
            received = await req.ReadBodyAsync(ct);
            fake.CompleteTask(req.Query["task_id"], "<value>OpaqueRef:vdi-1</value>");
            return false;
        };
        var progress = new ListProgress();
        var result = await new XapiHttpTransfer(session).ImportRawVdiAsync("OpaqueRef:vdi-1", new ForwardOnlyStream(new MemoryStream(data)), data.Length, "raw", progress, Bounded());

        Assert.Equal("OpaqueRef:vdi-1", result);
        Assert.NotNull(seen);
        Assert.Equal("PUT", seen!.Method);
        Assert.Equal("HTTP/1.1", seen.HttpVersion);
        Assert.StartsWith("/import_raw_vdi?", seen.Target);
        Assert.Equal("/import_raw_vdi", seen.Path);
        Assert.Equal("OpaqueRef:vdi-1", seen.Query["vdi"]);
        Assert.Equal("raw", seen.Query["format"]);
        Assert.Equal(data.Length.ToString(), seen.Headers["Content-Length"]);
        Assert.False(seen.Headers.ContainsKey("Transfer-Encoding"));
        Assert.Equal(session.OpaqueRef, seen.Cookie("session_id"));
        Assert.Equal(data, received);
        Assert.Equal(new TransferProgress(data.Length, data.Length), progress.Values[^1]);
        Assert.Empty(fake.Tasks);
    }

    [Fact]
    public async Task Import_returns_the_vm_refs_of_the_task_result()
    {
        var (fake, session) = await StartAsync(XapiProtocol.XmlRpc);
        await using var _ = fake;
        await using var __ = session;
        fake.HttpHandler = async (req, ct) =>
        {
            Assert.Equal("OpaqueRef:sr-1", req.Query["sr_id"]);
            Assert.Equal("true", req.Query["restore"]);
            var body = await req.ReadBodyAsync(ct);
            Assert.Equal(5, body.Length);
            fake.CompleteTask(req.Query["task_id"], "<value><array><data><value>OpaqueRef:vm-new</value></data></array></value>");
            await FakeHttpServer.WriteResponseAsync(req.Connection, 200, "OK", XapiStreamHeaders(req.Query["task_id"]), Array.Empty<byte>(), ct);
            return false;
        };
        var refs = await new XapiHttpTransfer(session).ImportVmAsync(new MemoryStream("hello"u8.ToArray()), 5, "OpaqueRef:sr-1", restore: true, ct: Bounded());
        Assert.Equal(new[] { "OpaqueRef:vm-new" }, refs);
        Assert.Empty(fake.HandlerErrors);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Put_follows_302_and_resends_the_whole_body(bool seekable)
    {
        var (fake, session) = await StartAsync();
        await using var _ = fake;
        await using var __ = session;
        var data = Pattern(seekable ? 3_000_000 : 300_000);
        byte[]? received = null;
        string? contentLength = null;
        await using var member = new FakeHttpServer(async (req, ct) =>
        {
            contentLength = req.Headers["Content-Length"];
            await FakeHttpServer.WriteResponseAsync(req.Connection, 200, "OK", XapiStreamHeaders(req.Query["task_id"]), null, ct);
            received = await req.ReadBodyAsync(ct);
            fake.CompleteTask(req.Query["task_id"], "<value>OpaqueRef:vdi-2</value>");
            return false;
        }, address: IPAddress.IPv6Loopback);
        fake.HttpHandler = async (req, ct) =>
        {
            // The master answers before reading the body, as xapi does when another host sees the SR better.
            await FakeHttpServer.WriteResponseAsync(req.Connection, 302, "Found", new[] { ("Location", new Uri(member.Url, req.Target).ToString()) }, Array.Empty<byte>(), ct);
            return false;
        };
        Stream source = new MemoryStream(data);
        if (!seekable) source = new ForwardOnlyStream(source);

        var result = await new XapiHttpTransfer(session).ImportRawVdiAsync("OpaqueRef:vdi-2", source, data.Length, ct: Bounded());

        Assert.Equal("OpaqueRef:vdi-2", result);
        Assert.Equal(data.Length.ToString(), contentLength);
        Assert.Equal(data, received);
    }

    [Fact]
    public async Task Put_refused_with_403_reports_the_task_error()
    {
        var (fake, session) = await StartAsync();
        await using var _ = fake;
        await using var __ = session;
        fake.HttpHandler = async (req, ct) =>
        {
            fake.FailTask(req.Query["task_id"], "RBAC_PERMISSION_DENIED", "http/put_import", "No permission");
            await FakeHttpServer.WriteResponseAsync(req.Connection, 403, "Forbidden", new[] { ("Connection", "close") }, Array.Empty<byte>(), ct);
            return false;
        };
        var ex = await Assert.ThrowsAsync<XapiException>(() =>
            new XapiHttpTransfer(session).ImportVmAsync(new MemoryStream(Pattern(4_000_000)), 4_000_000, ct: Bounded()));
        Assert.Equal("RBAC_PERMISSION_DENIED", ex.ErrorCode);
        Assert.Empty(fake.Tasks);
    }

    [Fact]
    public async Task Put_with_a_short_stream_fails_and_abandons_the_task()
    {
        var (fake, session) = await StartAsync();
        await using var _ = fake;
        await using var __ = session;
        fake.HttpHandler = async (req, ct) =>
        {
            await FakeHttpServer.WriteResponseAsync(req.Connection, 200, "OK", XapiStreamHeaders(req.Query["task_id"]), null, ct);
            try { await req.ReadBodyAsync(ct); } catch (EndOfStreamException) { }
            return false;
        };
        var ex = await Assert.ThrowsAsync<ArgumentException>(() =>
            new XapiHttpTransfer(session).ImportRawVdiAsync("OpaqueRef:vdi-1", new MemoryStream(new byte[10]), 20, ct: Bounded()));
        Assert.Contains("20", ex.Message);
        Assert.Single(fake.Calls, c => c.Method == "task.cancel");
        Assert.Empty(fake.Tasks);
    }

    [Fact]
    public async Task Disposing_an_unfinished_download_cancels_and_destroys_its_task()
    {
        var (fake, session) = await StartAsync();
        await using var _ = fake;
        await using var __ = session;
        var release = new TaskCompletionSource();
        fake.HttpHandler = async (req, ct) =>
        {
            await FakeHttpServer.WriteResponseAsync(req.Connection, 200, "OK", XapiStreamHeaders(req.Query["task_id"]), null, ct);
            await req.Connection.WriteAsync(new byte[4096], ct);
            await req.Connection.FlushAsync(ct);
            await release.Task.WaitAsync(ct);
            return false;
        };
        string? taskRef;
        await using (var download = await new XapiHttpTransfer(session).ExportVmAsync("OpaqueRef:vm-1", ct: Bounded()))
        {
            taskRef = download.TaskRef;
            var some = new byte[100];
            await download.Content.ReadExactlyAsync(some, Bounded());
            await Assert.ThrowsAsync<InvalidOperationException>(() => download.CompleteAsync(Bounded()));
        }
        release.SetResult();
        Assert.Equal(taskRef, Assert.Single(fake.Calls, c => c.Method == "task.cancel").Args[1]);
        Assert.Empty(fake.Tasks);
    }

    /// <summary>Endless zeros without allocating them: stands in for a big disk.</summary>
    private sealed class ZeroStream : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override int Read(byte[] buffer, int offset, int count) { Array.Clear(buffer, offset, count); return count; }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }

    private sealed class CancelAfter(CancellationTokenSource cts, long bytes) : IProgress<TransferProgress>
    {
        public void Report(TransferProgress value) { if (value.BytesDone >= bytes) cts.Cancel(); }
    }

    [Fact]
    public async Task Cancelling_an_upload_stops_it_and_cancels_the_task()
    {
        var (fake, session) = await StartAsync();
        await using var _ = fake;
        await using var __ = session;
        var release = new TaskCompletionSource();
        long received = 0;
        fake.HttpHandler = async (req, ct) =>
        {
            await FakeHttpServer.WriteResponseAsync(req.Connection, 200, "OK", XapiStreamHeaders(req.Query["task_id"]), null, ct);
            var buffer = new byte[65536];
            try
            {
                int n;
                while ((n = await req.Connection.ReadAsync(buffer, ct)) > 0) Interlocked.Add(ref received, n);
            }
            catch (IOException) { }
            await release.Task.WaitAsync(ct);
            return false;
        };
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        const long announced = 1L << 40; // 1 TiB: the upload can only end by cancellation
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            new XapiHttpTransfer(session).ImportRawVdiAsync("OpaqueRef:vdi-1", new ZeroStream(), announced, "raw", new CancelAfter(cts, 3 << 20), cts.Token));
        release.SetResult();
        Assert.True(Interlocked.Read(ref received) < announced);
        Assert.Single(fake.Calls, c => c.Method == "task.cancel");
        Assert.Empty(fake.Tasks);
    }

    [Fact]
    public async Task Host_hanging_up_mid_upload_reports_the_task_error()
    {
        var (fake, session) = await StartAsync();
        await using var _ = fake;
        await using var __ = session;
        fake.HttpHandler = async (req, ct) =>
        {
            await FakeHttpServer.WriteResponseAsync(req.Connection, 200, "OK", XapiStreamHeaders(req.Query["task_id"]), null, ct);
            var first = new byte[1 << 20];
            await req.Connection.ReadExactlyAsync(first, ct);
            fake.FailTask(req.Query["task_id"], "VDI_IO_ERROR", "Device I/O errors");
            return false; // closes with the rest of the upload unread
        };
        var ex = await Assert.ThrowsAsync<XapiException>(() =>
            new XapiHttpTransfer(session).ImportRawVdiAsync("OpaqueRef:vdi-1", new ZeroStream(), 256L << 20, ct: Bounded()));
        Assert.Equal("VDI_IO_ERROR", ex.ErrorCode);
        Assert.Empty(fake.Tasks);
    }

    [Fact]
    public async Task Reading_a_download_honours_cancellation()
    {
        var (fake, session) = await StartAsync();
        await using var _ = fake;
        await using var __ = session;
        var release = new TaskCompletionSource();
        fake.HttpHandler = async (req, ct) =>
        {
            await FakeHttpServer.WriteResponseAsync(req.Connection, 200, "OK", XapiStreamHeaders(req.Query["task_id"]), null, ct);
            await req.Connection.FlushAsync(ct);
            await release.Task.WaitAsync(ct); // sends nothing more
            return false;
        };
        await using var download = await new XapiHttpTransfer(session).ExportVmAsync("OpaqueRef:vm-1", ct: Bounded());
        using var cts = new CancellationTokenSource();
        var read = download.Content.ReadAsync(new byte[10], cts.Token).AsTask();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => read);
        release.SetResult();
    }
}
