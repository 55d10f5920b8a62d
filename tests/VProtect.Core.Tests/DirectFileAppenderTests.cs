using VProtect.Core.IO;
using Xunit;
using static VProtect.Core.Tests.FileProbe;

namespace VProtect.Core.Tests;

public sealed class DirectFileAppenderTests : IDisposable
{
    private const int KiB = 1 << 10, MiB = 1 << 20;
    private const int Buffer = 64 * KiB; // small, so that every path (split, wrap-around, partial tail) is taken
    private readonly string _dir = Directory.CreateTempSubdirectory("directappender-").FullName;

    public void Dispose() { try { Directory.Delete(_dir, recursive: true); } catch (IOException) { } }

    private string P(string name) => Path.Combine(_dir, name);

    private static byte[] Random(int seed, int length)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    /// <summary>Piece sizes that start and end everywhere relative to blocks and buffers.</summary>
    private static List<int> AwkwardPieces()
    {
        var sizes = new List<int> { 1, 4095, 4097, Buffer, Buffer * 7 / 2, 0 };
        var random = new Random(42);
        for (int i = 0; i < 300; i++) sizes.Add(random.Next(1, 3000)); // many small pieces, crossing buffer ends
        sizes.Add(Buffer - 1);
        sizes.Add(1);
        return sizes;
    }

    /// <summary>
    /// Appends consecutive slices of <paramref name="expected"/> through one reused scratch array that is scribbled
    /// over after each call (the caller may reuse its memory once AppendAsync returns).
    /// </summary>
    private static async Task AppendPiecesAsync(DirectFileAppender appender, byte[] expected, IEnumerable<int> sizes)
    {
        var scratch = new byte[sizes.Max()];
        int at = 0;
        foreach (int size in sizes)
        {
            expected.AsSpan(at, size).CopyTo(scratch);
            await appender.AppendAsync(scratch.AsMemory(0, size), default);
            scratch.AsSpan(0, size).Fill(0xEE);
            at += size;
            Assert.Equal(at, appender.Position);
        }
    }

