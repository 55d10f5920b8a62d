using VProtect.Core.Formats.Vhd;
using VProtect.Core.Formats.Xva;
using VProtect.Core.IO;
using VProtect.Core.Repository;
using VProtect.Core.Tests.Xva;

namespace VProtect.Core.Tests.Lifecycle;

/// <summary>
/// A temporary repository with chains written through the repository's own writers (no hypervisor): a CBT chain
/// whose disk model after every point is kept, and an XVA chain (export.xva full + cumulative VHD incrementals).
/// </summary>
internal sealed class LifecycleRepo : IDisposable
{
    public const string Vm = "6a1f7c3e-2b4d-4e8f-9a0b-1c2d3e4f5a6b";
    public const string DiskKey = "vdi-disk-0";
    public const long DiskSize = 8L << 20;

    public LifecycleRepo()
    {
        Root = Path.Combine(Path.GetTempPath(), "vprotect-life-tests", Guid.NewGuid().ToString("n"));
        Repository = BackupRepository.Open(Root, create: true);
    }

    public string Root { get; }
    public BackupRepository Repository { get; }
    /// <summary>Disk content after each CBT restore point, by backup id.</summary>
    public Dictionary<string, byte[]> Expected { get; } = new();

    public void Dispose()
    {
        try { Directory.Delete(Root, recursive: true); } catch (DirectoryNotFoundException) { }
    }

    /// <summary>A CBT chain: a full with ~half the disk allocated, then incrementals each changing a few ranges (one writing zeros).</summary>
    public async Task<List<BackupManifest>> WriteCbtChainAsync(int incrementals, int seed = 1, string vm = Vm, string? baseOf = null)
    {
        var rng = new Random(seed);
        var model = new byte[DiskSize];
        var full = new List<(long, byte[])>();
        for (long off = 0; off < DiskSize; off += 256 << 10)
        {
            if (rng.Next(2) == 0) continue;
            var data = new byte[256 << 10];
            rng.NextBytes(data);
            data.CopyTo(model, off);
            full.Add((off, data));
        }
        var result = new List<BackupManifest>();
        var b = await WriteCbtAsync(vm, BackupType.Full, null, full);
        Expected[b.Id] = (byte[])model.Clone();
        result.Add(b);
        for (int i = 0; i < incrementals; i++)
        {
            var changes = new List<(long, byte[])>();
            long at = 0;
            while (true)
            {
                at += rng.Next(1, 24) * 65536L;
                int len = rng.Next(1, 5) * 65536;
                if (at + len > DiskSize) break;
                var data = new byte[len];
                if (rng.Next(5) != 0) rng.NextBytes(data);
                data.CopyTo(model, at);
                changes.Add((at, data));
                at += len;
            }
            b = await WriteCbtAsync(vm, BackupType.Incremental, result[^1].Id, changes);
            Expected[b.Id] = (byte[])model.Clone();
            result.Add(b);
        }
        return result;
    }

    public async Task<BackupManifest> WriteCbtAsync(string vm, BackupType type, string? baseId, IEnumerable<(long Offset, byte[] Data)> ranges)
    {
        await using var chainLock = await Repository.LockChainAsync(vm, TimeSpan.FromSeconds(5), default);
        await using var writer = Repository.BeginBackup(chainLock, new BackupManifest { VmUuid = vm, VmName = "web01", Strategy = BackupStrategy.Cbt, Type = type, BaseId = baseId });
        var disk = writer.AddDisk(new DiskManifest { Key = DiskKey, Device = "xvda", VirtualSize = DiskSize });
        foreach (var (offset, data) in ranges.OrderBy(r => r.Offset))
        {
            if (!data.AsSpan().ContainsAnyExcept((byte)0)) await disk.WriteZeroesAsync(offset, data.Length, default);
            else await disk.WriteAsync(offset, data, default);
        }
        await disk.CompleteAsync(default);
        await writer.WriteVmMetadataAsync(new { formatVersion = 1, vmUuid = vm, vmName = "web01" }, default);
        return await writer.CommitAsync(default);
    }

    /// <summary>An XVA chain: a full XVA of a random disk, then cumulative VHD incrementals based on the full.</summary>
    public async Task<List<BackupManifest>> WriteXvaChainAsync(int incrementals, string vm = Vm, int seed = 7)
    {
        var rng = new Random(seed);
        var result = new List<BackupManifest>();
        var disk = XvaTestData.RandomDisk(rng, DiskSize, 0.4);
        await using (var chainLock = await Repository.LockChainAsync(vm, TimeSpan.FromSeconds(5), default))
        await using (var writer = Repository.BeginBackup(chainLock, new BackupManifest { VmUuid = vm, VmName = "db01", Strategy = BackupStrategy.Xva, Type = BackupType.Full }))
        {
            await using (var s = writer.CreateFile("export.xva", "xva"))
                await XvaWriter.WriteAsync(s, XvaTestData.Metadata(("Ref:1", DiskSize)), [new XvaDiskSource("Ref:1", disk)], null, default);
            await writer.WriteVmMetadataAsync(new { formatVersion = 1, vmUuid = vm, vmName = "db01" }, default);
            result.Add(await writer.CommitAsync(default));
        }
        var delta = new SparseMemoryDisk(DiskSize);
        for (int i = 0; i < incrementals; i++)
        {
            var page = new byte[SparseMemoryDisk.PageSize];
            for (int k = 0; k < 4; k++)
            {
                rng.NextBytes(page);
                await delta.WriteAsync(rng.Next((int)(DiskSize / page.Length)) * (long)page.Length, page, default);
            }
            await using var chainLock = await Repository.LockChainAsync(vm, TimeSpan.FromSeconds(5), default);
            await using var writer = Repository.BeginBackup(chainLock, new BackupManifest { VmUuid = vm, VmName = "db01", Strategy = BackupStrategy.Xva, Type = BackupType.Incremental, BaseId = result[0].Id });
            await using (var s = writer.CreateFile($"{DiskKey}.vhd", "vhd", DiskKey))
            {
                var plan = await VhdBlockPlan.FromSourceAsync(delta);
                await VhdStreamWriter.WriteAsync(delta, plan, s);
            }
            await writer.WriteVmMetadataAsync(new { formatVersion = 1, vmUuid = vm, vmName = "db01" }, default);
            result.Add(await writer.CommitAsync(default));
        }
        return result;
    }

    public string DataPath(BackupManifest b) => Path.Combine(Repository.GetBackupFolder(b), b.Disks[0].DataFile);

    public static async Task<byte[]> ReadAllAsync(IBlockSource source)
    {
        var all = new byte[source.Length];
        for (long pos = 0; pos < all.Length;)
        {
            int n = (int)Math.Min(1 << 20, all.Length - pos);
            await source.ReadAsync(pos, all.AsMemory((int)pos, n), default);
            pos += n;
        }
        return all;
    }
}
