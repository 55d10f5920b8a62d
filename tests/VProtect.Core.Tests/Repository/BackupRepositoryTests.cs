using System.Security.Cryptography;
using VProtect.Core.Formats;
using VProtect.Core.IO;
using VProtect.Core.Repository;
using Xunit;

namespace VProtect.Core.Tests.Repository;

public sealed class BackupRepositoryTests : IDisposable
{
    private const string Vm = "0b8f6a2e-1c3d-4e5f-8a9b-0c1d2e3f4a5b";
    private readonly string _root = Path.Combine(Path.GetTempPath(), "vprotect-repo-tests", Guid.NewGuid().ToString("n"));

    public void Dispose()
    {
        try { Directory.Delete(_root, recursive: true); } catch (DirectoryNotFoundException) { }
    }

    private static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    private static async Task<BackupManifest> WriteBackupAsync(BackupRepository repo, BackupType type, string? baseId,
        long size, IEnumerable<(long Offset, byte[] Data)> ranges)
    {
        await using var chainLock = await repo.LockChainAsync(Vm, TimeSpan.FromSeconds(5), default);
        await using var writer = repo.BeginBackup(chainLock, new BackupManifest { VmUuid = Vm, VmName = "web01", Strategy = BackupStrategy.Cbt, Type = type, BaseId = baseId });
        var disk = writer.AddDisk(new DiskManifest { Key = "disk-a", Device = "xvda", VirtualSize = size });
        foreach (var (offset, data) in ranges.OrderBy(r => r.Offset))
        {
            if (data.All(b => b == 0)) await disk.WriteZeroesAsync(offset, data.Length, default);
            else await disk.WriteAsync(offset, data, default);
        }
        await disk.CompleteAsync(default);
        await writer.WriteVmMetadataAsync(new { name = "web01" }, default);
        return await writer.CommitAsync(default);
    }

    private static async Task<byte[]> ReadAllAsync(IBlockSource source)
    {
        var all = new byte[source.Length];
        // Odd-sized reads cross record and segment boundaries.
        for (long pos = 0; pos < all.Length;)
        {
            int n = (int)Math.Min(300_001, all.Length - pos);
            await source.ReadAsync(pos, all.AsMemory((int)pos, n), default);
            pos += n;
        }
        return all;
    }

    [Fact]
    public async Task A_chain_of_random_incrementals_restores_exactly_the_model_at_every_point()
    {
        var repo = BackupRepository.Open(_root, create: true);
        var rng = new Random(42);
        const long size = 24L << 20;
        var model = new byte[size];
        var points = new List<(BackupManifest Backup, byte[] Expected)>();
        string? baseId = null;
        for (int generation = 0; generation < 6; generation++)
        {
            var ranges = new List<(long, byte[])>();
            long pos = 0;
            while (true)
            {
                pos += rng.Next(0, 4 << 20) / 65536 * 65536;
                int len = rng.Next(1, 40) * 65536;
                if (pos + len > size) break;
                var data = rng.Next(5) == 0 ? new byte[len] : Pattern(len, rng.Next());
                ranges.Add((pos, data));
                data.CopyTo(model, pos);
                pos += len;
            }
            var b = await WriteBackupAsync(repo, generation == 0 ? BackupType.Full : BackupType.Incremental, baseId, size, ranges);
            points.Add((b, (byte[])model.Clone()));
            baseId = b.Id;
        }
        Assert.Equal(6, repo.ListBackups(Vm).Count);
        foreach (var (backup, expected) in points)
        {
            using var source = repo.OpenDisk(backup, "disk-a");
            var actual = await ReadAllAsync(source);
            Assert.True(expected.AsSpan().SequenceEqual(actual), $"restore point {backup.Id} differs from the model");
            // Everything outside the allocated extents reads as zeros.
            long covered = 0;
            await foreach (var e in source.GetAllocatedExtentsAsync(0, size, default)) covered += e.Length;
            Assert.True(covered <= size);
        }
    }

