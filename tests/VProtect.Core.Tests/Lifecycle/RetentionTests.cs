using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using Xunit;

namespace VProtect.Core.Tests.Lifecycle;

public sealed class RetentionTests : IDisposable
{
    private readonly LifecycleRepo _repo = new();
    public void Dispose() => _repo.Dispose();

    private static BackupManifest Point(string id, BackupType type, DateTimeOffset created) =>
        new() { Id = id, Type = type, CreatedUtc = created, VmUuid = LifecycleRepo.Vm };

    [Fact]
    public void Versions_and_days_expire_whichever_limit_is_hit_first_and_the_newest_always_stays()
    {
        var now = new DateTimeOffset(2026, 11, 27, 0, 0, 0, TimeSpan.Zero);
        var points = new[]
        {
            Point("f1", BackupType.Full, now.AddDays(-20)), Point("i1", BackupType.Incremental, now.AddDays(-19)),
            Point("f2", BackupType.Full, now.AddDays(-10)), Point("i2", BackupType.Incremental, now.AddDays(-9)),
            Point("i3", BackupType.Incremental, now.AddDays(-1)),
        };
        Assert.Equal(new[] { "f1", "i1" }, new RetentionPolicy(KeepLast: 3).Expired(points, now).Order());
        Assert.Equal(new[] { "f1", "f2", "i1", "i2" }, new RetentionPolicy(KeepDays: 5).Expired(points, now).Order());
        Assert.Equal(new[] { "f1", "f2", "i1" }, new RetentionPolicy(KeepLast: 4, KeepDays: 9).Expired(points, now).Order());
        // Fulls by their own rules; incrementals by theirs.
        Assert.Equal(new[] { "f1" }, new RetentionPolicy(KeepFullLast: 1).Expired(points, now).Order());
        Assert.Equal(new[] { "f1", "i1" }, new RetentionPolicy(KeepLast: 2, KeepFullDays: 15).Expired(points, now).Order());
        Assert.Empty(new RetentionPolicy(KeepLast: 0, KeepDays: 0).Expired(new[] { points[^1] }, now));
    }

    [Fact]
    public async Task Rolling_the_full_forward_keeps_every_remaining_point_exact_and_rewrites_nothing()
    {
        var chain = await _repo.WriteCbtChainAsync(4);
        var repo = _repo.Repository;
        var actions = BackupRemover.PlanRemoval(repo, LifecycleRepo.Vm, new[] { chain[0].Id, chain[1].Id });
        var merge = Assert.Single(actions, a => a.Kind == RetentionActionKind.Merge);
        Assert.Equal(chain[2].Id, merge.Backup.Id);
        Assert.Equal(new[] { chain[0].Id, chain[1].Id }, merge.Absorbed.Select(a => a.Id));
        Assert.Equal(2, actions.Count(a => a.Kind == RetentionActionKind.Delete));
        var before = chain.Take(3).Select(b => File.ReadAllBytes(_repo.DataPath(b))).ToList();

        await BackupRemover.ApplyAsync(repo, LifecycleRepo.Vm, () => actions, TimeSpan.FromSeconds(5), null, null, default);

        var left = repo.ListBackups(LifecycleRepo.Vm);
        Assert.Equal(chain.Skip(2).Select(b => b.Id), left.Select(b => b.Id));
        Assert.Equal(BackupType.Full, left[0].Type);
        Assert.Null(left[0].BaseId);
        Assert.Contains("synthetic full", left[0].FullReason);
        foreach (var b in left)
        {
            using var source = repo.OpenDisk(b, LifecycleRepo.DiskKey);
            Assert.Equal(_repo.Expected[b.Id], await LifecycleRepo.ReadAllAsync(source));
        }
        var verifier = new BackupVerifier(repo);
        foreach (var b in left) Assert.Equal(VerificationStatus.Healthy, (await verifier.VerifyAsync(b, default)).Status);
        // Format version 2: the full's and the first incremental's files became lower layers of the synthetic full,
        // byte for byte; its own data file is its top layer, untouched. Nothing was decoded, appended or rewritten.
        var disk = left[0].Disks[0];
        Assert.Equal(BackupManifest.LayeredFormatVersion, left[0].FormatVersion);
        Assert.Equal(new[] { chain[0].Id, chain[1].Id }, disk.BaseLayers!.Select(l => l.Origin));
        string folder = repo.GetBackupFolder(left[0]);
        var layers = disk.Layers().Select(l => File.ReadAllBytes(Path.Combine(folder, l.DataFile))).ToList();
        Assert.Equal(before, layers);
        Assert.Equal(before.Sum(b => (long)b.Length), disk.Layers().Sum(l => new FileInfo(Path.Combine(folder, l.DataFile)).Length));
    }

