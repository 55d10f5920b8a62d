using System.Security.Cryptography;
using VProtect.Core.Backup.Xva;
using VProtect.Core.Formats;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.Formats.Xva;
using VProtect.Core.IO;
using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using VProtect.Core.Restore.Xva;
using Xunit;

namespace VProtect.Core.Tests.Lifecycle;

/// <summary>
/// XVA-strategy restore points as block sources, against an independent model of each disk (byte arrays updated with
/// the same writes the "guest" made): the full's XVA alone, then each cumulative incremental's VHD delta over it; plain,
/// zstd and SHA-1-checksummed XVAs; damage found at open and after open; Raw/Vhd export and the NBD mount.
/// </summary>
public sealed class XvaRestorePointSourceTests : IDisposable
{
    private const string Vm = "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f6a";
    private const string KeyA = "aaaaaaaa-0000-4000-8000-00000000000a";   // found in ova.xml by its snapshot VDI uuid
    private const string KeyB = "bbbbbbbb-0000-4000-8000-00000000000b";   // found through the VBD at its userdevice
    private const string SnapA = "5aaaaaaa-1111-4111-8111-11111111111a";
    private const string SnapB = "5bbbbbbb-1111-4111-8111-11111111111b";
    private const long SizeA = 10L << 20;
    private const long SizeB = (6L << 20) + (64 << 10);                   // a last chunk shorter than 1 MiB
    private const int Page = SparseMemoryDisk.PageSize;

    private readonly string _root = Path.Combine(Path.GetTempPath(), "vprotect-xvapoint-tests", Guid.NewGuid().ToString("n"));
    private readonly BackupRepository _repo;
    private readonly Random _rng = new(4242);
    private readonly Dictionary<string, Dictionary<string, byte[]>> _expected = new(); // backup id -> disk key -> content

    public XvaRestorePointSourceTests() => _repo = BackupRepository.Open(_root, create: true);

    public void Dispose()
    {
        try { Directory.Delete(_root, recursive: true); } catch (DirectoryNotFoundException) { }
    }

    private static CancellationToken Timeout() => new CancellationTokenSource(TimeSpan.FromMinutes(2)).Token;

    /// <summary>A full XVA of two disks, then <paramref name="incrementals"/> cumulative VHD deltas with random page writes.</summary>
    private async Task<List<BackupManifest>> WriteChainAsync(int incrementals, XvaWriteOptions? xvaOptions = null)
    {
        var modelA = new byte[SizeA];
        var modelB = new byte[SizeB];
        var diskA = new SparseMemoryDisk(SizeA);
        var diskB = new SparseMemoryDisk(SizeB);
        await FillAsync(diskA, modelA, 0.45);
        await FillAsync(diskB, modelB, 0.3);
        // The very last bytes of B, inside its short last chunk.
        await WriteAsync(diskB, modelB, SizeB - Page, RandomBytes(Page));

        var points = new List<BackupManifest>();
        await using (var chainLock = await _repo.LockChainAsync(Vm, TimeSpan.FromSeconds(5), default))
        await using (var writer = _repo.BeginBackup(chainLock, new BackupManifest { VmUuid = Vm, VmName = "app01", Strategy = BackupStrategy.Xva, Type = BackupType.Full }))
        {
            XvaKeys.WriteDisk(writer.Manifest, new XvaDiskInfo(KeyA, "xvda", "0", SizeA, SnapA));
            XvaKeys.WriteDisk(writer.Manifest, new XvaDiskInfo(KeyB, "xvdb", "1", SizeB, SnapB));
            await using (var s = writer.CreateFile(XvaStrategy.XvaFileName, XvaStrategy.XvaFileKind))
                await XvaWriter.WriteAsync(s, Metadata(), [new XvaDiskSource("Ref:21", diskA), new XvaDiskSource("Ref:22", diskB)],
                    xvaOptions ?? new XvaWriteOptions { KeepAliveInterval = null }, default);
            await writer.WriteVmMetadataAsync(new { formatVersion = 1, vmUuid = Vm, vmName = "app01" }, default);
            points.Add(await writer.CommitAsync(default));
        }
        _expected[points[0].Id] = new() { [KeyA] = (byte[])modelA.Clone(), [KeyB] = (byte[])modelB.Clone() };

        // Cumulative deltas: each holds every page written since the full.
        var deltaA = new SparseMemoryDisk(SizeA);
        var deltaB = new SparseMemoryDisk(SizeB);
        for (int i = 0; i < incrementals; i++)
        {
            for (int k = 0; k < 6; k++)
                await WriteAsync(deltaA, modelA, _rng.Next((int)(SizeA / Page)) * (long)Page, RandomBytes(Page));
            // Overwrite part of a page written by an earlier incremental, and one page of B.
            await WriteAsync(deltaA, modelA, 3L << 20, RandomBytes(Page));
            await WriteAsync(deltaB, modelB, _rng.Next((int)(SizeB / Page)) * (long)Page, RandomBytes(Page));
            await using var chainLock = await _repo.LockChainAsync(Vm, TimeSpan.FromSeconds(5), default);
            await using var writer = _repo.BeginBackup(chainLock, new BackupManifest { VmUuid = Vm, VmName = "app01", Strategy = BackupStrategy.Xva, Type = BackupType.Incremental, BaseId = points[0].Id });
            XvaKeys.WriteDisk(writer.Manifest, new XvaDiskInfo(KeyA, "xvda", "0", SizeA, SnapA));
            XvaKeys.WriteDisk(writer.Manifest, new XvaDiskInfo(KeyB, "xvdb", "1", SizeB, SnapB));
            writer.Manifest.Properties[XvaKeys.Cumulative] = "true";
            foreach (var (key, delta) in new[] { (KeyA, deltaA), (KeyB, deltaB) })
                await using (var s = writer.CreateFile(XvaStrategy.DeltaFileName(key), XvaStrategy.VhdFileKind, key))
                    await VhdStreamWriter.WriteAsync(delta, await VhdBlockPlan.FromSourceAsync(delta), s);
            await writer.WriteVmMetadataAsync(new { formatVersion = 1, vmUuid = Vm, vmName = "app01" }, default);
            points.Add(await writer.CommitAsync(default));
            _expected[points[^1].Id] = new() { [KeyA] = (byte[])modelA.Clone(), [KeyB] = (byte[])modelB.Clone() };
        }
        return points;
    }