    [Theory]
    [InlineData(true, 3)]
    [InlineData(true, 1)]
    [InlineData(false, 3)]
    [InlineData(false, 2)]
    public async Task Pieces_of_awkward_sizes_read_back_identical_and_the_file_is_exactly_Position_long(bool allowDirect, int buffers)
    {
        var sizes = AwkwardPieces();
        var expected = Random(1, sizes.Sum());
        await using (var appender = DirectFileAppender.Create(P("a.data"), Buffer, buffers, allowDirect))
        {
            if (!allowDirect) Assert.False(appender.IsDirect);
            await AppendPiecesAsync(appender, expected, sizes);
            Assert.NotEqual(0, expected.Length % 4096); // the tail is a partial block: padded, then cut back
            await appender.CompleteAsync(default);
            Assert.Equal(expected.Length, appender.Position);
            Assert.Equal(expected.Length, new FileInfo(P("a.data")).Length);
        }
        Assert.Equal(expected, File.ReadAllBytes(P("a.data")));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_file_ending_on_a_buffer_boundary_or_left_empty_has_exactly_its_bytes(bool allowDirect)
    {
        var expected = Random(2, 3 * Buffer);
        await using (var appender = DirectFileAppender.Create(P("whole.data"), Buffer, 2, allowDirect))
        {
            await appender.AppendAsync(expected.AsMemory(0, Buffer / 2), default);
            await appender.AppendAsync(expected.AsMemory(Buffer / 2), default);
            await appender.CompleteAsync(default);
        }
        Assert.Equal(expected, File.ReadAllBytes(P("whole.data")));
        await using (var empty = DirectFileAppender.Create(P("empty.data"), Buffer, 2, allowDirect))
        {
            await empty.CompleteAsync(default);
            Assert.Equal(0, empty.Position);
            Assert.Equal(0, empty.AllocatedBuffers);
        }
        Assert.Equal(0, new FileInfo(P("empty.data")).Length);
    }

    [Fact]
    public async Task On_a_disk_file_system_writes_bypass_the_page_cache()
    {
        var expected = Random(3, 10 * MiB + 12345);
        var appender = DirectFileAppender.Create(P("direct.data"));
        try
        {
            if (!OperatingSystem.IsLinux() || !DirectIsPossibleHere()) { Assert.False(appender.IsDirect); return; }
            string fs = FileSystemType(_dir);
            // ext2/ext3 is what stat calls ext4 too. Elsewhere (tmpfs took O_DIRECT only from Linux 6.6, FUSE, CIFS)
            // either path is right, and the content tests below cover both.
            if (fs is not ("ext2/ext3" or "xfs" or "btrfs")) return;
            Assert.True(appender.IsDirect, $"O_DIRECT refused on {fs}");
            foreach (var piece in expected.Chunk(300 * KiB)) await appender.AppendAsync(piece, default);
            await appender.CompleteAsync(default);
            Assert.Equal(3, appender.AllocatedBuffers);
        }
        finally { await appender.DisposeAsync(); }
        Assert.Equal(0, appender.AllocatedBuffers);
        // Checked before anything reads the file back (reading would cache it).
        Assert.Equal(0, ResidentBytes(P("direct.data")));
        Assert.Equal(expected, File.ReadAllBytes(P("direct.data")));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Create_on_an_existing_path_throws_IOException_and_leaves_the_file_untouched(bool allowDirect)
    {
        var original = Random(4, 5000);
        File.WriteAllBytes(P("exists.data"), original);
        var e = Assert.Throws<IOException>(() => DirectFileAppender.Create(P("exists.data"), Buffer, 3, allowDirect));
        Assert.Contains(P("exists.data"), e.Message);
        Assert.Equal(original, File.ReadAllBytes(P("exists.data")));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Open_errors_are_the_exceptions_a_FileStream_throws(bool allowDirect)
    {
        File.WriteAllBytes(P("taken"), [1, 2, 3]);
        foreach (string path in new[] { P("taken"), P(Path.Combine("no-such-dir", "x.data")) })
        {
            var expected = Record.Exception(() => new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.Asynchronous).Dispose());
            var actual = Record.Exception(() => DirectFileAppender.Create(path, Buffer, 3, allowDirect));
            Assert.NotNull(expected);
            Assert.NotNull(actual);
            Assert.Equal(expected.GetType(), actual.GetType());
            Assert.Contains(path, actual.Message);
        }
        Assert.False(File.Exists(P(Path.Combine("no-such-dir", "x.data"))));
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_cancelled_append_throws_and_dispose_afterwards_frees_everything(bool allowDirect)
    {
        var appender = DirectFileAppender.Create(P("cancel.data"), Buffer, 2, allowDirect);
        await appender.AppendAsync(Random(5, Buffer * 3 / 2), default); // one write started, one buffer half full
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await appender.AppendAsync(Random(6, Buffer * 3), cts.Token));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () => await appender.CompleteAsync(cts.Token));
        Assert.Equal(2, appender.AllocatedBuffers);
        await appender.DisposeAsync();
        await appender.DisposeAsync(); // twice: frees nothing twice
        Assert.Equal(0, appender.AllocatedBuffers);
        await Assert.ThrowsAsync<ObjectDisposedException>(async () => await appender.AppendAsync(new byte[1], default));
        if (OperatingSystem.IsLinux()) Assert.DoesNotContain(P("cancel.data"), OpenFiles());
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Cancelled_while_writes_are_in_flight_dispose_still_frees_everything(bool allowDirect)
    {
        var appender = DirectFileAppender.Create(P("cancel2.data"), Buffer, 2, allowDirect);
        using var cts = new CancellationTokenSource();
        var data = Random(7, 16 * Buffer);
        await appender.AppendAsync(data, cts.Token);
        // Cancelled at some point of a stream of appends: at a call's start, or while it waits for a write.
        cts.CancelAfter(TimeSpan.FromMilliseconds(20));
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            while (true) await appender.AppendAsync(data, cts.Token);
        });
        await appender.DisposeAsync();
        Assert.Equal(0, appender.AllocatedBuffers);
        if (OperatingSystem.IsLinux()) Assert.DoesNotContain(P("cancel2.data"), OpenFiles());
    }