    [Fact]
    public async Task Removing_a_middle_incremental_merges_it_into_the_next_one_which_keeps_its_base()
    {
        var chain = await _repo.WriteCbtChainAsync(3, seed: 5);
        var repo = _repo.Repository;
        await BackupRemover.ApplyAsync(repo, LifecycleRepo.Vm, () => BackupRemover.PlanRemoval(repo, LifecycleRepo.Vm, new[] { chain[1].Id }),
            TimeSpan.FromSeconds(5), null, null, default);
        var left = repo.ListBackups(LifecycleRepo.Vm);
        Assert.Equal(new[] { chain[0].Id, chain[2].Id, chain[3].Id }, left.Select(b => b.Id));
        Assert.Equal(chain[0].Id, left[1].BaseId);
        Assert.Equal(BackupType.Incremental, left[1].Type);
        foreach (var b in left)
        {
            using var source = repo.OpenDisk(b, LifecycleRepo.DiskKey);
            Assert.Equal(_repo.Expected[b.Id], await LifecycleRepo.ReadAllAsync(source));
        }
    }

    [Fact]
    public async Task A_merge_interrupted_at_every_checkpoint_leaves_a_consistent_restorable_repository()
    {
        var chain = await _repo.WriteCbtChainAsync(3, seed: 9);
        var repo = _repo.Repository;
        var remove = new[] { chain[0].Id, chain[1].Id };
        // Interrupt at the n-th checkpoint, for n = 1, 2, …, until a run completes.
        for (int stopAt = 1; stopAt < 20; stopAt++)
        {
            int seen = 0;
            using var cts = new CancellationTokenSource();
            try
            {
                await BackupRemover.ApplyAsync(repo, LifecycleRepo.Vm, () => BackupRemover.PlanRemoval(repo, LifecycleRepo.Vm, remove.Where(id => repo.GetBackup(LifecycleRepo.Vm, id) is not null)),
                    TimeSpan.FromSeconds(5), null, _ => { if (++seen == stopAt) cts.Cancel(); return Task.CompletedTask; }, cts.Token);
            }
            catch (OperationCanceledException) { }
            foreach (var b in repo.ListBackups(LifecycleRepo.Vm))
            {
                using var source = repo.OpenDisk(b, LifecycleRepo.DiskKey);
                Assert.Equal(_repo.Expected[b.Id], await LifecycleRepo.ReadAllAsync(source));
            }
            if (!cts.IsCancellationRequested) break;
        }
        Assert.Equal(chain.Skip(2).Select(b => b.Id), repo.ListBackups(LifecycleRepo.Vm).Select(b => b.Id));
    }

    [Fact]
    public async Task An_xva_full_stays_while_kept_incrementals_depend_on_it()
    {
        var chain = await _repo.WriteXvaChainAsync(2);
        var actions = BackupRemover.PlanRemoval(_repo.Repository, LifecycleRepo.Vm, new[] { chain[0].Id, chain[1].Id });
        Assert.Contains(actions, a => a.Kind == RetentionActionKind.Keep && a.Backup.Id == chain[0].Id);
        Assert.Contains(actions, a => a.Kind == RetentionActionKind.Delete && a.Backup.Id == chain[1].Id);
        Assert.DoesNotContain(actions, a => a.Kind == RetentionActionKind.Merge);
        await BackupRemover.ApplyAsync(_repo.Repository, LifecycleRepo.Vm, () => actions, TimeSpan.FromSeconds(5), null, null, default);
        Assert.Equal(new[] { chain[0].Id, chain[2].Id }, _repo.Repository.ListBackups(LifecycleRepo.Vm).Select(b => b.Id));
    }
}
