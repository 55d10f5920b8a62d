using VProtect.Core.Backup;
using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;
using VProtect.Simulator.Scenario;
using Xunit;

namespace VProtect.Simulator.Tests.Lifecycle;

/// <summary>Finding the snapshots this module left on the pool, telling orphans from the kept one, and removing them.</summary>
public sealed class BackupSnapshotsTests : IAsyncLifetime
{
    private XenSimulator _sim = null!;
    private XapiSession _session = null!;
    private VmRecord _vm = null!;
    private readonly string _repoPath = Path.Combine(Path.GetTempPath(), "vprotect-snap-tests", Guid.NewGuid().ToString("n"));

    public async Task InitializeAsync()
    {
        _sim = await XenSimulator.StartAsync(new SimulatorOptions { HttpsPort = null });
        _session = await XapiSession.LoginAsync(_sim.Url, _sim.User, _sim.Password);
        var vmRef = (await _session.GetByNameLabelAsync("VM", DefaultScenario.WebVm)).Single();
        _vm = await _session.GetRecordAsync<VmRecord>(vmRef, default);
    }

    public async Task DisposeAsync()
    {
        await _session.DisposeAsync();
        await _sim.DisposeAsync();
        try { Directory.Delete(_repoPath, recursive: true); } catch (DirectoryNotFoundException) { }
    }

    private sealed class Quiet : IBackupObserver
    {
        public void OnProgress(BackupProgress p) { }
        public void OnWarning(string message) { }
        public void OnVerbose(string message) { }
    }

    private Task<SnapshotInfo> TakeAsync(string name) =>
        SnapshotService.TakeAsync(_session, _vm, name, quiesce: false, Array.Empty<string>(), new Quiet(), default);

    [Fact]
    public async Task Orphans_are_the_unfinished_and_the_superseded_and_the_newest_kept_one_is_not()
    {
        var crashed = await TakeAsync("vprotect crashed run");
        var older = await TakeAsync("vprotect older kept");
        await SnapshotService.MarkKeptAsync(_session, older.Ref, "20260101T000000000Z-aaaaaa", default);
        var newest = await TakeAsync("vprotect newest kept");
        await SnapshotService.MarkKeptAsync(_session, newest.Ref, "20260102T000000000Z-bbbbbb", default);
        // A snapshot someone else took is never listed.
        await _session.CallAsyncTaskAsync("VM.snapshot", new object?[] { _vm.OpaqueRef, "admin's own", Array.Empty<object?>() }, null, default);

        var found = await BackupSnapshots.FindAsync(_session, null, null, default);
        Assert.Equal(new[] { crashed.Uuid, older.Uuid, newest.Uuid }.OrderBy(u => u), found.Select(s => s.Uuid).OrderBy(u => u));
        Assert.Contains("did not finish", found.Single(s => s.Uuid == crashed.Uuid).OrphanReason);
        Assert.Contains("newer", found.Single(s => s.Uuid == older.Uuid).OrphanReason);
        var kept = found.Single(s => s.Uuid == newest.Uuid);
        Assert.False(kept.IsOrphaned);
        Assert.Equal(_vm.Uuid, kept.VmUuid);
        Assert.Equal("20260102T000000000Z-bbbbbb", kept.BackupId);

        // Checked against a repository that lacks its backup, the kept one is an orphan too.
        var repo = BackupRepository.Open(_repoPath, create: true);
        var withRepo = await BackupSnapshots.FindAsync(_session, _vm.Uuid, repo, default);
        Assert.Contains("not in the repository", withRepo.Single(s => s.Uuid == newest.Uuid).OrphanReason);

        // Removing the orphans leaves only the kept one (and the admin's snapshot).
        foreach (var orphan in found.Where(s => s.IsOrphaned))
            await SnapshotService.DestroyAsync(_session, orphan.OpaqueRef, default);
        var after = await BackupSnapshots.FindAsync(_session, null, null, default);
        Assert.Equal(newest.Uuid, Assert.Single(after).Uuid);
        var all = await _session.GetAllRecordsAsync<VmRecord>(default);
        Assert.Contains(all, v => v.IsASnapshot && v.NameLabel == "admin's own");
    }
}
