using System.Security.Cryptography;
using VProtect.Core.Backup;
using VProtect.Core.IO;
using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using VProtect.Core.Restore.Xva;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;
using VProtect.Simulator.Control;
using VProtect.Simulator.Scenario;
using Xunit;

namespace VProtect.Simulator.Tests.XvaStrategy;

/// <summary>
/// XVA-strategy restore points read without the host (<see cref="XvaRestorePointSource"/>) against the simulator's own
/// disks at each snapshot, and the health check (<see cref="TestRestore"/>) comparing every restored XVA disk with them.
/// </summary>
public sealed class XvaRestorePointTests : SimulatorRepositoryTestBase
{
    private string _vmRef = "";
    private readonly BackupEngine _engine = new(new VProtect.Core.Backup.Xva.XvaStrategy());
    private readonly Observer _observer = new();

    protected override void ConfigureSimulator(XenSimulator sim)
    {
        TestDataPlane.InstallIfMissing(sim);
    }

    protected override async Task InitializeTestAsync()
    {
        _vmRef = (await Session.GetByNameLabelAsync("VM", DefaultScenario.WebVm)).Single();
    }

    private sealed class Observer : IBackupObserver
    {
        public List<string> Warnings { get; } = new();
        public void OnProgress(BackupProgress p) { }
        public void OnWarning(string message) { lock (Warnings) Warnings.Add(message); }
        public void OnVerbose(string message) { }
    }

    private static new CancellationToken Timeout() => Timeout(TimeSpan.FromMinutes(5));

    private Task<BackupResult> BackupAsync(BackupType type, bool compress = false) =>
        _engine.RunAsync(Session, Repo, _vmRef, new BackupOptions { Strategy = BackupStrategy.Xva, Type = type, UseCompression = compress }, _observer, Timeout());

    private async Task<List<VdiRecord>> SourceDisksAsync()
    {
        var vm = await Session.GetRecordAsync<VmRecord>(_vmRef);
        var disks = new List<(string, VdiRecord)>();
        foreach (var vbdRef in vm.VBDs)
        {
            var vbd = await Session.GetRecordAsync<VbdRecord>(vbdRef);
            if (vbd.Type == "Disk") disks.Add((vbd.UserDevice, await Session.GetRecordAsync<VdiRecord>(vbd.VDI)));
        }
        return disks.OrderBy(d => d.Item1, StringComparer.Ordinal).Select(d => d.Item2).ToList();
    }

    /// <summary>The simulator's SHA-256 of each source disk now, by disk key (the source VDI uuid).</summary>
    private async Task<Dictionary<string, string>> SourceHashesAsync(List<VdiRecord> disks)
    {
        var result = new Dictionary<string, string>();
        foreach (var d in disks) result[d.Uuid] = (await ControlApi.HashAsync(Sim.OpenVdi(d.Uuid), Timeout())).ToLowerInvariant();
        return result;
    }