    private byte[] RandomBytes(int n)
    {
        var b = new byte[n];
        _rng.NextBytes(b);
        return b;
    }

    private async Task FillAsync(SparseMemoryDisk disk, byte[] model, double fill)
    {
        for (long off = 0; off + Page <= model.Length; off += Page)
            if (_rng.NextDouble() < fill) await WriteAsync(disk, model, off, RandomBytes(Page));
    }

    private static async Task WriteAsync(SparseMemoryDisk disk, byte[] model, long offset, byte[] data)
    {
        data.CopyTo(model, offset);
        await disk.WriteAsync(offset, data, default);
    }

    /// <summary>ova.xml as xapi writes it for a snapshot: VM, VBDs by userdevice, VDIs (B without its uuid, as a re-export might be).</summary>
    private static XvaMetadata Metadata() => new(new XvaVersion { XapiMajor = 25, XapiMinor = 6 }, new[]
    {
        new XvaObject("VM", "Ref:10", new Dictionary<string, object?> { ["uuid"] = "9e8d7c6b-5a49-4382-a1b0-c9d8e7f6a5b4", ["name_label"] = "app01", ["VBDs"] = new object?[] { "Ref:11", "Ref:12" } }),
        new XvaObject("VBD", "Ref:11", new Dictionary<string, object?> { ["userdevice"] = "0", ["type"] = "Disk", ["VDI"] = "Ref:21", ["VM"] = "Ref:10" }),
        new XvaObject("VBD", "Ref:12", new Dictionary<string, object?> { ["userdevice"] = "1", ["type"] = "Disk", ["VDI"] = "Ref:22", ["VM"] = "Ref:10" }),
        new XvaObject("VDI", "Ref:21", new Dictionary<string, object?> { ["uuid"] = SnapA, ["virtual_size"] = SizeA.ToString() }),
        new XvaObject("VDI", "Ref:22", new Dictionary<string, object?> { ["virtual_size"] = SizeB.ToString() }),
    });

    private static string Sha(byte[] data) => Convert.ToHexString(SHA256.HashData(data));

