using System.Buffers.Binary;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using VProtect.Core.Backup.Xva;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.Formats.Xva;
using VProtect.Core.IO;
using VProtect.Core.Repository;
using VProtect.Core.Restore.Xva;

namespace VProtect.Benchmarks;

/// <summary>
/// Reading an XVA-strategy restore point without the host (<see cref="XvaRestorePointSource"/>): a full XVA of a disk
/// with 50 % data (every other MiB) and a cumulative incremental changing 1 % of it. Times the index pass (open: SHA-256
/// and every chunk checksum), a sequential read of the whole incremental point, and 64 KiB random reads; the XVA
/// reader's verify-only pass over the same file is the reference for the open. Figures are noisy on a shared machine.
/// </summary>
public sealed class XvaRestorePointBenchmark : IBenchmark
{
    private const int MiB = 1024 * 1024;
    private const string Key = "bench-disk";

    public string Name => "xva-point";

    public async Task RunAsync(BenchmarkContext context, TextWriter report, CancellationToken cancellationToken)
    {
        long size = context.Quick ? 512L * MiB : 4096L * MiB;
        string root = Path.Combine(context.WorkDirectory, "xva-point-repo");
        if (Directory.Exists(root)) Directory.Delete(root, recursive: true);
        try
        {
            var repo = BackupRepository.Open(root, create: true);
            var disk = new HalfFullDisk(size);
            const string vm = "7e6d5c4b-3a29-4817-9605-f4e3d2c1b0a9";
            BackupManifest full, inc;
            await using (var chainLock = await repo.LockChainAsync(vm, TimeSpan.FromSeconds(5), cancellationToken))
            await using (var writer = repo.BeginBackup(chainLock, new BackupManifest { VmUuid = vm, VmName = "bench", Strategy = BackupStrategy.Xva, Type = BackupType.Full }))
            {
                XvaKeys.WriteDisk(writer.Manifest, new XvaDiskInfo(Key, "xvda", "0", size, "snap-vdi"));
                var meta = new XvaMetadata(new XvaVersion(), [
                    new XvaObject("VM", "Ref:1", new Dictionary<string, object?> { ["name_label"] = "bench" }),
                    new XvaObject("VDI", "Ref:2", new Dictionary<string, object?> { ["uuid"] = "snap-vdi", ["virtual_size"] = size.ToString() }),
                ]);
                await using (var s = writer.CreateFile(XvaStrategy.XvaFileName, XvaStrategy.XvaFileKind))
                    await XvaWriter.WriteAsync(s, meta, [new XvaDiskSource("Ref:2", disk)], new XvaWriteOptions { KeepAliveInterval = null }, cancellationToken);
                full = await writer.CommitAsync(cancellationToken);
            }
            // 1 % of the disk changed, in 64 KiB pieces spread over it.
            var delta = new SparseMemoryDisk(size);
            var rng = new Random(5);
            var page = new byte[64 << 10];
            for (long changed = 0; changed < size / 100; changed += page.Length)
            {
                rng.NextBytes(page);
                await delta.WriteAsync(rng.NextInt64(size / page.Length) * page.Length, page, cancellationToken);
            }
            await using (var chainLock = await repo.LockChainAsync(vm, TimeSpan.FromSeconds(5), cancellationToken))
            await using (var writer = repo.BeginBackup(chainLock, new BackupManifest { VmUuid = vm, VmName = "bench", Strategy = BackupStrategy.Xva, Type = BackupType.Incremental, BaseId = full.Id }))
            {
                XvaKeys.WriteDisk(writer.Manifest, new XvaDiskInfo(Key, "xvda", "0", size, "snap-vdi"));
                await using (var s = writer.CreateFile(XvaStrategy.DeltaFileName(Key), XvaStrategy.VhdFileKind, Key))
                    await VhdStreamWriter.WriteAsync(delta, await VhdBlockPlan.FromSourceAsync(delta, cancellationToken: cancellationToken), s, cancellationToken: cancellationToken);
                inc = await writer.CommitAsync(cancellationToken);
            }
            string xvaPath = repo.GetFilePath(full, full.Files.Single(f => f.Kind == "xva"));
            long xvaBytes = new FileInfo(xvaPath).Length;

            var sw = Stopwatch.StartNew();
            await XvaReader.ReadFileAsync(xvaPath, null, cancellationToken);
            double verifyS = sw.Elapsed.TotalSeconds;

            long memBefore = GC.GetTotalMemory(forceFullCollection: true);
            sw.Restart();
            using var source = await XvaRestorePointSource.OpenDiskAsync(repo, inc, Key, null, cancellationToken);
            double openS = sw.Elapsed.TotalSeconds;
            long indexBytes = Math.Max(0, GC.GetTotalMemory(forceFullCollection: true) - memBefore);

            sw.Restart();
            using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            var buffer = new byte[4 * MiB];
            for (long at = 0; at < size; at += buffer.Length)
            {
                await source.ReadAsync(at, buffer, cancellationToken);
                sha.AppendData(buffer);
            }
            double seqS = sw.Elapsed.TotalSeconds;

            int randomReads = context.Quick ? 2000 : 10000;
            var small = new byte[64 << 10];
            sw.Restart();
            for (int i = 0; i < randomReads; i++)
                await source.ReadAsync(rng.NextInt64(size / small.Length) * small.Length, small, cancellationToken);
            double randS = sw.Elapsed.TotalSeconds;

            string load = File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "?";
            report.WriteLine($"## XVA restore point read from the repository ({size / MiB} MiB disk, 50 % data, incremental with 1 % changed)");
            report.WriteLine();
            report.WriteLine($"XVA {xvaBytes / 1e6:F0} MB, {source.ChunkCount} chunks indexed; index about {indexBytes / 1024} KiB of managed memory. Load average at the end: {load} (shared 2-core machine: figures are noisy).");
            report.WriteLine();
            report.WriteLine("| Step | Wall s | MB/s |");
            report.WriteLine("|---|---:|---:|");
            report.WriteLine($"| XvaReader verify-only pass (reference) | {verifyS:F2} | {xvaBytes / 1e6 / verifyS:F0} (of the file) |");
            report.WriteLine($"| Open the incremental point (index pass: SHA-256, chunk checksums, VHD delta check) | {openS:F2} | {xvaBytes / 1e6 / openS:F0} (of the file) |");
            report.WriteLine($"| Sequential read of the whole disk, 4 MiB reads, SHA-256 | {seqS:F2} | {size / 1e6 / seqS:F0} (of the disk) |");
            report.WriteLine($"| {randomReads} random 64 KiB reads | {randS:F2} | {randomReads / randS:F0} reads/s |");
            report.WriteLine();
        }
        finally
        {
            try { Directory.Delete(root, recursive: true); } catch (DirectoryNotFoundException) { }
        }
    }

