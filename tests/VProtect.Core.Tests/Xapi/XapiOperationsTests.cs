using VProtect.Core.Xapi;
using Xunit;

namespace VProtect.Core.Tests.Xapi;

public class XapiOperationsTests
{
    private static CancellationToken Bounded() => new CancellationTokenSource(TimeSpan.FromSeconds(20)).Token;

    private static async Task<(FakeXapi, XapiSession)> StartAsync(XapiProtocol protocol, bool hostKnowsIgnoreVdis)
    {
        var fake = new FakeXapi().WithStandardPool().WithTasks();
        fake.Methods["Async.VM.snapshot"] = args =>
        {
            if (args.Length != 4 && hostKnowsIgnoreVdis || args.Length != 3 && !hostKnowsIgnoreVdis)
                return FakeXapi.Fail("MESSAGE_PARAMETER_COUNT_MISMATCH", "VM.snapshot", hostKnowsIgnoreVdis ? "3" : "2", (args.Length - 1).ToString());
            var task = (string)fake.Methods["task.create"](new object?[] { args[0], "Async.VM.snapshot", "" }).Value!;
            fake.CompleteTask(task, "<value>OpaqueRef:snap-of-" + args[1] + "</value>");
            return FakeXapi.Ok(task);
        };
        var session = await XapiSession.LoginAsync(fake.Url, "root", "secret",
            new XapiConnectionOptions { Protocol = protocol, TaskPollInterval = TimeSpan.FromMilliseconds(20) }, Bounded());
        return (fake, session);
    }

    [Theory]
    [InlineData(XapiProtocol.JsonRpc)]
    [InlineData(XapiProtocol.XmlRpc)]
    public async Task Snapshot_passes_ignore_vdis_on_current_hosts(XapiProtocol protocol)
    {
        var (fake, session) = await StartAsync(protocol, hostKnowsIgnoreVdis: true);
        await using var _ = fake;
        await using var __ = session;
        var snap = await session.SnapshotVmAsync("OpaqueRef:vm-1", "vprotect-backup", new[] { "OpaqueRef:vdi-swap" }, null, Bounded());
        Assert.Equal("OpaqueRef:snap-of-OpaqueRef:vm-1", snap);
        var call = Assert.Single(fake.Calls, c => c.Method == "Async.VM.snapshot");
        Assert.Equal(new object?[] { "OpaqueRef:vdi-swap" }, call.Args[3]);
        Assert.Empty(fake.Tasks);
    }

    [Fact]
    public async Task Snapshot_falls_back_to_two_arguments_on_older_hosts()
    {
        var (fake, session) = await StartAsync(XapiProtocol.XmlRpc, hostKnowsIgnoreVdis: false);
        await using var _ = fake;
        await using var __ = session;
        Assert.Equal("OpaqueRef:snap-of-OpaqueRef:vm-1", await session.SnapshotVmAsync("OpaqueRef:vm-1", "b", ct: Bounded()));
        Assert.Equal(new[] { 4, 3 }, fake.Calls.Where(c => c.Method == "Async.VM.snapshot").Select(c => c.Args.Length));
    }

    // A host without ignore_vdis that must leave disks out: tested against the simulator (ProjectClientTests), since
    // the snapshot's disks have to exist to be destroyed.

    [Fact]
    public async Task Vm_disks_skip_cd_drives_and_empty_slots_and_sort_by_userdevice()
    {
        await using var fake = new FakeXapi().WithStandardPool();
        fake.Methods["VM.get_record"] = _ => FakeXapi.Ok(new Dictionary<string, object?>
        {
            ["uuid"] = "vm-u", ["VBDs"] = new object?[] { "OpaqueRef:vbd-cd", "OpaqueRef:vbd-2", "OpaqueRef:vbd-0", "OpaqueRef:vbd-empty" },
        });
        var vbds = new Dictionary<string, Dictionary<string, object?>>
        {
            ["OpaqueRef:vbd-cd"] = new() { ["type"] = "CD", ["VDI"] = "OpaqueRef:iso", ["userdevice"] = "3", ["empty"] = false },
            ["OpaqueRef:vbd-2"] = new() { ["type"] = "Disk", ["VDI"] = "OpaqueRef:vdi-b", ["userdevice"] = "10", ["empty"] = false },
            ["OpaqueRef:vbd-0"] = new() { ["type"] = "Disk", ["VDI"] = "OpaqueRef:vdi-a", ["userdevice"] = "2", ["empty"] = false },
            ["OpaqueRef:vbd-empty"] = new() { ["type"] = "Disk", ["VDI"] = "OpaqueRef:NULL", ["userdevice"] = "4", ["empty"] = true },
        };
        fake.Methods["VBD.get_record"] = args => FakeXapi.Ok(vbds[(string)args[1]!]);
        fake.Methods["VDI.get_record"] = args => FakeXapi.Ok(new Dictionary<string, object?> { ["name_label"] = args[1], ["virtual_size"] = "1073741824" });
        await using var session = await XapiSession.LoginAsync(fake.Url, "root", "secret", new XapiConnectionOptions(), Bounded());

        var disks = await session.GetVmDisksAsync("OpaqueRef:vm-1", Bounded());

        Assert.Equal(new[] { "OpaqueRef:vdi-a", "OpaqueRef:vdi-b" }, disks.Select(d => d.Vdi.OpaqueRef));
        Assert.Equal(new[] { "2", "10" }, disks.Select(d => d.Vbd.UserDevice));
        Assert.All(disks, d => Assert.Equal(1073741824L, d.Vdi.VirtualSize));
        Assert.DoesNotContain(fake.Calls, c => c.Method == "VDI.get_record" && (string?)c.Args[1] == "OpaqueRef:iso");
    }
}