    private async Task AssertPointAsync(BackupManifest point, XvaRestorePointOptions? options = null)
    {
        var sources = await XvaRestorePointSource.OpenAsync(_repo, point, (string[]?)null, options, Timeout());
        try
        {
            Assert.Equal(new[] { KeyA, KeyB }, sources.Keys.Order().ToArray());
            foreach (var (key, source) in sources)
            {
                var expected = _expected[point.Id][key];
                Assert.Equal(expected.Length, source.Length);
                Assert.Equal(point.Type == BackupType.Incremental, source.HasDelta);
                Assert.True(source.ChunkCount > 0);
                var all = await LifecycleRepo.ReadAllAsync(source);
                Assert.Equal(Sha(expected), Sha(all));

                // Everything outside the allocated extents is zero in the model.
                var covered = new bool[expected.Length / 512 + 1];
                long last = -1;
                await foreach (var e in source.GetAllocatedExtentsAsync(0, source.Length, default))
                {
                    Assert.True(e.Offset > last, "extents ascend and are coalesced");
                    last = e.End;
                    for (long s = e.Offset / 512; s < (e.End + 511) / 512; s++) covered[s] = true;
                }
                for (int s = 0; s < expected.Length / 512; s++)
                    if (!covered[s]) Assert.False(expected.AsSpan(s * 512, 512).ContainsAnyExcept((byte)0), $"sector {s} of {key} has data outside the extents");

                // Random access at odd offsets and lengths, across chunk and block boundaries, in no order.
                var rng = new Random(7);
                for (int i = 0; i < 60; i++)
                {
                    int len = rng.Next(1, 3 << 20);
                    long off = rng.NextInt64(0, expected.Length - len);
                    var buf = new byte[len];
                    await source.ReadAsync(off, buf, default);
                    Assert.True(expected.AsSpan((int)off, len).SequenceEqual(buf), $"{key} [{off}, +{len})");
                }
            }
        }
        finally
        {
            foreach (var s in sources.Values) s.Dispose();
        }
    }

    [Fact]
    public async Task The_full_and_each_cumulative_incremental_read_as_the_disks_at_that_point()
    {
        var points = await WriteChainAsync(3);
        Assert.NotEqual(Sha(_expected[points[0].Id][KeyA]), Sha(_expected[points[1].Id][KeyA]));
        Assert.NotEqual(Sha(_expected[points[2].Id][KeyA]), Sha(_expected[points[3].Id][KeyA]));
        foreach (var point in points) await AssertPointAsync(point);
    }

    [Fact]
    public async Task A_zstd_xva_with_sha1_checksums_reads_the_same_and_its_temporary_copy_goes_on_dispose()
    {
        var points = await WriteChainAsync(1, new XvaWriteOptions { Compression = XvaCompression.Zstd, Checksum = XvaChecksumKind.Sha1, KeepAliveInterval = null });
        string spill = Path.Combine(_root, "spill");
        await AssertPointAsync(points[0], new XvaRestorePointOptions { SpillDirectory = spill });
        await AssertPointAsync(points[1], new XvaRestorePointOptions { SpillDirectory = spill });
        Assert.Empty(Directory.GetFiles(spill));

        using (var one = await XvaRestorePointSource.OpenDiskAsync(_repo, points[1], KeyB, new XvaRestorePointOptions { SpillDirectory = spill }, Timeout()))
        {
            Assert.Single(Directory.GetFiles(spill));
            Assert.Equal(Sha(_expected[points[1].Id][KeyB]), Sha(await LifecycleRepo.ReadAllAsync(one)));
        }
        Assert.Empty(Directory.GetFiles(spill));
    }

