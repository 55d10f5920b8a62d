using VProtect.Core.Xapi;
using Xunit;

namespace VProtect.Core.Tests.Xapi;

public class XapiTaskTests
{
    private const string TaskRef = "OpaqueRef:task-1";

    private static CancellationToken Bounded() => new CancellationTokenSource(TimeSpan.FromSeconds(20)).Token;

    private static Dictionary<string, object?> TaskRecord(string status, double progress, string result = "", params string[] errorInfo) => new()
    {
        ["uuid"] = "t-1", ["name_label"] = "Async.VM.snapshot", ["status"] = status, ["progress"] = progress,
        ["result"] = result, ["error_info"] = errorInfo.Cast<object?>().ToArray(),
        ["created"] = new DateTime(2026, 1, 1, 0, 0, 0, DateTimeKind.Utc), ["finished"] = new DateTime(1970, 1, 1, 0, 0, 0, DateTimeKind.Utc),
    };

    private static async Task<(FakeXapi Fake, XapiSession Session)> StartAsync(XapiProtocol protocol, Func<int, Dictionary<string, object?>> recordForPoll)
    {
        var fake = new FakeXapi().WithStandardPool();
        var polls = 0;
        fake.Methods["Async.VM.snapshot"] = args => FakeXapi.Ok(TaskRef);
        fake.Methods["task.get_record"] = args => (string?)args[1] == TaskRef
            ? FakeXapi.Ok(recordForPoll(Interlocked.Increment(ref polls)))
            : FakeXapi.Fail("HANDLE_INVALID", "task", (string?)args[1] ?? "");
        fake.Methods["task.destroy"] = _ => FakeXapi.Ok("");
        var options = new XapiConnectionOptions { Protocol = protocol, TaskPollInterval = TimeSpan.FromMilliseconds(20) };
        var session = await XapiSession.LoginAsync(fake.Url, "root", "secret", options, Bounded());
        return (fake, session);
    }

    private sealed class ListProgress : IProgress<double>
    {
        public List<double> Values { get; } = new();
        public void Report(double value) { lock (Values) Values.Add(value); }
    }

    [Theory]
    [InlineData(XapiProtocol.JsonRpc)]
    [InlineData(XapiProtocol.XmlRpc)]
    public async Task Polls_until_success_reports_progress_parses_result_and_destroys(XapiProtocol protocol)
    {
        var (fake, session) = await StartAsync(protocol, poll => poll switch
        {
            1 => TaskRecord("pending", 0.0),
            2 => TaskRecord("pending", 0.4),
            3 => TaskRecord("pending", 0.4),
            _ => TaskRecord("success", 1.0, "<value>OpaqueRef:snap-1</value>"),
        });
        await using var _ = fake;
        await using var __ = session;
        var progress = new ListProgress();

        var result = await session.CallAsyncTaskAsync("VM.snapshot", new object?[] { "OpaqueRef:vm-1", "backup" }, progress, Bounded());

        Assert.Equal("OpaqueRef:snap-1", result);
        Assert.Equal(new[] { 0.0, 0.4, 1.0 }, progress.Values); // reported on change only
        var snapshotCall = Assert.Single(fake.Calls, c => c.Method == "Async.VM.snapshot");
        Assert.Equal(new object?[] { session.OpaqueRef, "OpaqueRef:vm-1", "backup" }, snapshotCall.Args);
        Assert.Equal(4, fake.Calls.Count(c => c.Method == "task.get_record"));
        Assert.Equal(TaskRef, Assert.Single(fake.Calls, c => c.Method == "task.destroy").Args[1]);
    }

    [Fact]
    public async Task Structured_and_void_results_decode()
    {
        var (fake, session) = await StartAsync(XapiProtocol.JsonRpc,
            _ => TaskRecord("success", 1.0, "<value><array><data><value>OpaqueRef:vm-a</value><value>OpaqueRef:vm-b</value></data></array></value>"));
        await using var _ = fake;
        await using var __ = session;
        Assert.Equal(new object?[] { "OpaqueRef:vm-a", "OpaqueRef:vm-b" }, await session.WaitForTaskAsync(TaskRef, ct: Bounded()));
        Assert.Equal("", XapiSession.DecodeTaskResult(""));
        Assert.Equal("", XapiSession.DecodeTaskResult("<value></value>"));
        Assert.Equal("OpaqueRef:bare", XapiSession.DecodeTaskResult("OpaqueRef:bare"));
    }

