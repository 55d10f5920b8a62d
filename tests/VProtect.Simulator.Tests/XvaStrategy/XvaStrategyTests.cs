using System.Security.Cryptography;
using VProtect.Core.Backup;
using VProtect.Core.Backup.Xva;
using VProtect.Core.Formats;
using VProtect.Core.Repository;
using VProtect.Core.Restore;
using VProtect.Core.Restore.Xva;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;
using VProtect.Simulator.Control;
using VProtect.Simulator.Scenario;
using VProtect.Simulator.Xapi;
using Xunit;

namespace VProtect.Simulator.Tests.XvaStrategy;

/// <summary>
/// The XVA strategy end to end against the simulator: full XVA, cumulative VHD incrementals, restores of every point
/// compared by SHA-256 with the source disks at their snapshots, fallbacks with their reasons, and damage found before
/// anything is imported.
/// </summary>
public sealed class XvaStrategyTests : SimulatorRepositoryTestBase
{
    private string _vmRef = "";
    private readonly BackupEngine _engine = new(new VProtect.Core.Backup.Xva.XvaStrategy());
    private readonly RestoreEngine _restore = new(new XvaRestore());
    private readonly Observer _observer = new();
    private int _importCalls;

    protected override void ConfigureSimulator(XenSimulator sim)
    {
        TestDataPlane.InstallIfMissing(sim);
        var import = sim.Routes.Find("PUT", "/import")!;
        sim.Routes.Add("PUT", "/import", (x, ct) => { Interlocked.Increment(ref _importCalls); return import(x, ct); });
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

    private Task<BackupResult> BackupAsync(BackupType type, bool compress = false) =>
        _engine.RunAsync(Session, Repo, _vmRef, new BackupOptions { Strategy = BackupStrategy.Xva, Type = type, UseCompression = compress }, _observer, Timeout());

    /// <summary>SHA-256 of each disk of a VM, by userdevice.</summary>
    private async Task<Dictionary<string, string>> DiskHashesAsync(string vmRef)
    {
        var result = new Dictionary<string, string>();
        var vm = await Session.GetRecordAsync<VmRecord>(vmRef);
        foreach (var vbdRef in vm.VBDs)
        {
            var vbd = await Session.GetRecordAsync<VbdRecord>(vbdRef);
            if (vbd.Type != "Disk") continue;
            var vdi = await Session.GetRecordAsync<VdiRecord>(vbd.VDI);
            result[vbd.UserDevice] = await ControlApi.HashAsync(Sim.OpenVdi(vdi.Uuid), Timeout());
        }
        return result;
    }

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

    private async Task GuestWriteAsync(VdiRecord disk, long offset, long length, long seed)
        => await ControlApi.WriteAsync(Sim.OpenVdi(disk.Uuid), offset, length, seed, Timeout());

    private async Task<bool> VmExistsAsync(string uuid)
    {
        try { await Session.GetByUuidAsync("VM", uuid); return true; }
        catch (XapiException) { return false; }
    }

    private int VmCount() => Sim.Core.Db.All("VM").Count;

    [Fact]
    public async Task Full_then_two_cumulative_incrementals_restore_every_point_with_the_source_disks()
    {
        var disks = await SourceDisksAsync();
        var full = await BackupAsync(BackupType.Full);
        var atFull = await DiskHashesAsync(_vmRef);

        await GuestWriteAsync(disks[0], 3L << 20, 2L << 20, 71);           // inside the filled start
        await GuestWriteAsync(disks[1], 600L << 20, 1L << 20, 72);         // a new region of the data disk
        var inc1 = await BackupAsync(BackupType.Incremental);
        var atInc1 = await DiskHashesAsync(_vmRef);

        await GuestWriteAsync(disks[0], 3L << 20, 1L << 20, 73);           // overwrite part of the first change
        await GuestWriteAsync(disks[0], 1500L << 20, 64 << 10, 74);
        var inc2 = await BackupAsync(BackupType.Incremental);
        var atInc2 = await DiskHashesAsync(_vmRef);

        Assert.Equal(BackupType.Full, full.Backup.Type);
        Assert.Single(full.Backup.Files, f => f.Kind == "xva" && f.Name == "export.xva");
        Assert.Empty(full.Backup.Disks);
        foreach (var inc in new[] { inc1, inc2 })
        {
            Assert.Equal(BackupType.Incremental, inc.Backup.Type);
            Assert.Equal(full.Backup.Id, inc.Backup.BaseId); // cumulative: each needs only the full
            Assert.Null(inc.Backup.FullReason);
            var deltas = inc.Backup.Files.Where(f => f.Kind == "vhd").ToList();
            Assert.Equal(disks.Select(d => d.Uuid).Order(), deltas.Select(d => d.DiskKey!).Order());
            Assert.All(deltas, d => Assert.Equal(d.DiskKey + ".vhd", d.Name));
            Assert.DoesNotContain(inc.Backup.Files, f => f.Kind == "xva");
        }
        // The full's snapshot stays (the base of every incremental); the first incremental's was released by the second.
        Assert.True(await VmExistsAsync(full.Backup.SnapshotUuid!));
        Assert.False(await VmExistsAsync(inc1.Backup.SnapshotUuid!));
        Assert.True(await VmExistsAsync(inc2.Backup.SnapshotUuid!));
        Assert.NotEqual(atFull, atInc1);
        Assert.NotEqual(atInc1, atInc2);

        foreach (var (point, expected, name) in new[] { (full, atFull, "r-full"), (inc1, atInc1, "r-inc1"), (inc2, atInc2, "r-inc2") })
        {
            var result = await _restore.RestoreAsync(Session, Repo, point.Backup, new RestoreOptions { Name = name }, _observer, Timeout());
            var vmRef = await Session.GetByUuidAsync("VM", result.VmUuid!);
            var vm = await Session.GetRecordAsync<VmRecord>(vmRef);
            Assert.False(vm.IsATemplate);
            Assert.False(vm.IsASnapshot);
            Assert.Equal(name, vm.NameLabel);
            Assert.Equal(name, result.VmName);
            Assert.Equal(expected, await DiskHashesAsync(vmRef));
            Assert.Equal(disks.Select(d => d.Uuid).Order(), result.Disks.Select(d => d.SourceKey).Order());
        }
    }

    [Fact]
    public async Task Applying_each_incremental_in_turn_gives_the_same_disks_as_the_chosen_one_alone()
    {
        var disks = await SourceDisksAsync();
        var full = await BackupAsync(BackupType.Full);
        await GuestWriteAsync(disks[0], 1L << 20, 4L << 20, 81);
        var inc1 = await BackupAsync(BackupType.Incremental);
        await GuestWriteAsync(disks[0], 2L << 20, 1L << 20, 82);
        await GuestWriteAsync(disks[1], 900L << 20, 3L << 20, 83);
        var inc2 = await BackupAsync(BackupType.Incremental);

        // The chosen one alone (what XvaRestore does).
        var alone = await _restore.RestoreAsync(Session, Repo, inc2.Backup, new RestoreOptions { Name = "alone" }, _observer, Timeout());
        var aloneHashes = await DiskHashesAsync(await Session.GetByUuidAsync("VM", alone.VmUuid!));

        // Each in turn (what vProtect does): the full, then inc1's deltas, then inc2's.
        var inTurn = await _restore.RestoreAsync(Session, Repo, full.Backup, new RestoreOptions { Name = "in-turn" }, _observer, Timeout());
        var inTurnRef = await Session.GetByUuidAsync("VM", inTurn.VmUuid!);
        var transfer = new XapiHttpTransfer(Session);
        foreach (var inc in new[] { inc1, inc2 })
            foreach (var delta in inc.Backup.Files.Where(f => f.Kind == "vhd"))
            {
                var restoredDisk = inTurn.Disks.Single(d => d.SourceKey == delta.DiskKey);
                var vdiRef = await Session.GetByUuidAsync("VDI", restoredDisk.VdiUuid);
                await using var file = File.OpenRead(Repo.GetFilePath(inc.Backup, delta));
                await transfer.ImportRawVdiAsync(vdiRef, file, file.Length, "vhd", null, Timeout());
            }
        Assert.Equal(aloneHashes, await DiskHashesAsync(inTurnRef));
        Assert.Equal(await DiskHashesAsync(_vmRef), aloneHashes);
    }

    [Fact]
    public async Task The_stored_xva_is_byte_for_byte_the_export_and_the_host_imports_it()
    {
        // Hash the bytes exactly as the host sends them during the backup.
        TestDataPlane.HashingStream? served = null;
        Sim.Routes.Add("GET", "/export", TestDataPlane.Export(Sim, s => served = new TestDataPlane.HashingStream(s)));
        var expected = await DiskHashesAsync(_vmRef);
        var full = await BackupAsync(BackupType.Full, compress: true);
        var entry = full.Backup.Files.Single(f => f.Kind == "xva");
        Assert.Equal("zstd", full.Backup.Properties[XvaKeys.Compression]);
        string path = Repo.GetFilePath(full.Backup, entry);
        Assert.NotNull(served);
        Assert.Equal(served!.Written, entry.Length);
        Assert.Equal(served.Sha256(), entry.Sha256);
        Assert.Equal(served.Sha256(), Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path))).ToLowerInvariant());

        // The host takes the stored file as it is, and the VM it makes has the disks of the snapshot.
        int before = VmCount();
        var transfer = new XapiHttpTransfer(Session);
        await using var file = File.OpenRead(path);
        var imported = await transfer.ImportVmAsync(file, file.Length, null, ct: Timeout());
        Assert.Single(imported);
        Assert.Equal(before + 1, VmCount());
        Assert.Equal(expected, await DiskHashesAsync(imported[0]));
    }

    [Fact]
    public async Task A_corrupted_chunk_in_the_stored_xva_is_found_before_anything_is_imported()
    {
        var full = await BackupAsync(BackupType.Full);
        var entry = full.Backup.Files.Single(f => f.Kind == "xva");
        string path = Repo.GetFilePath(full.Backup, entry);
        // Flip one byte in the first chunk of the system disk (its data starts after ova.xml; the first 8 MiB are filled).
        await using (var fs = new FileStream(path, FileMode.Open, FileAccess.ReadWrite))
        {
            fs.Position = entry.Length / 3;
            int b = fs.ReadByte();
            fs.Position = entry.Length / 3;
            fs.WriteByte((byte)(b ^ 0x5A));
        }
        int vmsBefore = VmCount();
        var ex = await Assert.ThrowsAsync<BackupFormatException>(() =>
            _restore.RestoreAsync(Session, Repo, full.Backup, new RestoreOptions { Name = "never" }, _observer, Timeout()));
        Assert.Equal(0, Volatile.Read(ref _importCalls));
        Assert.Equal(vmsBefore, VmCount());
        Assert.Empty(await Session.GetByNameLabelAsync("VM", "never"));

        // The chunk checksums alone find it too, even when the recorded SHA-256 is made to match the damaged file.
        var forged = new FileManifest { Name = entry.Name, Kind = entry.Kind, Length = entry.Length, Sha256 = Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path))).ToLowerInvariant() };
        var chunkEx = await Assert.ThrowsAsync<BackupFormatException>(() => XvaBackupVerifier.VerifyXvaAsync(path, forged, Timeout()));
        Assert.DoesNotContain("SHA-256", chunkEx.Message);
        _ = ex;
    }

    [Fact]
    public async Task An_incremental_without_a_full_falls_back_to_a_full_with_the_reason()
    {
        var result = await BackupAsync(BackupType.Incremental);
        Assert.Equal(BackupType.Full, result.Backup.Type);
        Assert.Contains("no previous XVA full", result.Backup.FullReason);
        Assert.Contains(_observer.Warnings, w => w.Contains("no previous XVA full"));
        await Assert.ThrowsAsync<IncrementalNotPossibleException>(async () =>
        {
            // A second VM with no backup, under NoFallback: the reason becomes an error instead.
            var other = (await Session.GetByNameLabelAsync("VM", "db-01")).Single();
            await _engine.RunAsync(Session, Repo, other, new BackupOptions { Strategy = BackupStrategy.Xva, Type = BackupType.Incremental, NoFallback = true }, _observer, Timeout());
        });
    }

    [Fact]
    public async Task An_incremental_after_the_full_snapshot_was_deleted_falls_back_to_a_full()
    {
        var full = await BackupAsync(BackupType.Full);
        var snapRef = await Session.GetByUuidAsync("VM", full.Backup.SnapshotUuid!);
        await SnapshotService.DestroyAsync(Session, snapRef, Timeout());
        var result = await BackupAsync(BackupType.Incremental);
        Assert.Equal(BackupType.Full, result.Backup.Type);
        Assert.Contains("no longer on the host", result.Backup.FullReason);
    }

    [Fact]
    public async Task An_incremental_after_a_disk_was_added_falls_back_to_a_full()
    {
        await BackupAsync(BackupType.Full);
        var ops = new ModelOps(Sim.Core);
        var sr = Sim.Core.Db.All("pool").Single().Str("default_SR");
        var vdi = ops.CreateVdi(sr, new Dictionary<string, object?> { ["name_label"] = "added", ["type"] = "user" }, 64L << 20);
        ops.CreateVbd(_vmRef, vdi.Ref, "autodetect", "Disk", "RW", false, false);
        var result = await BackupAsync(BackupType.Incremental);
        Assert.Equal(BackupType.Full, result.Backup.Type);
        Assert.Contains("was added", result.Backup.FullReason);
        Assert.Contains(vdi.Uuid, result.Backup.FullReason);
    }

    [Fact]
    public async Task A_damaged_export_fails_the_backup_commits_nothing_and_removes_the_snapshot()
    {
        // One byte flipped 4 MiB into the stream (inside the system disk's first chunks), as a bad disk or network would.
        Sim.Routes.Add("GET", "/export", TestDataPlane.Export(Sim, s => new TestDataPlane.FlipByteStream(s, 4L << 20)));
        int vmsBefore = VmCount();
        await Assert.ThrowsAsync<XvaBackupException>(() => BackupAsync(BackupType.Full));
        Assert.Empty(Repo.ListBackups(await VmUuidAsync()));
        Assert.Equal(vmsBefore, VmCount()); // the snapshot was destroyed
    }

    [Fact]
    public async Task An_export_cut_short_by_the_host_fails_the_backup_and_commits_nothing()
    {
        // The real data plane drops the connection 5 MiB into the XVA (the stand-in has no faults: this needs the real one).
        Sim.Faults.AddDrop(new VProtect.Simulator.Faults.TransferDropFault(VProtect.Simulator.Faults.TransferChannel.Http, 5L << 20, 1));
        int vmsBefore = VmCount();
        var ex = await Record.ExceptionAsync(() => BackupAsync(BackupType.Full));
        Assert.NotNull(ex);
        Assert.True(ex is XvaBackupException or XapiException or XapiConnectionException or IOException, ex.ToString());
        Assert.Empty(Repo.ListBackups(await VmUuidAsync()));
        Assert.Equal(vmsBefore, VmCount());
        Assert.Empty(Directory.GetDirectories(RepoPath, "*", SearchOption.AllDirectories).Where(d => Path.GetFileName(d).StartsWith('.')));
    }

    [Fact]
    public async Task Purging_the_snapshot_data_is_refused_before_any_snapshot_is_taken()
    {
        int vmsBefore = VmCount();
        var ex = await Assert.ThrowsAsync<ArgumentException>(() => _engine.RunAsync(Session, Repo, _vmRef,
            new BackupOptions { Strategy = BackupStrategy.Xva, Type = BackupType.Full, PurgeSnapshotData = true }, _observer, Timeout()));
        Assert.Contains("CBT strategy only", ex.Message);
        Assert.Equal(vmsBefore, VmCount());
        Assert.Empty(Repo.ListBackups(await VmUuidAsync()));
    }

    [Fact]
    public async Task A_restore_failing_after_the_import_removes_the_imported_vm_and_its_disks()
    {
        var disks = await SourceDisksAsync();
        await BackupAsync(BackupType.Full);
        await GuestWriteAsync(disks[0], 0, 1L << 20, 91);
        var inc = await BackupAsync(BackupType.Incremental);
        int vms = VmCount(), vdis = Sim.Core.Db.All("VDI").Count;
        // The import succeeds, then naming the imported VM fails on the host.
        Sim.Faults.AddMethodFault(new VProtect.Simulator.Faults.XapiMethodFault("VM.set_name_label", "INTERNAL_ERROR", ["injected"], 1));
        var ex = await Assert.ThrowsAsync<XapiException>(() =>
            _restore.RestoreAsync(Session, Repo, inc.Backup, new RestoreOptions { Name = "half" }, _observer, Timeout()));
        Assert.Equal("INTERNAL_ERROR", ex.ErrorCode);
        Assert.Equal(1, Volatile.Read(ref _importCalls));
        Assert.Equal(vms, VmCount());
        Assert.Equal(vdis, Sim.Core.Db.All("VDI").Count);
        Assert.Empty(_observer.Warnings.Where(w => w.Contains("half-restored")));
    }

    private async Task<string> VmUuidAsync() => (await Session.GetRecordAsync<VmRecord>(_vmRef)).Uuid;
}