    [Fact]
    public async Task A_flipped_byte_in_a_chunk_is_found_at_open_even_when_the_recorded_sha256_is_forged()
    {
        var points = await WriteChainAsync(1);
        var entry = points[0].Files.Single(f => f.Kind == "xva");
        string path = _repo.GetFilePath(points[0], entry);
        await AssertPointAsync(points[1]);
        FlipByte(path, entry.Length / 2);

        var ex = await Assert.ThrowsAsync<BackupFormatException>(() => XvaRestorePointSource.OpenAsync(_repo, points[1], (string[]?)null, null, Timeout()));
        Assert.Contains(path, ex.Message);

        // With the manifest's SHA-256 made to match the damaged file, the chunk checksum still finds it.
        entry.Sha256 = Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(path))).ToLowerInvariant();
        var chunkEx = await Assert.ThrowsAsync<BackupFormatException>(() => XvaRestorePointSource.OpenAsync(_repo, points[0], (string[]?)null, null, Timeout()));
        Assert.Contains("Ref:2", chunkEx.Message);
        Assert.DoesNotContain("SHA-256", chunkEx.Message);
    }

    [Fact]
    public async Task A_damaged_vhd_delta_is_found_at_open()
    {
        var points = await WriteChainAsync(1);
        var delta = points[1].Files.Single(f => f.DiskKey == KeyA);
        FlipByte(_repo.GetFilePath(points[1], delta), delta.Length - 100);
        var ex = await Assert.ThrowsAsync<BackupFormatException>(() => XvaRestorePointSource.OpenAsync(_repo, points[1], new[] { KeyA }, null, Timeout()));
        Assert.Contains(delta.Name, ex.Message);
        // The full alone does not need the delta.
        await AssertPointAsync(points[0]);
    }

    [Fact]
    public async Task A_chunk_changed_after_opening_is_an_error_not_wrong_data()
    {
        var points = await WriteChainAsync(0);
        var entry = points[0].Files.Single(f => f.Kind == "xva");
        using var source = await XvaRestorePointSource.OpenDiskAsync(_repo, points[0], KeyA, null, Timeout());
        var first = await source.GetAllocatedExtentsAsync(0, source.Length, default).FirstAsync();
        // Find the chunk's bytes in the file by content, and change one of them.
        var expected = _expected[points[0].Id][KeyA];
        var file = File.ReadAllBytes(_repo.GetFilePath(points[0], entry));
        long data = first.Offset;
        while (!expected.AsSpan((int)data, 4096).ContainsAnyExcept((byte)0)) data += 4096;
        int at = file.AsSpan().IndexOf(expected.AsSpan((int)data, 4096));
        Assert.True(at > 0);
        FlipByte(_repo.GetFilePath(points[0], entry), at + 10);
        var ex = await Assert.ThrowsAsync<BackupFormatException>(async () => await source.ReadAsync(data, new byte[4096], default));
        Assert.Contains("changed", ex.Message);
    }

    [Fact]
    public async Task Unknown_disks_and_block_backups_are_refused_with_the_disks_named()
    {
        var points = await WriteChainAsync(0);
        var ex = await Assert.ThrowsAsync<RepositoryException>(() => XvaRestorePointSource.OpenAsync(_repo, points[0], new[] { "nope" }, null, Timeout()));
        Assert.Contains(KeyA, ex.Message);
        var cbt = new BackupManifest { Id = "x", Strategy = BackupStrategy.Cbt };
        await Assert.ThrowsAsync<RepositoryException>(() => XvaRestorePointSource.OpenAsync(_repo, cbt, (string[]?)null, null, Timeout()));
    }

    [Fact]
    public async Task Export_writes_raw_and_vhd_of_an_incremental_and_the_xva_of_the_full_only()
    {
        var points = await WriteChainAsync(2);
        var inc = points[2];
        string raw = Path.Combine(_root, "out-raw");
        var files = await RestorePointExport.ExportAsync(_repo, inc, raw, ExportFormat.Raw, null, null, Timeout());
        Assert.Equal(2, files.Count);
        foreach (var f in files)
        {
            Assert.Equal(_expected[inc.Id][f.DiskKey].Length, new FileInfo(f.Path).Length);
            Assert.Equal(Sha(_expected[inc.Id][f.DiskKey]), Sha(File.ReadAllBytes(f.Path)));
        }

        string vhd = Path.Combine(_root, "out-vhd");
        var vhdFiles = await RestorePointExport.ExportAsync(_repo, inc, vhd, ExportFormat.Vhd, new[] { KeyB }, null, Timeout());
        var only = Assert.Single(vhdFiles);
        Assert.Equal(KeyB, only.DiskKey);
        using (var image = await VhdFile.OpenAsync(only.Path))
            Assert.Equal(Sha(_expected[inc.Id][KeyB]), Sha(await LifecycleRepo.ReadAllAsync(image)));

        await Assert.ThrowsAsync<RepositoryException>(() => RestorePointExport.ExportAsync(_repo, inc, Path.Combine(_root, "x1"), ExportFormat.Xva, null, null, Timeout()));
        var xva = Assert.Single(await RestorePointExport.ExportAsync(_repo, points[0], Path.Combine(_root, "x2"), ExportFormat.Xva, null, null, Timeout()));
        Assert.Equal(points[0].Files.Single(f => f.Kind == "xva").Sha256, Convert.ToHexString(SHA256.HashData(File.ReadAllBytes(xva.Path))).ToLowerInvariant());
    }

    [Fact]
    public async Task Mount_serves_each_disk_of_an_incremental_over_nbd_equal_to_the_point()
    {
        var points = await WriteChainAsync(1);
        var inc = points[1];
        await using var mount = await BackupMount.StartAsync(_repo, inc, null, 0, null, null, Timeout());
        Assert.Equal(new[] { KeyA, KeyB }, mount.DiskKeys.Order().ToArray());
        foreach (var key in new[] { KeyA, KeyB })
        {
            await using var client = await VProtect.Core.Nbd.NbdClient.ConnectAsync(new VProtect.Core.Nbd.NbdClientOptions(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, mount.Port), key), Timeout());
            Assert.Equal(_expected[inc.Id][key].Length, client.Size);
            var all = new byte[client.Size];
            for (long off = 0; off < all.Length; off += 1 << 20)
            {
                int n = (int)Math.Min(1 << 20, all.Length - off);
                await client.ReadAsync(off, all.AsMemory((int)off, n), Timeout());
            }
            Assert.Equal(Sha(_expected[inc.Id][key]), Sha(all));
        }
    }

    private static void FlipByte(string path, long position)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.ReadWrite);
        fs.Position = position;
        int b = fs.ReadByte();
        fs.Position = position;
        fs.WriteByte((byte)(b ^ 0x5A));
    }
}