    private static async Task<string> HashAsync(IBlockSource source)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[4 << 20];
        for (long at = 0; at < source.Length;)
        {
            int n = (int)Math.Min(buffer.Length, source.Length - at);
            await source.ReadAsync(at, buffer.AsMemory(0, n), default);
            sha.AppendData(buffer, 0, n);
            at += n;
        }
        return Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant();
    }

    private async Task AssertPointAsync(BackupManifest point, Dictionary<string, string> expected)
    {
        var sources = await XvaRestorePointSource.OpenAsync(Repo, point, null, new XvaRestorePointOptions { SpillDirectory = Path.Combine(RepoPath, "spill") }, Timeout());
        try
        {
            Assert.Equal(expected.Keys.Order(), sources.Keys.Order());
            foreach (var (key, source) in sources)
                Assert.True(expected[key] == await HashAsync(source), $"{point.Type} {point.Id}: disk {key} differs from the source disk at its snapshot");
        }
        finally
        {
            foreach (var s in sources.Values) s.Dispose();
        }
    }

    [Fact]
    public async Task The_full_and_each_cumulative_incremental_read_as_the_source_disks_at_their_snapshots()
    {
        var disks = await SourceDisksAsync();
        var full = await BackupAsync(BackupType.Full);
        var atFull = await SourceHashesAsync(disks);
        await ControlApi.WriteAsync(Sim.OpenVdi(disks[0].Uuid), (3L << 20) + 4096, (2L << 20) + 512, 91, Timeout()); // unaligned
        await ControlApi.WriteAsync(Sim.OpenVdi(disks[1].Uuid), 600L << 20, 1L << 20, 92, Timeout());
        var inc1 = await BackupAsync(BackupType.Incremental);
        var atInc1 = await SourceHashesAsync(disks);
        await ControlApi.WriteAsync(Sim.OpenVdi(disks[0].Uuid), 3L << 20, 1L << 20, 93, Timeout());
        await ControlApi.WriteAsync(Sim.OpenVdi(disks[0].Uuid), 1500L << 20, 64 << 10, 94, Timeout());
        var inc2 = await BackupAsync(BackupType.Incremental);
        var atInc2 = await SourceHashesAsync(disks);

        Assert.Equal(BackupType.Incremental, inc2.Backup.Type);
        Assert.NotEqual(atFull, atInc1);
        Assert.NotEqual(atInc1, atInc2);
        await AssertPointAsync(full.Backup, atFull);
        await AssertPointAsync(inc1.Backup, atInc1);
        await AssertPointAsync(inc2.Backup, atInc2);
    }

    [Fact]
    public async Task A_zstd_full_reads_as_the_source_disks()
    {
        var disks = await SourceDisksAsync();
        var full = await BackupAsync(BackupType.Full, compress: true);
        Assert.Equal("zstd", full.Backup.Properties["xva.compression"]);
        await AssertPointAsync(full.Backup, await SourceHashesAsync(disks));
        Assert.Empty(Directory.GetFiles(Path.Combine(RepoPath, "spill")));
    }

    [Fact]
    public async Task Test_restore_of_an_incremental_compares_every_disk_and_removes_the_test_vm()
    {
        var disks = await SourceDisksAsync();
        await BackupAsync(BackupType.Full);
        await ControlApi.WriteAsync(Sim.OpenVdi(disks[0].Uuid), 5L << 20, 1L << 20, 95, Timeout());
        var inc = await BackupAsync(BackupType.Incremental);
        int vms = Sim.Core.Db.All("VM").Count, vdis = Sim.Core.Db.All("VDI").Count;

        var problems = await TestRestore.RunAsync(Session, Repo, inc.Backup, _observer, Timeout());
        Assert.Empty(problems);
        Assert.Equal(vms, Sim.Core.Db.All("VM").Count);
        Assert.Equal(vdis, Sim.Core.Db.All("VDI").Count);
    }

    [Fact]
    public async Task Test_restore_finds_a_disk_the_host_imported_wrongly()
    {
        var disks = await SourceDisksAsync();
        await BackupAsync(BackupType.Full);
        await ControlApi.WriteAsync(Sim.OpenVdi(disks[1].Uuid), 7L << 20, 1L << 20, 96, Timeout());
        var inc = await BackupAsync(BackupType.Incremental);
        int vms = Sim.Core.Db.All("VM").Count;

        // A host that applies the delta and then silently damages the disk: the stored files are all fine, so only the
        // comparison of the restored disk with the backup can find it.
        var import = Sim.Routes.Find("PUT", "/import_raw_vdi")!;
        string? damaged = null;
        Sim.Routes.Add("PUT", "/import_raw_vdi", async (x, ct) =>
        {
            await import(x, ct);
            var vdi = Sim.Core.Db.Get("VDI", x.Request.Query["vdi"]);
            if (damaged is null)
            {
                damaged = vdi.Uuid;
                await ControlApi.WriteAsync(Sim.OpenVdi(vdi.Uuid), 11L << 20, 4096, 97, ct);
            }
        });

        var problems = await TestRestore.RunAsync(Session, Repo, inc.Backup, _observer, Timeout());
        Assert.NotNull(damaged);
        var problem = Assert.Single(problems);
        Assert.Contains(damaged!, problem.File);
        Assert.Contains("reads back with SHA-256", problem.Message);
        Assert.Equal(vms, Sim.Core.Db.All("VM").Count);
    }
}
