using VProtect.Core.Xapi;

namespace VProtect.Simulator.Tests;

/// <summary>The project's own XAPI client (VProtect.Core.Xapi.XapiSession) against the simulator.</summary>
public sealed class ProjectClientTests
{
    [Theory]
    [InlineData(XapiProtocol.JsonRpc)]
    [InlineData(XapiProtocol.XmlRpc)]
    public async Task Login_on_the_member_follows_host_is_slave_and_snapshots_through_a_task(XapiProtocol protocol)
    {
        await using var h = await SimHandle.StartAsync();
        await using var session = await XapiSession.LoginAsync(h.Sim.MemberUrl, h.Sim.User, h.Sim.Password,
            new XapiConnectionOptions { Protocol = protocol, TaskPollInterval = TimeSpan.FromMilliseconds(50) });
        Assert.NotNull(session.RedirectedFrom);
        Assert.Equal("127.0.0.2", session.RedirectedFrom!.Host);
        Assert.Equal("127.0.0.1", session.Url.Host);
        Assert.Equal(h.Sim.Url.Port, session.Url.Port);
        Assert.Equal(2, session.ApiVersionMajor);
        Assert.True(session.ApiVersionAtLeast(2, 21));
        Assert.Equal("sim-pool", session.PoolName);
        Assert.Equal("127.0.0.1", session.MasterAddress);

        var vm = XapiValue.AsString(((object?[])(await session.CallAsync("VM.get_by_name_label", [Scenario.DefaultScenario.WebVm]))!)[0]);
        var disks = await session.GetVmDisksAsync(vm);
        Assert.Equal(2, disks.Count);
        Assert.Equal(Scenario.DefaultScenario.WebSystemDiskSize, XapiValue.AsLong(await session.CallAsync("VDI.get_virtual_size", [disks[0].Vdi.OpaqueRef])));
        var snap = await session.SnapshotVmAsync(vm, "via-core-client");
        Assert.Equal(vm, XapiValue.AsString(await session.CallAsync("VM.get_snapshot_of", [snap])));
    }

    private static async Task<List<string>> SnapshotsOfAsync(XapiSession session, string vdiRef)
    {
        var all = (Dictionary<string, object?>)(await session.CallAsync("VDI.get_all_records", []))!;
        return all.Where(kv => XapiValue.AsString(((Dictionary<string, object?>)kv.Value!)["snapshot_of"]) == vdiRef).Select(kv => kv.Key).ToList();
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_left_out_disk_is_never_in_the_snapshot_whether_or_not_the_host_knows_ignore_vdis(bool hostKnowsIgnoreVdis)
    {
        await using var h = await SimHandle.StartAsync();
        h.Sim.Settings.SnapshotIgnoreVdis = hostKnowsIgnoreVdis;
        await using var session = await XapiSession.LoginAsync(h.Sim.Url, h.Sim.User, h.Sim.Password);
        var vm = XapiValue.AsString(((object?[])(await session.CallAsync("VM.get_by_name_label", ["db-01"]))!)[0]);
        var disks = await session.GetVmDisksAsync(vm);
        Assert.Equal(3, disks.Count);
        var leftOut = disks[2].Vdi.OpaqueRef;

        var taken = await session.TakeVmSnapshotAsync(vm, "without the log disk", [leftOut]);
        Assert.Equal(!hostKnowsIgnoreVdis, taken.IgnoreVdisUnsupported);
        Assert.Equal(hostKnowsIgnoreVdis ? 0 : 1, taken.DiscardedVdis.Count);
        var snapDisks = await session.GetVmDisksAsync(taken.SnapshotRef);
        Assert.Equal(disks.Take(2).Select(d => d.Vdi.OpaqueRef), snapDisks.Select(d => d.Vdi.SnapshotOf));
        Assert.Empty(await SnapshotsOfAsync(session, leftOut)); // no copy of it anywhere in the pool
        Assert.Single(await SnapshotsOfAsync(session, disks[0].Vdi.OpaqueRef));
    }

    [Fact]
    public async Task When_the_left_out_copy_cannot_be_destroyed_the_whole_snapshot_goes_and_the_error_is_thrown()
    {
        await using var h = await SimHandle.StartAsync();
        h.Sim.Settings.SnapshotIgnoreVdis = false;
        await using var session = await XapiSession.LoginAsync(h.Sim.Url, h.Sim.User, h.Sim.Password);
        var vm = XapiValue.AsString(((object?[])(await session.CallAsync("VM.get_by_name_label", ["db-01"]))!)[0]);
        var disks = await session.GetVmDisksAsync(vm);
        int vmsBefore = ((object?[])(await session.CallAsync("VM.get_all", []))!).Length;
        h.Sim.Faults.AddMethodFault(new Faults.XapiMethodFault("VDI.destroy", "SR_BACKEND_FAILURE_1", ["", "injected", ""], 1));

        var ex = await Assert.ThrowsAsync<XapiException>(() => session.TakeVmSnapshotAsync(vm, "doomed", [disks[1].Vdi.OpaqueRef]));
        Assert.Equal("SR_BACKEND_FAILURE_1", ex.ErrorCode);
        Assert.Equal(vmsBefore, ((object?[])(await session.CallAsync("VM.get_all", []))!).Length);
        foreach (var d in disks) Assert.Empty(await SnapshotsOfAsync(session, d.Vdi.OpaqueRef));
    }
}