    /// <summary>Every other MiB holds data computed from its offset; the rest is unallocated.</summary>
    private sealed class HalfFullDisk(long length) : IBlockSource
    {
        public long Length { get; } = length;

        public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
        {
            var span = buffer.Span;
            for (int i = 0; i < span.Length;)
            {
                long at = offset + i;
                int inMiB = (int)(at % MiB);
                int n = Math.Min(span.Length - i, MiB - inMiB);
                if ((at / MiB) % 2 == 1) span.Slice(i, n).Clear();
                else
                    for (int k = 0; k < n; k += 8)
                    {
                        if (k + 8 <= n) BinaryPrimitives.WriteInt64LittleEndian(span.Slice(i + k, 8), (at + k) * 2654435761L);
                        else span.Slice(i + k, n - k).Fill(0x5A);
                    }
                i += n;
            }
            return ValueTask.CompletedTask;
        }

        public async IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, [EnumeratorCancellation] CancellationToken cancellationToken)
        {
            await Task.CompletedTask;
            for (long m = offset / MiB * MiB; m < offset + length; m += MiB)
            {
                if ((m / MiB) % 2 == 1) continue;
                long s = Math.Max(offset, m), e = Math.Min(offset + length, m + MiB);
                if (e > s) yield return new Extent(s, e - s);
            }
        }
    }
}
