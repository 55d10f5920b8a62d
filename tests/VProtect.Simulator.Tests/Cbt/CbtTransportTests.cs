using VProtect.Core.Backup;
using VProtect.Core.Backup.Cbt;
using VProtect.Core.Repository;
using VProtect.Core.Restore;
using VProtect.Core.Restore.Cbt;
using VProtect.Core.Xapi;
using VProtect.Simulator.Scenario;

namespace VProtect.Simulator.Tests.Cbt;

/// <summary>
/// How the CBT strategy's data travels: TLS or plain NBD as the pool's network purposes say (get_nbd_info hands out the
/// host certificate either way), on a small VM (one 64 MiB disk, half of it written).
/// </summary>
public sealed class CbtTransportTests : IAsyncLifetime
{
    private const long DiskSize = 64L << 20;
    private XenSimulator _sim = null!;
    private XapiSession _session = null!;
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "vprotect-cbt-transport-tests", Guid.NewGuid().ToString("n"));
    private BackupRepository _repo = null!;
    private string _vmRef = "", _vdiUuid = "", _network = "";

    public async Task InitializeAsync()
    {
        Directory.CreateDirectory(_dir);
        string scenario = Path.Combine(_dir, "scenario.json");
        // 50 % data: the first half of every 16 MiB.
        File.WriteAllText(scenario, $$"""
            { "base": "empty", "vms": [ { "name": "small", "powerState": "Halted", "memoryBytes": 1073741824, "vcpus": 1,
              "disks": [ { "name": "small disk", "size": {{DiskSize}}, "fill": [
                { "offset": 0, "length": 8388608, "seed": 1 }, { "offset": 16777216, "length": 8388608, "seed": 2 },
                { "offset": 33554432, "length": 8388608, "seed": 3 }, { "offset": 50331648, "length": 8388608, "seed": 4 } ] } ] } ] }
            """);
        _sim = await XenSimulator.StartAsync(new SimulatorOptions { Scenario = scenario, HttpsPort = null, NbdAttachDelay = TimeSpan.FromMilliseconds(5) });
        _session = await XapiSession.LoginAsync(_sim.Url, _sim.User, _sim.Password);
        _repo = BackupRepository.Open(Path.Combine(_dir, "repo"), create: true);
        _vmRef = (await _session.GetByNameLabelAsync("VM", "small")).Single();
        _vdiUuid = (await _session.GetVmDisksAsync(_vmRef)).Single().Vdi.Uuid;
        _network = (await _session.GetByNameLabelAsync("network", DefaultScenario.ManagementNetwork)).Single();
    }

    public async Task DisposeAsync()
    {
        await _session.DisposeAsync();
        await _sim.DisposeAsync();
        try { Directory.Delete(_dir, recursive: true); } catch (DirectoryNotFoundException) { }
    }

    private static CancellationToken Timeout() => new CancellationTokenSource(TimeSpan.FromMinutes(2)).Token;

    private Task<BackupResult> BackupAsync(CbtStrategy strategy, BackupType type, RecordingObserver observer) =>
        new BackupEngine(strategy).RunAsync(_session, _repo, _vmRef, new BackupOptions { Type = type, NoFallback = true }, observer, Timeout());

    private async Task<string> RestoredHashAsync(BackupManifest point)
    {
        var result = await new RestoreEngine(new CbtRestore()).RestoreAsync(_session, _repo, point, new RestoreOptions { Name = "restored " + point.Id }, new RecordingObserver(), Timeout());
        return await CbtTestKit.Sha256Async(_sim.OpenVdi(result.Disks.Single().VdiUuid));
    }

    [Theory]
    [InlineData("nbd", true)]
    [InlineData("insecure_nbd", false)]
    public async Task Endpoints_carry_the_certificate_only_when_the_pool_serves_NBD_over_TLS(string purpose, bool tls)
    {
        await _session.CallAsync("network.add_purpose", [_network, purpose], Timeout());
        var vdiRef = await _session.GetByUuidAsync("VDI", _vdiUuid);
        var endpoints = await NbdEndpoint.GetAsync(_session, vdiRef, Timeout());
        Assert.NotEmpty(endpoints);
        foreach (var e in endpoints)
        {
            Assert.Equal(tls, e.CertificatePem is not null);
            Assert.Equal(tls, e.ToClientOptions(1).Tls.Enabled);
        }
    }

    [Fact]
    public async Task Over_insecure_nbd_a_full_and_an_incremental_read_over_plain_NBD_and_restore_exactly()
    {
        await _session.CallAsync("network.add_purpose", [_network, "insecure_nbd"], Timeout());
        var observer = new RecordingObserver();
        var full = await BackupAsync(new CbtStrategy { FullsOverNbd = true }, BackupType.Full, observer);
        var disk = Assert.Single(full.Backup.Disks);
        Assert.Equal("nbd", disk.Properties[CbtStrategy.TransportProperty]);
        Assert.Equal(DiskSize, disk.DataBytes); // NBD reads the whole disk (xapi-nbd reports no holes)
        string fullHash = await CbtTestKit.Sha256Async(_sim.OpenVdi(disk.Properties[CbtStrategy.SnapshotVdiProperty]));

        await CbtTestKit.GuestWriteAsync(_sim, _vdiUuid, 40L << 20, 100_000, 7);
        var inc = await BackupAsync(new CbtStrategy(), BackupType.Incremental, observer);
        Assert.Equal(BackupType.Incremental, inc.Backup.Type);
        var incDisk = Assert.Single(inc.Backup.Disks);
        Assert.Equal("nbd", incDisk.Properties[CbtStrategy.TransportProperty]);
        Assert.Equal(2 * 65536L, incDisk.DataBytes); // 100 000 bytes at a 64 KiB boundary span two blocks
        string incHash = await CbtTestKit.Sha256Async(_sim.OpenVdi(incDisk.Properties[CbtStrategy.SnapshotVdiProperty]));
        Assert.NotEqual(fullHash, incHash);
        Assert.DoesNotContain(observer.Verbose, m => m.Contains("not reachable", StringComparison.Ordinal));

        Assert.Equal(incHash, await RestoredHashAsync(inc.Backup));
        Assert.Equal(fullHash, await RestoredHashAsync(full.Backup));
    }
}

/// <summary>How many NBD connections a read opens: enough to overlap xapi-nbd's serial serving, never more than the reading needs.</summary>
public sealed class CbtConnectionCountTests
{
    [Theory]
    [InlineData(0L, 4, 1)]
    [InlineData(10L << 20, 4, 1)]          // a small incremental: one connect, not four
    [InlineData(64L << 20, 4, 1)]
    [InlineData((64L << 20) + 1, 4, 2)]
    [InlineData(82L << 20, 4, 2)]          // 1 % of an 8 GiB disk
    [InlineData(200L << 20, 4, 4)]
    [InlineData(4L << 30, 4, 4)]           // a full: capped by BackupOptions.NbdConnections
    [InlineData(4L << 30, 8, 8)]
    [InlineData(4L << 30, 0, 1)]
    public void One_connection_per_64_MiB_to_read_capped_by_the_option(long bytes, int max, int expected)
        => Assert.Equal(expected, CbtStrategy.ConnectionsFor(bytes, max));
}
