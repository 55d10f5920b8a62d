using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using VProtect.Core.Formats;
using VProtect.Core.IO;
using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using VProtect.Core.Tests.Lifecycle;
using Xunit;

namespace VProtect.Core.Tests.Repository;

/// <summary>
/// Repository format version 2: a merge keeps the absorbed backups' files as lower layers of the target's disk
/// (baseLayers), reads take each range from the newest layer, older readers refuse such a backup, and version-1
/// repositories (written by the version-1 engine, Fixtures/v1-repository) still read, verify and merge.
/// </summary>
public sealed class LayeredFormatTests : IDisposable
{
    private static readonly CompactionPolicy NeverCompact = new(int.MaxValue, double.PositiveInfinity);
    private readonly LifecycleRepo _repo = new();
    public void Dispose() => _repo.Dispose();

    private static async Task<byte[]> ReadOddAsync(IBlockSource source)
    {
        var all = new byte[source.Length];
        // Odd-sized reads cross record, segment and layer boundaries.
        for (long pos = 0; pos < all.Length;)
        {
            int n = (int)Math.Min(199_999, all.Length - pos);
            await source.ReadAsync(pos, all.AsMemory((int)pos, n), default);
            pos += n;
        }
        return all;
    }

    private async Task AssertEveryPointRestoresAsync(BackupRepository repo, IReadOnlyDictionary<string, byte[]> expected)
    {
        var verifier = new BackupVerifier(repo);
        foreach (var b in repo.ListBackups(LifecycleRepo.Vm))
        {
            byte[] read;
            using (var source = repo.OpenDisk(b, LifecycleRepo.DiskKey)) read = await ReadOddAsync(source);
            Assert.True(expected[b.Id].AsSpan().SequenceEqual(read), $"restore point {b.Id} differs from its model");
            var v = await verifier.VerifyAsync(b, default);
            Assert.True(v.Status == VerificationStatus.Healthy, string.Join("; ", v.Problems));
        }
    }

    private static Task Remove(BackupRepository repo, CompactionPolicy policy, params string[] ids) =>
        BackupRemover.ApplyAsync(repo, LifecycleRepo.Vm, () => BackupRemover.PlanRemoval(repo, LifecycleRepo.Vm, ids), TimeSpan.FromSeconds(5), policy, null, null, default);

    [Fact]
    public async Task A_layered_manifest_round_trips_and_plain_backups_stay_version_1()
    {
        var chain = await _repo.WriteCbtChainAsync(2, seed: 3);
        var repo = _repo.Repository;
        string ManifestText(BackupManifest b) => File.ReadAllText(Path.Combine(repo.GetBackupFolder(b), BackupRepository.ManifestFile));
        var plain = JsonNode.Parse(ManifestText(chain[1]))!;
        Assert.Equal(1, (int)plain["formatVersion"]!);
        Assert.Null(plain["disks"]![0]!["baseLayers"]);
        Assert.Null(plain["disks"]![0]!["deadBytes"]);

        await Remove(repo, NeverCompact, chain[0].Id);

        var text = ManifestText(chain[1]);
        var json = JsonNode.Parse(text)!;
        Assert.Equal(2, (int)json["formatVersion"]!);
        var layer = Assert.Single(json["disks"]![0]!["baseLayers"]!.AsArray())!;
        Assert.Equal(chain[0].Id, (string)layer["origin"]!);
        Assert.Equal(chain[0].Disks[0].RecordCount, (int)layer["recordCount"]!);
        Assert.Equal(LifecycleRepo.DiskSize, (long)layer["virtualSize"]!);
        Assert.StartsWith("disks/", (string)layer["dataFile"]!);
        Assert.True(File.Exists(Path.Combine(repo.GetBackupFolder(chain[1]), (string)layer["indexFile"]!)));
        Assert.Equal(chain[1].Disks[0].DataFile, (string)json["disks"]![0]!["dataFile"]!); // the top layer kept its file
        // Read back and written again: the same document.
        var read = repo.GetBackup(LifecycleRepo.Vm, chain[1].Id)!;
        Assert.Equal(text.ReplaceLineEndings(), JsonSerializer.Serialize(read, BackupManifest.Json).ReplaceLineEndings());
        Assert.Equal(2, read.Disks[0].Layers().Count);
        Assert.Equal(read.Disks[0].StoredBytes, read.Disks[0].Layers().Sum(l =>
            new FileInfo(Path.Combine(repo.GetBackupFolder(read), l.DataFile)).Length + new FileInfo(Path.Combine(repo.GetBackupFolder(read), l.IndexFile)).Length));
        // A later plain incremental of the chain is version 1 again.
        var next = await _repo.WriteCbtAsync(LifecycleRepo.Vm, BackupType.Incremental, chain[2].Id, new[] { (0L, new byte[65536]) });
        Assert.Equal(1, (int)JsonNode.Parse(ManifestText(next))!["formatVersion"]!);
    }

    [Fact]
    public async Task Layered_reads_equal_the_model_through_repeated_roll_forwards_and_a_middle_merge()
    {
        var chain = await _repo.WriteCbtChainAsync(7, seed: 11);
        var repo = _repo.Repository;
        // A middle merge: the fourth incremental absorbs the third and keeps its base (a layered incremental).
        await Remove(repo, NeverCompact, chain[3].Id);
        var middle = repo.GetBackup(LifecycleRepo.Vm, chain[4].Id)!;
        Assert.Equal(chain[2].Id, middle.BaseId);
        Assert.Equal(BackupType.Incremental, middle.Type);
        Assert.Equal(2, middle.Disks[0].Layers().Count);
        await AssertEveryPointRestoresAsync(repo, _repo.Expected);
        // Roll the full forward one point at a time: the synthetic full's stack grows by one layer each time.
        int expectedLayers = 1;
        foreach (var gone in new[] { chain[0], chain[1], chain[2], chain[4] })
        {
            await Remove(repo, NeverCompact, gone.Id);
            var full = repo.ListBackups(LifecycleRepo.Vm)[0];
            expectedLayers += gone == chain[2] ? 2 : 1; // chain[4] holds two layers since the middle merge
            Assert.Equal(BackupType.Full, full.Type);
            Assert.Equal(expectedLayers, full.Disks[0].Layers().Count);
            await AssertEveryPointRestoresAsync(repo, _repo.Expected);
        }
        Assert.Equal(new[] { chain[5].Id, chain[6].Id, chain[7].Id }, repo.ListBackups(LifecycleRepo.Vm).Select(b => b.Id));
    }

