using VProtect.Simulator.Storage;

namespace VProtect.Simulator.Tests;

public sealed class StorageTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), "sim-storage-" + Guid.NewGuid().ToString("N"));
    private readonly VdiStorage _storage;

    public StorageTests() => _storage = new VdiStorage(_dir);

    public void Dispose()
    {
        _storage.Dispose();
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    private long BytesOnDisk() => Directory.GetFiles(Path.Combine(_dir, "layers")).Sum(f => new FileInfo(f).Length);

    [Fact]
    public async Task A_huge_vdi_costs_only_what_is_written()
    {
        _storage.CreateVdi("a", 100L << 30);
        var disk = _storage.Open("a");
        var data = new byte[1000];
        DeterministicData.Fill(data, 1, (50L << 30) + 10);
        await disk.WriteAsync((50L << 30) + 10, data, CancellationToken.None);
        Assert.Equal(Layer.UnitSize, BytesOnDisk());
        var back = new byte[3000];
        await disk.ReadAsync((50L << 30) + 10 - 1000, back, CancellationToken.None);
        Assert.All(back[..1000], b => Assert.Equal(0, b));
        Assert.Equal(data, back[1000..2000]);
        Assert.All(back[2000..], b => Assert.Equal(0, b));
        var extents = new List<VProtect.Core.IO.Extent>();
        await foreach (var e in disk.GetAllocatedExtentsAsync(0, disk.Length, CancellationToken.None)) extents.Add(e);
        Assert.Equal([new VProtect.Core.IO.Extent(50L << 30, Layer.UnitSize)], extents);
    }

    [Fact]
    public async Task Snapshot_freezes_content_and_writes_copy_up_into_the_top_layer()
    {
        _storage.CreateVdi("v", 1L << 20);
        var v = _storage.Open("v");
        var first = new byte[Layer.UnitSize];
        DeterministicData.Fill(first, 1, 0);
        await v.WriteAsync(0, first, CancellationToken.None);
        _storage.Branch("v", "s", keepCbt: true);
        // Partial overwrite after the snapshot: the rest of the unit must come from below.
        await v.WriteAsync(100, new byte[] { 1, 2, 3 }, CancellationToken.None);
        var live = new byte[Layer.UnitSize];
        await v.ReadAsync(0, live, CancellationToken.None);
        var expected = (byte[])first.Clone();
        expected[100] = 1; expected[101] = 2; expected[102] = 3;
        Assert.Equal(expected, live);
        var snap = new byte[Layer.UnitSize];
        await _storage.Open("s").ReadAsync(0, snap, CancellationToken.None);
        Assert.Equal(first, snap);
        // Chains share the frozen layer; the difference is only the live top's unit 0.
        var vChain = _storage.Chain("v");
        var sChain = _storage.Chain("s");
        Assert.Equal(vChain[1].Id, sChain[1].Id);
        Assert.True(vChain[1].Frozen);
        Assert.Equal([0L], _storage.UnitsDifferingFrom("v", "s"));
    }

    [Fact]
    public async Task Cbt_marks_only_while_enabled_and_branches_share_the_log()
    {
        _storage.CreateVdi("v", 4L << 20);
        var v = _storage.Open("v");
        await v.WriteAsync(0, new byte[1], CancellationToken.None);            // before CBT: not tracked
        _storage.EnableCbt("v");
        _storage.Branch("v", "s1", keepCbt: true);
        await v.WriteAsync(2 * Layer.UnitSize, new byte[1], CancellationToken.None);
        await v.WriteZeroesAsync(5 * Layer.UnitSize, 10, CancellationToken.None);
        _storage.Branch("v", "s2", keepCbt: true);
        Assert.Equal([2L, 5L], _storage.ChangedUnits("s1", "s2")!.Order());
        Assert.Null(_storage.ChangedUnits("s2", "s1"));
        _storage.Branch("v", "clone", keepCbt: false);
        Assert.Null(_storage.ChangedUnits("s1", "clone"));
    }

    [Fact]
    public async Task Save_and_load_round_trip_and_delete_collects_layers()
    {
        _storage.CreateVdi("v", 1L << 20);
        var data = new byte[5000];
        DeterministicData.Fill(data, 9, 7);
        await _storage.Open("v").WriteAsync(7, data, CancellationToken.None);
        _storage.EnableCbt("v");
        _storage.Branch("v", "s", keepCbt: true);
        _storage.Save();
        using (var reloaded = new VdiStorage(_dir))
        {
            Assert.True(reloaded.Load());
            var back = new byte[5000];
            await reloaded.Open("s").ReadAsync(7, back, CancellationToken.None);
            Assert.Equal(data, back);
            Assert.NotNull(reloaded.Content("v").CbtLogId);
            Assert.Equal(reloaded.Content("v").CbtLogId, reloaded.Content("s").CbtLogId);
        }
        _storage.DeleteVdi("s");
        Assert.Equal(2, _storage.Chain("v").Count); // s's private top went; v's top and the frozen base remain
        _storage.DeleteVdi("v");
        Assert.Empty(Directory.GetFiles(Path.Combine(_dir, "layers")));
    }
}