    [Fact]
    public async Task Records_encoded_in_parallel_are_stored_in_disk_order_even_when_the_caller_reuses_its_buffer()
    {
        // The writer hashes and compresses several records at once; the caller's buffer is overwritten as soon as each
        // write returns (as the NBD and VHD readers do), so the writer must have copied it, and the index must still
        // list records in disk order with ascending file offsets.
        var repo = BackupRepository.Open(_root, create: true);
        const int records = 64, recordSize = 1 << 20;
        var model = new byte[(long)records * recordSize];
        var rng = new Random(7);
        var reused = new byte[recordSize];
        BackupManifest backup;
        await using (var chainLock = await repo.LockChainAsync(Vm, TimeSpan.FromSeconds(5), default))
        await using (var writer = repo.BeginBackup(chainLock, new BackupManifest { VmUuid = Vm, VmName = "web01", Strategy = BackupStrategy.Cbt, Type = BackupType.Full }))
        {
            var disk = writer.AddDisk(new DiskManifest { Key = "disk-a", Device = "xvda", VirtualSize = model.Length });
            for (int i = 0; i < records; i++)
            {
                long offset = (long)i * recordSize;
                switch (i % 4)
                {
                    case 0: rng.NextBytes(reused); break;                                   // incompressible: stored raw
                    case 1: reused.AsSpan().Fill((byte)(i * 3 + 1)); break;               // compresses to almost nothing
                    case 2: Array.Clear(reused); await disk.WriteZeroesAsync(offset, recordSize, default); continue;
                    default: rng.NextBytes(reused.AsSpan(0, recordSize / 2)); reused.AsSpan(recordSize / 2).Fill(9); break;
                }
                reused.CopyTo(model, offset);
                await disk.WriteAsync(offset, reused, default);
                rng.NextBytes(reused); // the caller reuses its buffer at once
            }
            await disk.CompleteAsync(default);
            await writer.WriteVmMetadataAsync(new { name = "web01" }, default);
            backup = await writer.CommitAsync(default);
        }
        using var source = repo.OpenDisk(backup, "disk-a");
        var stored = await ReadAllAsync(source);
        Assert.True(model.AsSpan().SequenceEqual(stored), "the stored disk differs from what was written");
        var diskManifest = backup.Disks.Single();
        Assert.Equal(records, diskManifest.RecordCount);
        Assert.True(diskManifest.StoredBytes < (long)records * recordSize * 3 / 4, "compressible and zero records must not be stored in full");
    }

    [Fact]
    public async Task Concurrent_reads_of_a_chain_return_exact_data_while_decompressed_records_are_reused()
    {
        // The source keeps a few decompressed records and reuses the buffers of evicted ones; a reader still copying
        // from a record must never see it overwritten by another reader's record.
        var repo = BackupRepository.Open(_root, create: true);
        const int recordSize = 1 << 20, records = 24;
        var model = new byte[records * recordSize];
        var fullData = Pattern(model.Length, 11);
        fullData.CopyTo(model, 0);
        var full = await WriteBackupAsync(repo, BackupType.Full, null, model.Length, [(0L, fullData)]);
        var changes = Enumerable.Range(0, records).Where(i => i % 3 == 1)
            .Select(i => ((long)i * recordSize + recordSize / 4, Pattern(recordSize / 2, 100 + i))).ToList();
        foreach (var (o, d) in changes) d.CopyTo(model, o);
        var inc = await WriteBackupAsync(repo, BackupType.Incremental, full.Id, model.Length, changes);
        using var source = repo.OpenDisk(inc, "disk-a");
        var readers = Enumerable.Range(0, 8).Select(t => Task.Run(async () =>
        {
            var rng = new Random(t);
            var buffer = new byte[3 * recordSize];
            for (int k = 0; k < 40; k++)
            {
                int length = rng.Next(1, buffer.Length);
                long offset = rng.NextInt64(0, model.Length - length);
                await source.ReadAsync(offset, buffer.AsMemory(0, length), default);
                Assert.True(model.AsSpan((int)offset, length).SequenceEqual(buffer.AsSpan(0, length)), $"reader {t} read wrong data at {offset}+{length}");
            }
        })).ToArray();
        await Task.WhenAll(readers);
    }

