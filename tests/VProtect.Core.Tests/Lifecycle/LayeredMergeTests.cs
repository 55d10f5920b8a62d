using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using Xunit;

namespace VProtect.Core.Tests.Lifecycle;

/// <summary>
/// Merges in format version 2: a roll-forward links the absorbed files as lower layers (nothing decoded or rewritten),
/// dead bytes are accounted, the compaction rule rewrites a plain full when layers or dead bytes pile up, Test-VMBackup
/// checks every record of every layer, and an interrupted merge or compaction leaves a consistent repository.
/// </summary>
public sealed class LayeredMergeTests : IDisposable
{
    private const int MiB = 1 << 20;
    private static readonly CompactionPolicy NeverCompact = new(int.MaxValue, double.PositiveInfinity);
    private readonly LifecycleRepo _repo = new();
    public void Dispose() => _repo.Dispose();

    /// <summary>Half random, half a pattern: compresses about 2:1, so stored lengths differ from lengths.</summary>
    private static byte[] Content(int length, int seed)
    {
        var b = new byte[length];
        var rng = new Random(seed);
        for (int at = 0; at < length; at += 8192)
        {
            rng.NextBytes(b.AsSpan(at, Math.Min(4096, length - at)));
            for (int k = at + 4096; k < Math.Min(at + 8192, length); k++) b[k] = (byte)(k * 31);
        }
        return b;
    }

    private async Task<BackupManifest> WriteAsync(byte[] model, BackupType type, string? baseId, params (long Offset, byte[] Data)[] ranges)
    {
        foreach (var (o, d) in ranges) d.CopyTo(model, o);
        var b = await _repo.WriteCbtAsync(LifecycleRepo.Vm, type, baseId, ranges);
        _repo.Expected[b.Id] = (byte[])model.Clone();
        return b;
    }

    private Task Remove(CompactionPolicy policy, params string[] ids) =>
        BackupRemover.ApplyAsync(_repo.Repository, LifecycleRepo.Vm, () => BackupRemover.PlanRemoval(_repo.Repository, LifecycleRepo.Vm, ids),
            TimeSpan.FromSeconds(5), policy, null, null, default);

    private async Task AssertRestorableAsync()
    {
        var repo = _repo.Repository;
        var verifier = new BackupVerifier(repo);
        foreach (var b in repo.ListBackups(LifecycleRepo.Vm))
        {
            byte[] read;
            using (var source = repo.OpenDisk(b, LifecycleRepo.DiskKey)) read = await LifecycleRepo.ReadAllAsync(source);
            Assert.True(_repo.Expected[b.Id].AsSpan().SequenceEqual(read), $"restore point {b.Id} differs from its model");
            var v = await verifier.VerifyAsync(b, default);
            Assert.True(v.Status == VerificationStatus.Healthy, string.Join("; ", v.Problems));
        }
    }

    private BlockRecord[] Index(BackupManifest b)
    {
        var d = b.Disks[0];
        string folder = _repo.Repository.GetBackupFolder(b);
        return BlockIndex.Read(Path.Combine(folder, d.IndexFile), d.VirtualSize, new FileInfo(Path.Combine(folder, d.DataFile)).Length);
    }

    /// <summary>Files under the backup's disks/ folder, by name.</summary>
    private string[] DiskFiles(BackupManifest b) =>
        Directory.EnumerateFiles(Path.Combine(_repo.Repository.GetBackupFolder(b), "disks")).Select(f => Path.GetFileName(f)).Order().ToArray();

