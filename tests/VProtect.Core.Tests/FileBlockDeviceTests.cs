using VProtect.Core.IO;
using Xunit;
using static VProtect.Core.Tests.FileProbe;

namespace VProtect.Core.Tests;

public sealed class FileBlockDeviceTests : IDisposable
{
    private const int MiB = 1 << 20;
    private readonly string _dir = Directory.CreateTempSubdirectory("fileblockdevice-").FullName;

    public void Dispose() { try { Directory.Delete(_dir, recursive: true); } catch (IOException) { } }

    private string P(string name) => Path.Combine(_dir, name);

    private static byte[] Random(int seed, int length)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    private static async Task<List<Extent>> ExtentsAsync(IBlockSource source, long offset, long length)
    {
        var list = new List<Extent>();
        await foreach (var e in source.GetAllocatedExtentsAsync(offset, length, default)) list.Add(e);
        return list;
    }

    [Fact]
    public async Task A_created_image_is_sparse_reads_zero_where_unwritten_and_reads_back_writes()
    {
        using var disk = FileBlockDevice.Create(P("a.raw"), 64L * MiB);
        Assert.Equal(64L * MiB, disk.Length);
        Assert.Equal(64L * MiB, new FileInfo(P("a.raw")).Length);
        var data = Random(1, 300_000);
        await disk.WriteAsync(5 * MiB + 123, data, default);
        var back = new byte[data.Length + 2000];
        await disk.ReadAsync(5 * MiB + 123 - 1000, back, default);
        Assert.True(back.AsSpan(0, 1000).IndexOfAnyExcept((byte)0) < 0);
        Assert.True(back.AsSpan(1000, data.Length).SequenceEqual(data));
        Assert.True(back.AsSpan(1000 + data.Length).IndexOfAnyExcept((byte)0) < 0);
        // What another reader of the file sees: the same bytes at the same place.
        await disk.FlushAsync(default);
        using var again = FileBlockDevice.OpenRead(P("a.raw"));
        var fromFile = new byte[data.Length];
        await again.ReadAsync(5 * MiB + 123, fromFile, default);
        Assert.Equal(data, fromFile);
    }

    [Fact]
    public async Task Allocated_extents_are_the_written_ranges_clipped_to_the_query()
    {
        using var disk = FileBlockDevice.Create(P("b.raw"), 64L * MiB);
        await disk.WriteAsync(4 * MiB, Random(2, MiB), default);
        await disk.WriteAsync(5 * MiB, Random(3, MiB), default); // adjacent: one extent
        await disk.WriteAsync(20 * MiB, Random(4, 256 * 1024), default);
        var all = await ExtentsAsync(disk, 0, disk.Length);
        var clipped = await ExtentsAsync(disk, 5 * MiB, 15 * MiB + 64 * 1024);
        var none = await ExtentsAsync(disk, 30 * MiB, 30 * MiB);
        if (OperatingSystem.IsLinux())
        {
            Assert.Equal(new[] { new Extent(4 * MiB, 2 * MiB), new Extent(20 * MiB, 256 * 1024) }, all);
            Assert.Equal(new[] { new Extent(5 * MiB, MiB), new Extent(20 * MiB, 64 * 1024) }, clipped);
            Assert.Empty(none);
        }
        else
        {
            // Without SEEK_DATA the whole range may hold data, which is what IBlockSource asks for then.
            Assert.Equal(new[] { new Extent(0, disk.Length) }, all);
            Assert.Equal(new[] { new Extent(5 * MiB, 15 * MiB + 64 * 1024) }, clipped);
        }
    }

    [Fact]
    public async Task Write_zeroes_reads_back_as_zeros_and_deallocates_on_linux()
    {
        using var disk = FileBlockDevice.Create(P("c.raw"), 16L * MiB);
        var data = Random(5, 4 * MiB);
        await disk.WriteAsync(2 * MiB, data, default);
        await disk.WriteZeroesAsync(3 * MiB, MiB, default);
        await disk.WriteZeroesAsync(5 * MiB + 100, 1000, default); // not block aligned: zeroed, stays allocated
        var back = new byte[4 * MiB];
        await disk.ReadAsync(2 * MiB, back, default);
        var expected = (byte[])data.Clone();
        Array.Clear(expected, MiB, MiB);
        Array.Clear(expected, 3 * MiB + 100, 1000);
        Assert.Equal(expected, back);
        if (OperatingSystem.IsLinux())
            Assert.Equal(new[] { new Extent(2 * MiB, MiB), new Extent(4 * MiB, 2 * MiB) }, await ExtentsAsync(disk, 0, disk.Length));
    }

    [Fact]
    public async Task Concurrent_writes_and_reads_from_many_tasks_land_at_their_offsets()
    {
        const int chunk = 128 * 1024, chunks = 64;
        using var disk = FileBlockDevice.Create(P("d.raw"), (long)chunk * chunks);
        await Task.WhenAll(Enumerable.Range(0, chunks).Select(i => Task.Run(async () =>
            await disk.WriteAsync((long)i * chunk, Random(100 + i, chunk), default))));
        var results = await Task.WhenAll(Enumerable.Range(0, chunks).Select(i => Task.Run(async () =>
        {
            var b = new byte[chunk];
            await disk.ReadAsync((long)i * chunk, b, default);
            return b;
        })));
        for (int i = 0; i < chunks; i++) Assert.True(results[i].AsSpan().SequenceEqual(Random(100 + i, chunk)), $"chunk {i}");
    }