    [Fact]
    public async Task Each_range_of_the_newest_point_is_read_from_the_newest_backup_that_has_it()
    {
        var repo = BackupRepository.Open(_root, create: true);
        var full = await WriteBackupAsync(repo, BackupType.Full, null, 8 << 20, new[] { (0L, Pattern(8 << 20, 1)) });
        var inc = await WriteBackupAsync(repo, BackupType.Incremental, full.Id, 8 << 20, new[] { (1L << 20, Pattern(65536, 2)) });
        using var source = repo.OpenDisk(inc, "disk-a");
        Assert.Equal(65536, source.BytesByBackup[inc.Id]);
        Assert.Equal((8 << 20) - 65536, source.BytesByBackup[full.Id]);
    }

    [Fact]
    public async Task An_aborted_backup_is_never_listed_and_leaves_no_folder()
    {
        var repo = BackupRepository.Open(_root, create: true);
        await using (var chainLock = await repo.LockChainAsync(Vm, TimeSpan.FromSeconds(5), default))
        {
            await using var writer = repo.BeginBackup(chainLock, new BackupManifest { VmUuid = Vm, Type = BackupType.Full });
            var disk = writer.AddDisk(new DiskManifest { Key = "disk-a", VirtualSize = 1 << 20 });
            await disk.WriteAsync(0, Pattern(4096, 3), default);
            // no commit: disposal aborts
        }
        Assert.Empty(repo.ListBackups(Vm));
        Assert.Empty(Directory.GetDirectories(Path.Combine(_root, "vms", Vm)));
    }

    [Fact]
    public async Task A_crashed_run_leaves_a_partial_folder_that_is_not_listed_and_is_cleaned_by_the_next_run()
    {
        var repo = BackupRepository.Open(_root, create: true);
        // What a killed process leaves: a partial folder with data but never renamed.
        string partial = Path.Combine(_root, "vms", Vm, ".partial-20260101T000000000Z-abcdef");
        Directory.CreateDirectory(Path.Combine(partial, "disks"));
        File.WriteAllBytes(Path.Combine(partial, "disks", "disk-a.data"), Pattern(100, 4));
        File.WriteAllText(Path.Combine(partial, "backup.json"), "{ \"id\": \"20260101T000000000Z-abcdef\" }");
        Assert.Empty(repo.ListBackups(Vm));
        await using var chainLock = await repo.LockChainAsync(Vm, TimeSpan.FromSeconds(5), default);
        var removed = repo.CleanInterrupted(chainLock);
        Assert.Single(removed);
        Assert.False(Directory.Exists(partial));
    }

    [Fact]
    public async Task A_second_writer_for_the_same_vm_waits_then_fails_clearly()
    {
        var repo = BackupRepository.Open(_root, create: true);
        await using var first = await repo.LockChainAsync(Vm, TimeSpan.FromSeconds(5), default);
        var ex = await Assert.ThrowsAsync<RepositoryLockedException>(() => repo.LockChainAsync(Vm, TimeSpan.FromMilliseconds(300), default));
        Assert.Contains(Vm, ex.Message);
        await first.DisposeAsync();
        await using var second = await repo.LockChainAsync(Vm, TimeSpan.FromSeconds(5), default);
    }

    [Fact]
    public async Task A_flipped_byte_in_the_data_file_is_named_with_file_and_offset()
    {
        var repo = BackupRepository.Open(_root, create: true);
        var full = await WriteBackupAsync(repo, BackupType.Full, null, 4 << 20, new[] { (0L, Pattern(4 << 20, 5)) });
        string data = Path.Combine(repo.GetBackupFolder(full), full.Disks[0].DataFile);
        var bytes = File.ReadAllBytes(data);
        bytes[bytes.Length / 2] ^= 0x40;
        File.WriteAllBytes(data, bytes);
        using var source = repo.OpenDisk(full, "disk-a");
        var ex = await Assert.ThrowsAsync<BackupFormatException>(() => ReadAllAsync(source));
        Assert.Equal(data, ex.Source);
    }