    [Fact]
    public async Task Failure_throws_the_error_info_and_still_destroys_the_task()
    {
        var (fake, session) = await StartAsync(XapiProtocol.XmlRpc, poll => poll < 2
            ? TaskRecord("pending", 0.1)
            : TaskRecord("failure", 1.0, "", "SR_FULL", "21474836480", "10737418240"));
        await using var _ = fake;
        await using var __ = session;
        var ex = await Assert.ThrowsAsync<XapiException>(() => session.CallAsyncTaskAsync("VM.snapshot", new object?[] { "OpaqueRef:vm-1", "b" }, null, Bounded()));
        Assert.Equal("SR_FULL", ex.ErrorCode);
        Assert.Equal(new[] { "21474836480", "10737418240" }, ex.ErrorParameters);
        Assert.Equal("VM.snapshot", ex.Method);
        Assert.Single(fake.Calls, c => c.Method == "task.destroy");
    }

    [Fact]
    public async Task Cancellation_cancels_the_task_on_the_host_and_throws_operation_cancelled()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        var cancelled = 0;
        var (fake, session) = await StartAsync(XapiProtocol.JsonRpc, poll =>
        {
            if (Volatile.Read(ref cancelled) == 1) return TaskRecord("cancelled", 1.0, "", "TASK_CANCELLED", TaskRef);
            if (poll == 2) cts.Cancel(); // the caller gives up while the task runs
            return TaskRecord("pending", 0.2);
        });
        await using var _ = fake;
        await using var __ = session;
        fake.Methods["task.cancel"] = args => { Volatile.Write(ref cancelled, 1); return FakeXapi.Ok(""); };

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => session.CallAsyncTaskAsync("VM.snapshot", new object?[] { "OpaqueRef:vm-1", "b" }, null, cts.Token));

        Assert.Equal(TaskRef, Assert.Single(fake.Calls, c => c.Method == "task.cancel").Args[1]);
        Assert.Single(fake.Calls, c => c.Method == "task.destroy");
        var methods = fake.MethodNames.ToList();
        Assert.True(methods.LastIndexOf("task.get_record") > methods.IndexOf("task.cancel"), "the client waits for the host to settle after cancelling");
    }

    [Fact]
    public async Task A_task_that_completes_despite_the_cancel_returns_its_result()
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        var cancelled = 0;
        var (fake, session) = await StartAsync(XapiProtocol.JsonRpc, poll =>
        {
            if (Volatile.Read(ref cancelled) == 1) return TaskRecord("success", 1.0, "<value>OpaqueRef:snap-late</value>");
            cts.Cancel();
            return TaskRecord("pending", 0.9);
        });
        await using var _ = fake;
        await using var __ = session;
        fake.Methods["task.cancel"] = _ => { Volatile.Write(ref cancelled, 1); return FakeXapi.Fail("OPERATION_NOT_ALLOWED", "task is finishing"); };
        // The snapshot exists on the host; returning it lets the caller clean it up instead of leaking it.
        Assert.Equal("OpaqueRef:snap-late", await session.CallAsyncTaskAsync("VM.snapshot", new object?[] { "OpaqueRef:vm-1", "b" }, null, cts.Token));
    }

    [Fact]
    public async Task Cancelled_by_someone_else_is_an_xapi_exception()
    {
        var (fake, session) = await StartAsync(XapiProtocol.XmlRpc, _ => TaskRecord("cancelled", 1.0, "", "TASK_CANCELLED", TaskRef));
        await using var _ = fake;
        await using var __ = session;
        var ex = await Assert.ThrowsAsync<XapiException>(() => session.WaitForTaskAsync(TaskRef, ct: Bounded()));
        Assert.Equal("TASK_CANCELLED", ex.ErrorCode);
    }

    [Fact]
    public async Task Async_call_failing_up_front_creates_no_task_to_wait_for()
    {
        await using var fake = new FakeXapi().WithStandardPool();
        fake.Methods["Async.VM.snapshot"] = _ => FakeXapi.Fail("VM_IS_TEMPLATE", "OpaqueRef:vm-1", "snapshot");
        await using var session = await XapiSession.LoginAsync(fake.Url, "root", "secret", new XapiConnectionOptions(), Bounded());
        var ex = await Assert.ThrowsAsync<XapiException>(() => session.CallAsyncTaskAsync("VM.snapshot", new object?[] { "OpaqueRef:vm-1", "b" }, null, Bounded()));
        Assert.Equal("VM_IS_TEMPLATE", ex.ErrorCode);
        Assert.DoesNotContain(fake.Calls, c => c.Method.StartsWith("task.", StringComparison.Ordinal));
    }
}