    [Fact]
    public async Task Dead_bytes_are_the_stored_bytes_of_what_newer_layers_overwrite()
    {
        var model = new byte[LifecycleRepo.DiskSize];
        var full = await WriteAsync(model, BackupType.Full, null, Enumerable.Range(0, 4).Select(i => ((long)i * MiB, Content(MiB, i))).ToArray());
        // Record 1 overwritten whole, record 2 half, record 3 not at all.
        var inc = await WriteAsync(model, BackupType.Incremental, full.Id, (1L * MiB, Content(MiB, 10)), (2L * MiB, Content(MiB / 2, 11)));
        var fullRecords = Index(full);
        Assert.Equal(4, fullRecords.Length);
        Assert.All(fullRecords, r => Assert.True(r.StoredLength < r.Length, "the content must compress"));

        await Remove(NeverCompact, full.Id);

        var merged = _repo.Repository.GetBackup(LifecycleRepo.Vm, inc.Id)!;
        var disk = merged.Disks[0];
        long fullDataFile = new FileInfo(Path.Combine(_repo.Repository.GetBackupFolder(merged), disk.BaseLayers![0].DataFile)).Length;
        Assert.Equal(fullRecords.Sum(r => (long)r.StoredLength), fullDataFile);
        // Dead: all of record 1; of record 2 the stored share of its overwritten half.
        long st2 = fullRecords[2].StoredLength;
        Assert.Equal(fullRecords[1].StoredLength + (st2 - st2 * (MiB / 2) / MiB), disk.DeadBytes);
        Assert.Equal(4L * MiB, disk.DataBytes); // the restore point's non-zero content
        await AssertRestorableAsync();
    }

    [Fact]
    public async Task A_layer_nothing_reads_any_more_is_dropped_and_the_backup_stays_plain()
    {
        var model = new byte[LifecycleRepo.DiskSize];
        var full = await WriteAsync(model, BackupType.Full, null, (0L, Content(MiB, 1)), (3L * MiB, Content(MiB / 4, 2)));
        var inc = await WriteAsync(model, BackupType.Incremental, full.Id, (0L, Content(2 * MiB, 3)), (3L * MiB, new byte[MiB / 2]));
        var before = DiskFiles(inc);

        await Remove(NeverCompact, full.Id);

        var merged = _repo.Repository.GetBackup(LifecycleRepo.Vm, inc.Id)!;
        Assert.Equal(BackupType.Full, merged.Type);
        Assert.Equal(BackupManifest.PlainFormatVersion, merged.FormatVersion);
        Assert.Null(merged.Disks[0].BaseLayers);
        Assert.Equal(0, merged.Disks[0].DeadBytes);
        Assert.Equal(before, DiskFiles(merged)); // the full's files were not even linked
        await AssertRestorableAsync();
    }

    [Fact]
    public async Task A_roll_forward_links_the_full_and_never_rewrites_it()
    {
        var chain = await _repo.WriteCbtChainAsync(1, seed: 21);
        var repo = _repo.Repository;
        byte[] incData = File.ReadAllBytes(_repo.DataPath(chain[1]));
        await using (var chainLock = await repo.LockChainAsync(LifecycleRepo.Vm, TimeSpan.FromSeconds(5), default))
            await ChainMerger.MergeAsync(repo, chainLock, chain[1], new[] { chain[0] }, NeverCompact, null, default);
        var merged = repo.GetBackup(LifecycleRepo.Vm, chain[1].Id)!;
        string layerData = Path.Combine(repo.GetBackupFolder(merged), merged.Disks[0].BaseLayers![0].DataFile);
        Assert.Equal(incData, File.ReadAllBytes(Path.Combine(repo.GetBackupFolder(merged), merged.Disks[0].DataFile)));
        // The same file, not a copy: a byte changed through the full's own path shows through the layer's path.
        string fullData = _repo.DataPath(chain[0]);
        byte original = File.ReadAllBytes(fullData)[100];
        using (var fs = new FileStream(fullData, FileMode.Open, FileAccess.Write)) { fs.Position = 100; fs.WriteByte((byte)~original); }
        Assert.Equal((byte)~original, File.ReadAllBytes(layerData)[100]);
    }

