using System.Diagnostics;
using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;

namespace VProtect.Benchmarks;

/// <summary>
/// lifecycle: (1) the cost of rolling a full forward over an incremental with 1 % of the disk changed in 64 KiB blocks,
/// against the cost of writing that full; (2) Test-VMBackup's verification throughput over the stored data; (3) reading
/// the layered synthetic full, and the cost of a merge that compacts it into a plain full.
/// Disk: 8 GiB fully allocated (1 GiB with --quick), half-compressible content from a pool of 1 MiB buffers.
/// </summary>
public sealed class LifecycleBenchmarks : IBenchmark
{
    private const string Vm = "0e1f2a3b-4c5d-4e6f-8a7b-9c0d1e2f3a4b";
    private const int Block = 64 * 1024;
    public string Name => "lifecycle";

    public async Task RunAsync(BenchmarkContext context, TextWriter report, CancellationToken cancellationToken)
    {
        long size = context.Quick ? 1L << 30 : 8L << 30;
        string root = Path.Combine(context.WorkDirectory, "lifecycle-" + Guid.NewGuid().ToString("n")[..8]);
        try
        {
            var repo = BackupRepository.Open(root, create: true);
            var pool = BufferPool();
            var clock = Stopwatch.StartNew();
            var full = await WriteAsync(repo, BackupType.Full, null, size, Enumerable.Range(0, (int)(size >> 20)).Select(i => (i * (long)(1 << 20), pool[i % pool.Length], i)), cancellationToken);
            var fullTime = clock.Elapsed;
            var rng = new Random(1);
            long blocks = size / Block;
            var changed = Enumerable.Range(0, (int)(blocks / 100)).Select(_ => rng.NextInt64(blocks)).Distinct().Order()
                .Select(b => (b * Block, pool[(int)(b % pool.Length)].AsMemory(0, Block), (int)b)).ToList();
            var incremental = await WriteAsync(repo, BackupType.Incremental, full.Id, size, changed.Select(c => (c.Item1, c.Item2.ToArray(), c.Item3)), cancellationToken);

            // The repository is written past the page cache (O_DIRECT), so the first verification reads the disk (cold);
            // the second finds what the first read in the cache (warm): the code's own rate.
            clock.Restart();
            var verification = await new BackupVerifier(repo).VerifyAsync(incremental, cancellationToken);
            var verifyTime = clock.Elapsed;
            if (verification.Status != VerificationStatus.Healthy) throw new InvalidOperationException("The benchmark repository does not verify.");
            clock.Restart();
            var warmVerification = await new BackupVerifier(repo).VerifyAsync(incremental, cancellationToken);
            var warmVerifyTime = clock.Elapsed;
            if (warmVerification.Status != VerificationStatus.Healthy) throw new InvalidOperationException("The benchmark repository does not verify.");
            long stored = full.StoredBytes + incremental.StoredBytes;

            clock.Restart();
            await BackupRemover.ApplyAsync(repo, Vm, () => BackupRemover.PlanRemoval(repo, Vm, new[] { full.Id }), TimeSpan.FromSeconds(10), null, null, cancellationToken);
            var mergeTime = clock.Elapsed;
            var merged = repo.ListBackups(Vm).Single();

            // What the layers cost a restore: every byte of the synthetic full read through the layered source.
            clock.Restart();
            using (var source = repo.OpenDisk(merged, "disk0"))
            {
                var buffer = new byte[4 << 20];
                for (long pos = 0; pos < size; pos += buffer.Length)
                    await source.ReadAsync(pos, buffer.AsMemory(0, (int)Math.Min(buffer.Length, size - pos)), cancellationToken);
            }
            var readTime = clock.Elapsed;

            // The compaction rule's costs: a second and a third 1 % incremental; the merge of the second folds the layers
            // above the full (layer limit, here 2), the merge of the third rewrites a plain full (dead-bytes limit, here 0).
            async Task<(TimeSpan Time, BackupManifest Result)> MergeNextAsync(BackupManifest point, int stamp, CompactionPolicy policy)
            {
                var next = Enumerable.Range(0, (int)(blocks / 100)).Select(_ => rng.NextInt64(blocks)).Distinct().Order()
                    .Select(b => (b * Block, pool[(int)((b + stamp) % pool.Length)].AsMemory(0, Block).ToArray(), (int)b + stamp)).ToList();
                await WriteAsync(repo, BackupType.Incremental, point.Id, size, next, cancellationToken);
                var watch = Stopwatch.StartNew();
                await BackupRemover.ApplyAsync(repo, Vm, () => BackupRemover.PlanRemoval(repo, Vm, new[] { point.Id }), TimeSpan.FromSeconds(10),
                    policy, null, null, cancellationToken);
                return (watch.Elapsed, repo.ListBackups(Vm).Single());
            }
            var (foldTime, folded) = await MergeNextAsync(merged, 1, new CompactionPolicy(MaxLayers: 2, MaxDeadFraction: double.PositiveInfinity));
            var (compactTime, compacted) = await MergeNextAsync(folded, 2, CompactionPolicy.Always);

            report.WriteLine($"## lifecycle ({size >> 30} GiB disk, {Environment.ProcessorCount} cores)");
            report.WriteLine();
            report.WriteLine("| step | time | figures |");
            report.WriteLine("|---|---:|---|");
            report.WriteLine($"| full backup written to the repository (hash + zstd + write) | {fullTime.TotalSeconds:N2} s | {size / fullTime.TotalSeconds / 1e6:N0} MB/s of disk |");
            report.WriteLine($"| incremental, 1 % changed in 64 KiB blocks | | {changed.Count} blocks, {incremental.StoredBytes / 1e6:N1} MB stored |");
            report.WriteLine($"| roll the full forward into the incremental (Remove-VMBackup) | {mergeTime.TotalSeconds:N2} s | {mergeTime / fullTime * 100:N1} % of the full backup |");
            report.WriteLine($"| Test-VMBackup of the incremental's chain, cold (read from disk) | {verifyTime.TotalSeconds:N2} s | {verification.BytesChecked / verifyTime.TotalSeconds / 1e9:N2} GB/s stored, {verification.BlocksChecked} records, {stored / 1e6:N0} MB |");
            report.WriteLine($"| Test-VMBackup of the incremental's chain, warm (page cache) | {warmVerifyTime.TotalSeconds:N2} s | {warmVerification.BytesChecked / warmVerifyTime.TotalSeconds / 1e9:N2} GB/s stored |");
            var layers = merged.Disks[0].Layers();
            report.WriteLine($"| synthetic full (format version {merged.FormatVersion}) | | {layers.Count} layers, {merged.StoredBytes / 1e6:N0} MB stored, {layers.Sum(l => (long)l.RecordCount)} records, {merged.Disks[0].DeadBytes / 1e6:N1} MB dead |");
            report.WriteLine($"| read the synthetic full through its layers (restore read path) | {readTime.TotalSeconds:N2} s | {size / readTime.TotalSeconds / 1e6:N0} MB/s of disk |");
            report.WriteLine($"| layer limit: merge of a second 1 % incremental folding the layers above the full | {foldTime.TotalSeconds:N2} s | {foldTime / fullTime * 100:N1} % of the full backup; {folded.Disks[0].Layers().Count} layers, {folded.Disks[0].DeadBytes / 1e6:N1} MB dead |");
            report.WriteLine($"| dead-bytes limit: merge of a third 1 % incremental rewriting a plain full | {compactTime.TotalSeconds:N2} s | {compactTime / fullTime * 100:N1} % of the full backup; {compacted.StoredBytes / 1e6:N0} MB stored, {compacted.Disks[0].RecordCount} records, format version {compacted.FormatVersion} |");
            report.WriteLine();
        }
        finally
        {
            try { Directory.Delete(root, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>64 distinct 1 MiB buffers, each half random and half a repeating pattern (compresses about 2:1).</summary>
    private static byte[][] BufferPool()
    {
        var rng = new Random(7);
        return Enumerable.Range(0, 64).Select(_ =>
        {
            var b = new byte[1 << 20];
            for (int at = 0; at < b.Length; at += 8192)
            {
                rng.NextBytes(b.AsSpan(at, 4096));
                for (int k = 4096; k < 8192; k++) b[at + k] = (byte)(k * 31);
            }
            return b;
        }).ToArray();
    }

    private static async Task<BackupManifest> WriteAsync(BackupRepository repo, BackupType type, string? baseId, long size,
        IEnumerable<(long Offset, byte[] Data, int Stamp)> ranges, CancellationToken ct)
    {
        await using var chainLock = await repo.LockChainAsync(Vm, TimeSpan.FromSeconds(10), ct);
        await using var writer = repo.BeginBackup(chainLock, new BackupManifest { VmUuid = Vm, VmName = "bench", Strategy = BackupStrategy.Cbt, Type = type, BaseId = baseId });
        var disk = writer.AddDisk(new DiskManifest { Key = "disk0", VirtualSize = size });
        var scratch = new byte[1 << 20];
        foreach (var (offset, data, stamp) in ranges)
        {
            // Stamp each range so no two records are identical.
            data.CopyTo(scratch, 0);
            BitConverter.TryWriteBytes(scratch.AsSpan(0, 8), offset ^ stamp);
            await disk.WriteAsync(offset, scratch.AsMemory(0, data.Length), ct);
        }
        await disk.CompleteAsync(ct);
        return await writer.CommitAsync(ct);
    }
}