    [Theory]
    [InlineData(1)]
    [InlineData(3)]
    public async Task A_failed_write_makes_every_later_call_throw_its_IOException(int buffers)
    {
        if (!OperatingSystem.IsLinux()) return;
        // /dev/full: every write fails with ENOSPC.
        var handle = File.OpenHandle("/dev/full", FileMode.Open, FileAccess.Write);
        var appender = DirectFileAppender.ForHandle(handle, "/dev/full", direct: true, Buffer, buffers);
        IOException? first = null;
        try
        {
            // Enough full buffers that some write has failed by the time a buffer is reused.
            for (int i = 0; i < 2 * buffers + 2; i++) await appender.AppendAsync(Random(8, Buffer), default);
        }
        catch (IOException e) { first = e; }
        if (first is null)
        {
            first = await Assert.ThrowsAsync<IOException>(async () => await appender.CompleteAsync(default));
        }
        Assert.Contains("space", first.Message, StringComparison.OrdinalIgnoreCase);
        Assert.Same(first, await Assert.ThrowsAsync<IOException>(async () => await appender.AppendAsync(new byte[1], default)));
        Assert.Same(first, await Assert.ThrowsAsync<IOException>(async () => await appender.CompleteAsync(default)));
        await appender.DisposeAsync();
        Assert.Equal(0, appender.AllocatedBuffers);
        Assert.True(handle.IsClosed);
    }

    [Fact]
    public async Task Space_reserved_ahead_of_the_writes_is_given_back_and_the_file_stays_in_few_extents()
    {
        // 100 MiB + a tail: the appender reserves 64 MiB ahead at a time (fallocate, size unchanged); after completion the
        // file must occupy its length rounded to a block, not the reservation, and not be cut into many pieces.
        var appender = DirectFileAppender.Create(P("reserve.data"));
        long length = 100L * MiB + 12345;
        try
        {
            if (!OperatingSystem.IsLinux() || !appender.IsDirect) return; // the reservation is part of the O_DIRECT path
            var piece = Random(9, 777_777);
            for (long done = 0; done < length;)
            {
                int n = (int)Math.Min(piece.Length, length - done);
                await appender.AppendAsync(piece.AsMemory(0, n), default);
                done += n;
            }
            await appender.CompleteAsync(default);
        }
        finally { await appender.DisposeAsync(); }
        if (!OperatingSystem.IsLinux() || FileSystemType(_dir) is not ("ext2/ext3" or "xfs")) return;
        Assert.Equal(length, new FileInfo(P("reserve.data")).Length);
        long allocated = long.Parse(Run("stat", "-c", "%b", P("reserve.data")), System.Globalization.CultureInfo.InvariantCulture) * 512;
        Assert.InRange(allocated, length, (length + 4095) / 4096 * 4096 + 64 * KiB);
        // filefrag: "<path>: N extents found"
        string frag = Run("filefrag", P("reserve.data"));
        int extents = int.Parse(frag[(frag.LastIndexOf(':') + 1)..].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(extents <= 8, $"the file is in {extents} extents: {frag}");
    }

    /// <summary>The appender knows O_DIRECT's value on Linux x64 and arm64 only.</summary>
    private static bool DirectIsPossibleHere() =>
        System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture is System.Runtime.InteropServices.Architecture.X64 or System.Runtime.InteropServices.Architecture.Arm64;

    private static IEnumerable<string> OpenFiles() =>
        new DirectoryInfo("/proc/self/fd").EnumerateFileSystemInfos().Select(f => f.LinkTarget ?? "").ToList();
}