    [Fact]
    public async Task An_older_reader_refuses_a_layered_backup_that_it_would_misread()
    {
        var chain = await _repo.WriteCbtChainAsync(2, seed: 4);
        var repo = _repo.Repository;
        await Remove(repo, NeverCompact, chain[0].Id);
        string folder = repo.GetBackupFolder(chain[1]);
        // The reader rule of version 1 (newest readable = 1): refuse, naming the versions.
        var ex = Assert.Throws<BackupFormatException>(() => BackupRepository.ReadManifest(folder, newestReadable: 1));
        Assert.Contains("format version 2", ex.Message);
        Assert.Contains("reads up to 1", ex.Message);
        Assert.Equal(chain[2].Id, BackupRepository.ReadManifest(repo.GetBackupFolder(chain[2]), newestReadable: 1).Id);
        // Why: a reader that ignored baseLayers would read the top layer only, which is not the restore point.
        var layered = repo.GetBackup(LifecycleRepo.Vm, chain[1].Id)!;
        var d = layered.Disks[0];
        using (var topOnly = new ChainBlockSource(new[] { new ChainBlockSource.Layer(layered.Id, Path.Combine(folder, d.DataFile), Path.Combine(folder, d.IndexFile), d.VirtualSize) }, d.VirtualSize))
            Assert.NotEqual(_repo.Expected[chain[1].Id], await ReadOddAsync(topOnly));
        // A manifest from a newer module is refused by this one.
        var newer = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, BackupRepository.ManifestFile)))!;
        newer["formatVersion"] = BackupManifest.CurrentFormatVersion + 1;
        File.WriteAllText(Path.Combine(folder, BackupRepository.ManifestFile), newer.ToJsonString());
        var problems = new List<BackupFormatException>();
        Assert.DoesNotContain(repo.ListBackups(LifecycleRepo.Vm, problems), b => b.Id == chain[1].Id);
        Assert.Contains($"format version {BackupManifest.CurrentFormatVersion + 1}", Assert.Single(problems).Message);
    }

    [Fact]
    public async Task A_version_1_repository_reads_verifies_and_merges_into_version_2()
    {
        string fixture = Path.Combine(AppContext.BaseDirectory, "Repository", "Fixtures", "v1-repository");
        string root = Path.Combine(_repo.Root, "v1");
        foreach (var file in Directory.EnumerateFiles(fixture, "*", SearchOption.AllDirectories))
        {
            string to = Path.Combine(root, Path.GetRelativePath(fixture, file));
            Directory.CreateDirectory(Path.GetDirectoryName(to)!);
            File.Copy(file, to);
        }
        var expected = JsonSerializer.Deserialize<Dictionary<string, string>>(File.ReadAllText(Path.Combine(root, "expected-sha256.json")))!;
        var repo = BackupRepository.Open(root);
        var backups = repo.ListBackups(LifecycleRepo.Vm);
        Assert.Equal(expected.Keys.Order(), backups.Select(b => b.Id).Order());
        Assert.All(backups, b => Assert.Equal(BackupManifest.PlainFormatVersion, b.FormatVersion));
        Assert.Contains("synthetic full", backups[0].FullReason); // rolled forward by the version-1 engine
        async Task AssertAllAsync()
        {
            var verifier = new BackupVerifier(repo);
            foreach (var b in repo.ListBackups(LifecycleRepo.Vm))
            {
                using (var source = repo.OpenDisk(b, LifecycleRepo.DiskKey))
                    Assert.Equal(expected[b.Id], Convert.ToHexString(SHA256.HashData(await ReadOddAsync(source))));
                Assert.Equal(VerificationStatus.Healthy, (await verifier.VerifyAsync(b, default)).Status);
            }
        }
        await AssertAllAsync();
        // The version-1 synthetic full (with the dead bytes its link-and-append merge left) rolls forward as a layer.
        long v1DataFile = new FileInfo(Path.Combine(repo.GetBackupFolder(backups[0]), backups[0].Disks[0].DataFile)).Length;
        await Remove(repo, NeverCompact, backups[0].Id);
        var left = repo.ListBackups(LifecycleRepo.Vm);
        Assert.Equal(backups.Skip(1).Select(b => b.Id), left.Select(b => b.Id));
        Assert.Equal(BackupManifest.LayeredFormatVersion, left[0].FormatVersion);
        Assert.Equal(backups[0].Id, left[0].Disks[0].BaseLayers![0].Origin);
        Assert.InRange(left[0].Disks[0].DeadBytes, 1, v1DataFile);
        await AssertAllAsync();
        // And a compaction turns it back into a plain version-1 backup with the same content.
        await Remove(repo, CompactionPolicy.Always, left[0].Id);
        var last = Assert.Single(repo.ListBackups(LifecycleRepo.Vm));
        Assert.Equal(BackupManifest.PlainFormatVersion, last.FormatVersion);
        Assert.Null(last.Disks[0].BaseLayers);
        await AssertAllAsync();
    }
}