    [Fact]
    public async Task More_layers_than_the_limit_fold_the_upper_layers_and_keep_the_full_linked()
    {
        var chain = await _repo.WriteCbtChainAsync(5, seed: 31);
        var policy = new CompactionPolicy(MaxLayers: 3, MaxDeadFraction: double.PositiveInfinity);
        byte[] fullData = File.ReadAllBytes(_repo.DataPath(chain[0]));
        await Remove(policy, chain[0].Id);
        await Remove(policy, chain[1].Id);
        var stacked = _repo.Repository.GetBackup(LifecycleRepo.Vm, chain[2].Id)!;
        Assert.Equal(3, stacked.Disks[0].Layers().Count);
        await AssertRestorableAsync();

        await Remove(policy, chain[2].Id); // four layers would exceed the limit

        var folded = _repo.Repository.GetBackup(LifecycleRepo.Vm, chain[3].Id)!;
        var disk = folded.Disks[0];
        Assert.Equal(BackupType.Full, folded.Type);
        Assert.Equal(BackupManifest.LayeredFormatVersion, folded.FormatVersion);
        var bottom = Assert.Single(disk.BaseLayers!);
        Assert.Equal(chain[0].Id, bottom.Origin);
        string folder = _repo.Repository.GetBackupFolder(folded);
        Assert.Equal(fullData, File.ReadAllBytes(Path.Combine(folder, bottom.DataFile))); // the full, as written
        // The folded top layer holds the newest version of what the three incrementals changed, with no dead bytes.
        Assert.Equal(new FileInfo(_repo.DataPath(folded)).Length, Index(folded).Sum(r => (long)r.StoredLength));
        Assert.NotEqual(chain[3].Disks[0].DataFile, disk.DataFile);
        Assert.True(disk.DeadBytes > 0 && disk.DeadBytes < fullData.Length, $"dead bytes {disk.DeadBytes}");
        Assert.Equal(new[] { bottom.DataFile, bottom.IndexFile, disk.DataFile, disk.IndexFile }.Select(Path.GetFileName).Order(), DiskFiles(folded));
        await AssertRestorableAsync();

        await Remove(policy, chain[3].Id); // the next merge stacks again on the folded full
        Assert.Equal(3, _repo.Repository.GetBackup(LifecycleRepo.Vm, chain[4].Id)!.Disks[0].Layers().Count);
        await AssertRestorableAsync();
    }

    [Fact]
    public async Task A_layer_limit_below_two_rewrites_a_plain_full_with_no_dead_bytes()
    {
        var chain = await _repo.WriteCbtChainAsync(2, seed: 33);
        await Remove(NeverCompact, chain[0].Id);
        await Remove(new CompactionPolicy(MaxLayers: 1, MaxDeadFraction: double.PositiveInfinity), chain[1].Id);
        var plain = _repo.Repository.GetBackup(LifecycleRepo.Vm, chain[2].Id)!;
        var disk = plain.Disks[0];
        Assert.Equal(BackupType.Full, plain.Type);
        Assert.Equal(BackupManifest.PlainFormatVersion, plain.FormatVersion);
        Assert.Null(disk.BaseLayers);
        Assert.Equal(0, disk.DeadBytes);
        Assert.Equal(new[] { Path.GetFileName(disk.DataFile), Path.GetFileName(disk.IndexFile) }.Order(), DiskFiles(plain));
        Assert.Equal(new FileInfo(_repo.DataPath(plain)).Length, Index(plain).Sum(r => (long)r.StoredLength));
        await AssertRestorableAsync();
    }

    [Theory]
    [InlineData(0.10, true)]
    [InlineData(0.30, false)]
    public async Task Dead_bytes_above_the_limit_compact_the_merge(double maxDeadFraction, bool compacts)
    {
        var model = new byte[LifecycleRepo.DiskSize];
        var full = await WriteAsync(model, BackupType.Full, null, Enumerable.Range(0, 4).Select(i => ((long)i * MiB, Content(MiB, i))).ToArray());
        var inc = await WriteAsync(model, BackupType.Incremental, full.Id, (2L * MiB, Content(MiB, 9))); // a fifth of the stack dead
        long overwritten = Index(full)[2].StoredLength;
        await Remove(new CompactionPolicy(MaxLayers: 100, MaxDeadFraction: maxDeadFraction), full.Id);
        var merged = _repo.Repository.GetBackup(LifecycleRepo.Vm, inc.Id)!;
        Assert.Equal(compacts, merged.Disks[0].BaseLayers is null);
        Assert.Equal(compacts ? 0 : overwritten, merged.Disks[0].DeadBytes);
        await AssertRestorableAsync();
    }

