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
}