    [Fact]
    public async Task A_truncated_index_is_refused_before_any_data_is_read()
    {
        var repo = BackupRepository.Open(_root, create: true);
        var full = await WriteBackupAsync(repo, BackupType.Full, null, 4 << 20, new[] { (0L, Pattern(3 << 20, 6)) });
        string index = Path.Combine(repo.GetBackupFolder(full), full.Disks[0].IndexFile);
        var bytes = File.ReadAllBytes(index);
        File.WriteAllBytes(index, bytes.AsSpan(0, bytes.Length - 20).ToArray());
        var ex = Assert.Throws<BackupFormatException>(() => repo.OpenDisk(full, "disk-a"));
        Assert.Equal(index, ex.Source);
    }

    [Fact]
    public async Task A_missing_incremental_breaks_the_chain_with_a_clear_error()
    {
        var repo = BackupRepository.Open(_root, create: true);
        var full = await WriteBackupAsync(repo, BackupType.Full, null, 1 << 20, new[] { (0L, Pattern(65536, 7)) });
        var inc1 = await WriteBackupAsync(repo, BackupType.Incremental, full.Id, 1 << 20, new[] { (0L, Pattern(65536, 8)) });
        var inc2 = await WriteBackupAsync(repo, BackupType.Incremental, inc1.Id, 1 << 20, new[] { (65536L, Pattern(65536, 9)) });
        Directory.Delete(repo.GetBackupFolder(inc1), recursive: true);
        var ex = Assert.Throws<RepositoryException>(() => repo.GetChain(inc2));
        Assert.Contains(inc1.Id, ex.Message);
    }

    [Fact]
    public async Task Whole_files_are_stored_with_their_length_and_sha256()
    {
        var repo = BackupRepository.Open(_root, create: true);
        var payload = Pattern(123_456, 10);
        BackupManifest committed;
        await using (var chainLock = await repo.LockChainAsync(Vm, TimeSpan.FromSeconds(5), default))
        await using (var writer = repo.BeginBackup(chainLock, new BackupManifest { VmUuid = Vm, Strategy = BackupStrategy.Xva, Type = BackupType.Full }))
        {
            await using (var s = writer.CreateFile("export.xva", "xva")) await s.WriteAsync(payload);
            committed = await writer.CommitAsync(default);
        }
        var reread = repo.GetBackup(Vm, committed.Id)!;
        var file = Assert.Single(reread.Files);
        Assert.Equal(payload.Length, file.Length);
        Assert.Equal(Convert.ToHexString(SHA256.HashData(payload)).ToLowerInvariant(), file.Sha256);
        Assert.Equal(payload, File.ReadAllBytes(repo.GetFilePath(reread, file)));
    }

    [Fact]
    public void Opening_a_folder_that_is_not_a_repository_is_refused()
    {
        Directory.CreateDirectory(_root);
        File.WriteAllText(Path.Combine(_root, "something.txt"), "x");
        Assert.Throws<RepositoryException>(() => BackupRepository.Open(_root));
        Assert.Throws<RepositoryException>(() => BackupRepository.Open(_root, create: true));
    }

    [Fact]
    public async Task Hostile_disk_keys_and_ids_cannot_escape_the_repository()
    {
        var repo = BackupRepository.Open(_root, create: true);
        await using var chainLock = await repo.LockChainAsync(Vm, TimeSpan.FromSeconds(5), default);
        await using var writer = repo.BeginBackup(chainLock, new BackupManifest { VmUuid = Vm, Type = BackupType.Full });
        Assert.Throws<ArgumentException>(() => writer.AddDisk(new DiskManifest { Key = "../../evil", VirtualSize = 1 }));
        Assert.Throws<ArgumentException>(() => writer.CreateFile("../x.xva", "xva"));
        Assert.Throws<ArgumentException>(() => repo.ListBackups("../.."));
        Assert.Null(repo.GetBackup(Vm, "../../etc"));
    }
}