    [Fact]
    public async Task Test_VMBackup_checks_every_record_of_every_layer_even_overwritten_ones()
    {
        var model = new byte[LifecycleRepo.DiskSize];
        var full = await WriteAsync(model, BackupType.Full, null, Enumerable.Range(0, 3).Select(i => ((long)i * MiB, Content(MiB, i))).ToArray());
        var inc = await WriteAsync(model, BackupType.Incremental, full.Id, (1L * MiB, Content(MiB, 7)));
        var shadowed = Index(full)[1];
        await Remove(NeverCompact, full.Id);
        var merged = _repo.Repository.GetBackup(LifecycleRepo.Vm, inc.Id)!;
        var verifier = new BackupVerifier(_repo.Repository);
        var healthy = await verifier.VerifyAsync(merged, default);
        Assert.Equal(VerificationStatus.Healthy, healthy.Status);
        Assert.Equal(4, healthy.BlocksChecked); // three records of the lower layer, one of the top

        // Damage a record no read uses any more: restores are unaffected, verification still finds it.
        string layerData = Path.Combine(_repo.Repository.GetBackupFolder(merged), merged.Disks[0].BaseLayers![0].DataFile);
        using (var fs = new FileStream(layerData, FileMode.Open, FileAccess.ReadWrite))
        {
            fs.Position = shadowed.FileOffset + shadowed.StoredLength / 2;
            int b = fs.ReadByte();
            fs.Position--;
            fs.WriteByte((byte)(b ^ 0x40));
        }
        using (var source = _repo.Repository.OpenDisk(merged, LifecycleRepo.DiskKey))
            Assert.Equal(_repo.Expected[inc.Id], await LifecycleRepo.ReadAllAsync(source));
        var damaged = await new BackupVerifier(_repo.Repository).VerifyAsync(merged, default);
        Assert.Equal(VerificationStatus.Damaged, damaged.Status);
        var problem = Assert.Single(damaged.Problems);
        Assert.Equal(layerData, problem.File);
        Assert.Equal(shadowed.FileOffset, problem.Offset);

        // A lower layer's index gone: named too.
        string layerIndex = Path.Combine(_repo.Repository.GetBackupFolder(merged), merged.Disks[0].BaseLayers![0].IndexFile);
        File.Delete(layerIndex);
        var missing = await new BackupVerifier(_repo.Repository).VerifyAsync(merged, default);
        Assert.Contains(missing.Problems, p => p.File == layerIndex);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task A_merge_or_compaction_interrupted_at_every_checkpoint_leaves_a_consistent_repository(bool compact)
    {
        var chain = await _repo.WriteCbtChainAsync(4, seed: 41);
        var repo = _repo.Repository;
        await Remove(NeverCompact, chain[0].Id); // the synthetic full is layered already
        var policy = compact ? CompactionPolicy.Always : NeverCompact;
        var remove = new[] { chain[1].Id, chain[2].Id };
        int interrupted = 0;
        for (int stopAt = 1; stopAt < 20; stopAt++)
        {
            int seen = 0;
            using var cts = new CancellationTokenSource();
            try
            {
                await BackupRemover.ApplyAsync(repo, LifecycleRepo.Vm,
                    () => BackupRemover.PlanRemoval(repo, LifecycleRepo.Vm, remove.Where(id => repo.GetBackup(LifecycleRepo.Vm, id) is not null)),
                    TimeSpan.FromSeconds(5), policy, null, _ => { if (++seen == stopAt) cts.Cancel(); return Task.CompletedTask; }, cts.Token);
            }
            catch (OperationCanceledException) { interrupted++; }
            await AssertRestorableAsync();
            if (!cts.IsCancellationRequested) break;
        }
        Assert.True(interrupted >= 3, $"only {interrupted} interruptions");
        var left = repo.ListBackups(LifecycleRepo.Vm);
        Assert.Equal(new[] { chain[3].Id, chain[4].Id }, left.Select(b => b.Id));
        Assert.Equal(compact, left[0].Disks[0].BaseLayers is null);
        // Nothing an interrupted run left behind survives the next run: every file under disks/ is referenced.
        await Remove(NeverCompact);
        foreach (var b in repo.ListBackups(LifecycleRepo.Vm))
            Assert.Equal(b.Disks[0].Layers().SelectMany(l => new[] { Path.GetFileName(l.DataFile), Path.GetFileName(l.IndexFile) }).Order(), DiskFiles(b));
    }
}