    [Fact]
    public async Task Ranges_outside_the_disk_and_writes_to_a_read_only_image_are_refused()
    {
        using (var disk = FileBlockDevice.Create(P("e.raw"), MiB))
        {
            await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await disk.ReadAsync(MiB - 10, new byte[11], default));
            await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await disk.WriteAsync(-1, new byte[1], default));
            await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await disk.WriteZeroesAsync(10, MiB, default));
            await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () => await ExtentsAsync(disk, 0, MiB + 1));
            await disk.ReadAsync(MiB - 10, new byte[10], default); // the last bytes are fine
        }
        using var ro = FileBlockDevice.OpenRead(P("e.raw"));
        var ex = await Assert.ThrowsAsync<NotSupportedException>(async () => await ro.WriteAsync(0, new byte[1], default));
        Assert.Contains("e.raw", ex.Message);
        await Assert.ThrowsAsync<NotSupportedException>(async () => await ro.WriteZeroesAsync(0, 512, default));
    }

    [Fact]
    public async Task A_file_truncated_behind_the_device_fails_loudly_instead_of_reading_zeros()
    {
        using var disk = FileBlockDevice.Create(P("f.raw"), 2 * MiB);
        await disk.WriteAsync(0, Random(6, 2 * MiB), default);
        using (var other = new FileStream(P("f.raw"), FileMode.Open, FileAccess.Write, FileShare.ReadWrite)) other.SetLength(MiB);
        var ex = await Assert.ThrowsAsync<IOException>(async () => await disk.ReadAsync(MiB / 2, new byte[MiB], default));
        Assert.Contains("shorter", ex.Message);
    }

    [Fact]
    public async Task Create_keeps_an_existing_file_unless_told_to_overwrite_and_open_write_keeps_the_length()
    {
        await File.WriteAllBytesAsync(P("g.raw"), Random(7, 4096));
        Assert.Throws<IOException>(() => FileBlockDevice.Create(P("g.raw"), MiB));
        Assert.Equal(Random(7, 4096), await File.ReadAllBytesAsync(P("g.raw")));
        using (var w = FileBlockDevice.OpenWrite(P("g.raw")))
        {
            Assert.Equal(4096, w.Length);
            await w.WriteAsync(0, new byte[] { 1, 2, 3 }, default);
            await w.FlushAsync(default);
        }
        Assert.Equal(new byte[] { 1, 2, 3 }, (await File.ReadAllBytesAsync(P("g.raw")))[..3]);
        using (FileBlockDevice.Create(P("g.raw"), MiB, overwrite: true)) { }
        var after = await File.ReadAllBytesAsync(P("g.raw"));
        Assert.Equal(MiB, after.Length);
        Assert.True(after.AsSpan().IndexOfAnyExcept((byte)0) < 0);
    }

    [Fact]
    public async Task Write_behind_asks_for_writeback_once_per_window_on_linux_and_not_for_other_streams()
    {
        using (var ms = new MemoryStream()) Assert.Null(WriteBehind.For(ms));
        using var handle = File.OpenHandle(P("wb.raw"), FileMode.CreateNew, FileAccess.ReadWrite);
        var wb = WriteBehind.For(handle, window: MiB);
        if (!OperatingSystem.IsLinux()) { Assert.Null(wb); return; }
        Assert.NotNull(wb);
        Assert.Null(WriteBehind.For(handle, window: 0));
        const int piece = 300 * 1024;
        for (int i = 0; i < 10; i++)
        {
            RandomAccess.Write(handle, Random(200 + i, piece), (long)i * piece);
            wb!.Written((long)i * piece, piece);
        }
        Assert.Equal(2, wb!.Requests); // after 1200 KiB and 2400 KiB; 600 KiB still pending
        using var disk = FileBlockDevice.OpenRead(P("wb.raw"));
        var back = new byte[piece];
        await disk.ReadAsync(7L * piece, back, default);
        Assert.Equal(Random(207, piece), back);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Drop_behind_leaves_written_windows_out_of_the_page_cache_and_the_data_intact(bool dropBehind)
    {
        using var handle = File.OpenHandle(P("db.raw"), FileMode.CreateNew, FileAccess.ReadWrite);
        var wb = WriteBehind.For(handle, window: MiB, dropBehind: dropBehind);
        if (!OperatingSystem.IsLinux()) { Assert.Null(wb); return; }
        const int windows = 8;
        for (int i = 0; i < windows; i++)
        {
            RandomAccess.Write(handle, Random(300 + i, MiB), (long)i * MiB);
            wb!.Written((long)i * MiB, MiB);
        }
        RandomAccess.FlushToDisk(handle);
        await wb!.CompleteAsync();
        // Windows 1..6 are dropped in the background once two newer ones exist; CompleteAsync drops the whole file.
        Assert.Equal(dropBehind ? windows - 2 + 1 : 0, wb.Dropped);
        // tmpfs keeps its pages whatever the advice: only a disk-backed file can show the effect.
        if (FileSystemType(_dir) != "tmpfs")
        {
            long resident = ResidentBytes(P("db.raw"));
            if (dropBehind) Assert.Equal(0, resident);
            else Assert.Equal((long)windows * MiB, resident);
        }
        var back = new byte[MiB];
        RandomAccess.Read(handle, back, 5L * MiB);
        Assert.Equal(Random(305, MiB), back);
    }
}
