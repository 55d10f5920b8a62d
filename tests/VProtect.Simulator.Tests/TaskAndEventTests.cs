using VProtect.Core.Xapi.Wire;

namespace VProtect.Simulator.Tests;

public sealed class TaskAndEventTests
{
    /// <summary>Follows a task through event.from, as Xen Orchestra does, until it leaves "pending".</summary>
    private static async Task<Dictionary<string, object?>> FollowTaskAsync(XapiTestClient c, string task)
    {
        string token = "";
        for (int round = 0; round < 50; round++)
        {
            var r = V.Map(await c.CallAsync("event.from", new object?[] { "task" }, token, 10.0));
            token = V.Str(r["token"]);
            foreach (var e in V.Arr(r["events"]).Select(V.Map))
            {
                Assert.Equal("task", V.Str(e["class"]));
                if (V.Str(e["ref"]) != task || V.Str(e["operation"]) == "del") continue;
                var snap = V.Map(e["snapshot"]);
                if (V.Str(snap["status"]) != "pending") return snap;
            }
        }
        throw new Xunit.Sdk.XunitException("The task never finished.");
    }

    [Theory]
    [InlineData(Protocol.XmlRpc)]
    [InlineData(Protocol.JsonRpcV2)]
    public async Task Async_snapshot_is_a_task_whose_result_is_an_xmlrpc_value(Protocol protocol)
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync(protocol);
        var vm = await c.RefByNameAsync("VM", Scenario.DefaultScenario.WebVm);
        var task = V.Str(await c.CallAsync("Async.VM.snapshot", vm, "async-snap"));
        Assert.StartsWith("OpaqueRef:", task);
        var done = await FollowTaskAsync(c, task);
        Assert.Equal("success", V.Str(done["status"]));
        Assert.Equal(1.0, Convert.ToDouble(done["progress"] is string p ? double.Parse(p, System.Globalization.CultureInfo.InvariantCulture) : done["progress"]));
        var result = V.Str(done["result"]);
        Assert.StartsWith("<value>OpaqueRef:", result);
        var snap = V.Str(XmlRpc.DecodeValue(result));
        Assert.Equal("async-snap", V.Str(await c.CallAsync("VM.get_name_label", snap)));
        Assert.Equal(vm, V.Str(await c.CallAsync("VM.get_snapshot_of", snap)));
        await c.CallAsync("task.destroy", task);
        Assert.Equal("HANDLE_INVALID", (await c.FailsAsync("task.get_status", task)).Code);
    }

    [Fact]
    public async Task A_failing_async_call_fails_its_task_with_error_info()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var vm = await c.RefByNameAsync("VM", Scenario.DefaultScenario.WebVm);
        var task = V.Str(await c.CallAsync("Async.VM.destroy", vm));
        var done = await FollowTaskAsync(c, task);
        Assert.Equal("failure", V.Str(done["status"]));
        Assert.Equal(["VM_BAD_POWER_STATE", vm, "halted, suspended", "running"], V.Arr(done["error_info"]).Select(V.Str));
    }

    [Fact]
    public async Task Void_async_results_are_an_empty_value_and_getters_have_no_async_form()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var vm = await c.RefByNameAsync("VM", "db-01");
        var task = V.Str(await c.CallAsync("Async.VM.start", vm, false, false));
        var done = await FollowTaskAsync(c, task);
        Assert.Equal("success", V.Str(done["status"]));
        Assert.Equal("", XmlRpc.DecodeValue(V.Str(done["result"])));
        Assert.Equal("MESSAGE_METHOD_UNKNOWN", (await c.FailsAsync("Async.VM.nope", vm)).Code);
        Assert.Equal("Fault", (await c.FailsAsync("Async.VM.get_name_label", vm)).Code);
    }

    [Fact]
    public async Task Task_create_cancel_gives_task_cancelled()
    {
        await using var h = await SimHandle.StartAsync("empty");
        using var c = await h.LoginAsync();
        var task = V.Str(await c.CallAsync("task.create", "import", "test"));
        Assert.Equal("pending", V.Str(await c.CallAsync("task.get_status", task)));
        await c.CallAsync("task.cancel", task);
        var rec = await c.RecordAsync("task", task);
        Assert.Equal("cancelled", V.Str(rec["status"]));
        Assert.Equal(["TASK_CANCELLED", task], V.Arr(rec["error_info"]).Select(V.Str));
    }

    [Fact]
    public async Task Event_from_returns_everything_for_an_empty_token_then_blocks_until_a_change()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync(Protocol.JsonRpcV2);
        var all = V.Map(await c.CallAsync("event.from", new object?[] { "vm", "host" }, "", 30.0));
        var events = V.Arr(all["events"]).Select(V.Map).ToList();
        var vmCount = V.Arr(await c.CallAsync("VM.get_all")).Length;
        Assert.Equal(vmCount, events.Count(e => V.Str(e["class"]) == "vm"));
        Assert.Equal(2, events.Count(e => V.Str(e["class"]) == "host"));
        Assert.All(events, e => Assert.Equal("add", V.Str(e["operation"])));
        Assert.Equal(vmCount, V.Long(V.Map(all["valid_ref_counts"])["vm"]));
        var token = V.Str(all["token"]);
        Assert.Matches(@"^\d{20},\d{20}$", token);

        // Nothing changed: a short timeout returns no events and a usable token.
        var idle = V.Map(await c.CallAsync("event.from", new object?[] { "vm" }, token, 0.05));
        Assert.Empty(V.Arr(idle["events"]));

        // A blocked call wakes up on a change made through another connection.
        var vm = await c.RefByNameAsync("VM", "db-01");
        using var watcher = new XapiTestClient(h.Sim.Url, Protocol.XmlRpc);
        var pending = watcher.CallNoSessionAsync("event.from", c.Session, new object?[] { "vm" }, V.Str(idle["token"]), 60.0);
        await c.CallAsync("VM.set_name_label", vm, "renamed");
        var woke = V.Map(await pending);
        var ev = V.Arr(woke["events"]).Select(V.Map).Single(e => V.Str(e["ref"]) == vm);
        Assert.Equal("mod", V.Str(ev["operation"]));
        Assert.Equal("renamed", V.Str(V.Map(ev["snapshot"])["name_label"]));
    }

    [Fact]
    public async Task Event_from_reports_deletions_and_single_objects()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        var vm = await c.RefByNameAsync("VM", "app-02");
        var snap = V.Str(await c.CallAsync("VM.snapshot", vm, "s"));
        var token = V.Str(V.Map(await c.CallAsync("event.from", new object?[] { "vm/" + snap }, "", 1.0))["token"]);
        await c.CallAsync("VM.destroy", snap);
        var r = V.Map(await c.CallAsync("event.from", new object?[] { "vm/" + snap }, token, 10.0));
        var e = V.Arr(r["events"]).Select(V.Map).Single();
        Assert.Equal("del", V.Str(e["operation"]));
        Assert.Equal(snap, V.Str(e["ref"]));
        Assert.False(e.ContainsKey("snapshot"));
    }

    [Fact]
    public async Task Event_register_and_next()
    {
        await using var h = await SimHandle.StartAsync();
        using var c = await h.LoginAsync();
        Assert.Equal("SESSION_NOT_REGISTERED", (await c.FailsAsync("event.next")).Code);
        await c.CallAsync("event.register", (object)new object?[] { "vm" });
        var vm = await c.RefByNameAsync("VM", "db-01");
        await c.CallAsync("VM.set_name_description", vm, "changed");
        var events = V.Arr(await c.CallAsync("event.next")).Select(V.Map).ToList();
        Assert.Contains(events, e => V.Str(e["ref"]) == vm && V.Str(e["operation"]) == "mod");
    }
}
