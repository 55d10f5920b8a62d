using System.Formats.Tar;
using VProtect.Core.Formats.Xva;
using VProtect.Core.IO;
using Xunit;
using static VProtect.Core.Tests.Xva.XvaTestData;

namespace VProtect.Core.Tests.Xva;

public class XvaRoundTripTests
{
    private static readonly XvaWriteOptions NoKeepAlive = new() { KeepAliveInterval = null };

    private static async Task<(byte[] Xva, XvaWriteResult Result)> WriteAsync(XvaMetadata meta, XvaWriteOptions options, params XvaDiskSource[] disks)
    {
        var ms = new MemoryStream();
        var result = await XvaWriter.WriteAsync(ms, meta, disks, options, CancellationToken.None);
        return (ms.ToArray(), result);
    }

    [Theory]
    [InlineData(XvaCompression.None, XvaChecksumKind.XxHash64)]
    [InlineData(XvaCompression.Gzip, XvaChecksumKind.XxHash64)]
    [InlineData(XvaCompression.Zstd, XvaChecksumKind.XxHash64)]
    [InlineData(XvaCompression.None, XvaChecksumKind.Sha1)]
    public async Task Disks_and_metadata_survive_a_round_trip(XvaCompression compression, XvaChecksumKind checksum)
    {
        var rng = new Random(42);
        // Ref:10 sorts before Ref:9: disks must come out in id order, whatever order they are given in.
        var a = RandomDisk(rng, 5 * MiB + 12345, 0.3);   // short last chunk
        var b = RandomDisk(rng, 3 * MiB, 0.5);
        var meta = Metadata(("Ref:9", a.Length), ("Ref:10", b.Length));
        var (xva, written) = await WriteAsync(meta, new XvaWriteOptions { Compression = compression, Checksum = checksum, KeepAliveInterval = null },
            new XvaDiskSource("Ref:9", a), new XvaDiskSource("Ref:10", b));

        var (result, disks) = await ReadToMemoryAsync(new MemoryStream(xva));

        Assert.Equal(compression, result.Compression);
        Assert.Equal(new[] { "Ref:10", "Ref:9" }, result.Disks.Select(d => d.VdiId));
        Assert.Equal(await HashAsync(a), await HashAsync(disks["Ref:9"]));
        Assert.Equal(await HashAsync(b), await HashAsync(disks["Ref:10"]));
        Assert.All(result.Disks, d => Assert.Equal(checksum, d.ChecksumKind));
        Assert.Equal(written.TarBytes, result.TarBytes);
        Assert.Equal(written.Disks.Sum(d => d.ChunksWritten), result.Disks.Sum(d => d.ChunksPresent));
        Assert.Equal(meta.Version, result.Metadata.Version);
        Assert.Equal(meta.Objects.Select(o => (o.Class, o.Id)), result.Metadata.Objects.Select(o => (o.Class, o.Id)));
        Assert.Equal("web-01 <test> & \"quotes\"", result.Metadata.Vm!.GetString("name_label"));
        Assert.Equal(a.Length, result.Metadata.Find("Ref:9")!.GetInt64("virtual_size"));
    }

    [Fact]
    public async Task All_zero_chunks_are_omitted_but_first_and_last_are_kept()
    {
        var disk = new SparseMemoryDisk(8 * MiB);
        await disk.WriteAsync(3 * MiB + 100, Pattern(5000, 1), default);
        // Allocated but all zero: only the content check can omit it.
        await disk.WriteAsync(5 * MiB, new byte[MiB], default);
        var meta = Metadata(("Ref:1", disk.Length));

        var (xva, written) = await WriteAsync(meta, NoKeepAlive, new XvaDiskSource("Ref:1", disk));
        var names = TarNames(xva);
        Assert.Equal(new[] { "ova.xml", "Ref:1/00000000", "Ref:1/00000000.xxhash", "Ref:1/00000003", "Ref:1/00000003.xxhash", "Ref:1/00000007", "Ref:1/00000007.xxhash" }, names);
        Assert.Equal(3, written.Disks[0].ChunksWritten);
        Assert.Equal(5, written.Disks[0].ChunksOmitted);

        var (result, disks) = await ReadToMemoryAsync(new MemoryStream(xva));
        Assert.Equal(5, result.Disks[0].ChunksOmitted);
        Assert.Equal(await HashAsync(disk), await HashAsync(disks["Ref:1"]));
    }

    [Fact]
    public async Task Extents_only_mode_writes_allocated_zero_chunks_and_predicts_the_exact_length()
    {
        var disk = new SparseMemoryDisk(6 * MiB + 700);
        await disk.WriteAsync(2 * MiB, new byte[MiB], default); // allocated, zero
        await disk.WriteAsync(4 * MiB + 10, Pattern(3000, 2), default);
        var meta = Metadata(("Ref:3", disk.Length));
        var options = new XvaWriteOptions { ZeroChunks = XvaZeroChunkDetection.ExtentsOnly, KeepAliveInterval = null };
        var sources = new[] { new XvaDiskSource("Ref:3", disk) };

        long predicted = await XvaWriter.ComputeExactLengthAsync(meta, sources, options, CancellationToken.None);
        var (xva, written) = await WriteAsync(meta, options, sources);

        Assert.Equal(predicted, xva.LongLength);
        Assert.Equal(4, written.Disks[0].ChunksWritten); // 0, 2 (zero but allocated), 4, 6 (last)
        Assert.Contains("Ref:3/00000002", TarNames(xva));
        await Assert.ThrowsAsync<InvalidOperationException>(() => XvaWriter.ComputeExactLengthAsync(meta, sources, new XvaWriteOptions(), CancellationToken.None));
    }

    [Fact]
    public async Task Keep_alive_chunks_shift_later_counters_and_read_back_correctly()
    {
        var disk = new SparseMemoryDisk(10 * MiB);
        await disk.WriteAsync(0, Pattern(MiB, 3), default);
        await disk.WriteAsync(6 * MiB, Pattern(MiB, 4), default);
        var meta = Metadata(("Ref:5", disk.Length));
        // Interval zero: a keep-alive before every run of omitted chunks, as xapi does after 5 s of silence.
        var (xva, written) = await WriteAsync(meta, new XvaWriteOptions { KeepAliveInterval = TimeSpan.Zero }, new XvaDiskSource("Ref:5", disk));

        Assert.Equal(2, written.Disks[0].KeepAliveChunks);
        var names = TarNames(xva).Where(n => !n.EndsWith(".xxhash")).ToList();
        // chunk 0; keep-alive at 1; chunk 6 shifted to 7; keep-alive at 8 (for omitted 7, 8); last chunk 9 shifted to 11
        Assert.Equal(new[] { "ova.xml", "Ref:5/00000000", "Ref:5/00000001", "Ref:5/00000007", "Ref:5/00000008", "Ref:5/00000011" }, names);

        var (result, disks) = await ReadToMemoryAsync(new MemoryStream(xva));
        Assert.Equal(2, result.Disks[0].KeepAliveChunks);
        Assert.Equal(await HashAsync(disk), await HashAsync(disks["Ref:5"]));
    }

    [Fact]
    public async Task Written_tar_has_xapi_style_V7_headers_and_checksum_text()
    {
        var disk = new SparseMemoryDisk(MiB / 2);
        await disk.WriteAsync(0, Pattern(1000, 5), default);
        var meta = Metadata(("Ref:1", disk.Length));
        var (xva, _) = await WriteAsync(meta, new XvaWriteOptions { KeepAliveInterval = null, ExportTime = new DateTimeOffset(2026, 11, 27, 12, 0, 0, TimeSpan.Zero) }, new XvaDiskSource("Ref:1", disk));

        using var reader = new TarReader(new MemoryStream(xva));
        var entries = new List<TarEntry>();
        while (reader.GetNextEntry(copyData: true) is { } e) entries.Add(e);
        Assert.All(entries, e => Assert.Equal(TarEntryFormat.V7, e.Format));
        Assert.All(entries, e => Assert.Equal(TarEntryType.V7RegularFile, e.EntryType));
        Assert.All(entries, e => Assert.Equal(UnixFileMode.UserRead, e.Mode));
        Assert.Equal(new DateTimeOffset(2026, 11, 27, 12, 0, 0, TimeSpan.Zero), entries[0].ModificationTime);
        Assert.Equal(DateTimeOffset.UnixEpoch, entries[1].ModificationTime);
        Assert.Equal(MiB / 2, entries[1].Length); // a disk smaller than a chunk: one short chunk
        var chunk = new byte[MiB / 2];
        entries[1].DataStream!.ReadExactly(chunk);
        string text = new StreamReader(entries[2].DataStream!).ReadToEnd();
        Assert.Equal(XxHash(chunk), text);
        Assert.Matches("^[0-9A-F]{16}$", text);
        Assert.Equal(3, entries.Count);
    }

    [Fact]
    public async Task Verify_only_reads_everything_and_keeps_no_data()
    {
        var rng = new Random(7);
        var disk = RandomDisk(rng, 4 * MiB, 0.5);
        var (xva, _) = await WriteAsync(Metadata(("Ref:1", disk.Length)), NoKeepAlive, new XvaDiskSource("Ref:1", disk));
        var result = await XvaReader.VerifyAsync(new MemoryStream(xva), "v.xva", CancellationToken.None);
        Assert.Single(result.Disks);
        Assert.Equal(xva.Length, result.TarBytes);
    }

    [Fact]
    public async Task Reading_over_a_dirty_target_zeroes_omitted_chunks_and_the_tail()
    {
        var disk = new SparseMemoryDisk(4 * MiB);
        await disk.WriteAsync(0, Pattern(100, 8), default);
        var (xva, _) = await WriteAsync(Metadata(("Ref:1", disk.Length)), NoKeepAlive, new XvaDiskSource("Ref:1", disk));
        var dirty = new SparseMemoryDisk(4 * MiB);
        await dirty.WriteAsync(0, Pattern(4 * MiB, 9), default);
        await XvaReader.ReadAsync(new MemoryStream(xva), "x", new XvaReadOptions { OpenTarget = (_, _) => ValueTask.FromResult<IBlockTarget?>(dirty) }, default);
        Assert.Equal(await HashAsync(disk), await HashAsync(dirty));
    }

    [Fact]
    public async Task Progress_reaches_the_total()
    {
        var disk = RandomDisk(new Random(1), 3 * MiB, 0.5);
        var reports = new List<TransferProgress>();
        var progress = new SyncProgress(reports.Add);
        var (xva, _) = await WriteAsync(Metadata(("Ref:1", disk.Length)), new XvaWriteOptions { KeepAliveInterval = null, Progress = progress }, new XvaDiskSource("Ref:1", disk));
        Assert.Equal(new TransferProgress(disk.Length, disk.Length), reports[^1]);
        reports.Clear();
        await XvaReader.ReadAsync(new MemoryStream(xva), "x", new XvaReadOptions { Progress = progress }, default);
        Assert.Equal(new TransferProgress(disk.Length, disk.Length), reports[^1]);
    }

    [Fact]
    public async Task Property_random_sparse_disks_round_trip()
    {
        // Fixed seeds so a failure is reproducible; each case varies size, fill, compression and checksum.
        for (int seed = 1; seed <= 12; seed++)
        {
            var rng = new Random(seed);
            int count = rng.Next(1, 4);
            var sources = new List<XvaDiskSource>();
            for (int i = 0; i < count; i++)
            {
                long len = rng.Next(0, 6 * MiB) + (rng.Next(2) == 0 ? 0 : 1);
                sources.Add(new XvaDiskSource($"Ref:{rng.Next(1, 100000)}", RandomDisk(rng, len, rng.NextDouble())));
            }
            sources = sources.DistinctBy(s => s.VdiId).ToList();
            var meta = Metadata(sources.Select(s => (s.VdiId, s.Source.Length)).ToArray());
            var options = new XvaWriteOptions
            {
                Compression = (XvaCompression)rng.Next(3),
                Checksum = (XvaChecksumKind)rng.Next(2),
                ZeroChunks = (XvaZeroChunkDetection)rng.Next(2),
                KeepAliveInterval = rng.Next(3) == 0 ? TimeSpan.Zero : null,
            };
            var (xva, _) = await WriteAsync(meta, options, sources.ToArray());
            if (options is { Compression: XvaCompression.None, ZeroChunks: XvaZeroChunkDetection.ExtentsOnly, KeepAliveInterval: null })
                Assert.Equal(await XvaWriter.ComputeExactLengthAsync(meta, sources, options, default), xva.LongLength);
            var (result, disks) = await ReadToMemoryAsync(new MemoryStream(xva));
            foreach (var s in sources)
            {
                if (s.Source.Length == 0) { Assert.DoesNotContain(s.VdiId, disks.Keys); continue; }
                Assert.True(disks.ContainsKey(s.VdiId), $"seed {seed}: disk {s.VdiId} missing");
                Assert.Equal(await HashAsync(s.Source), await HashAsync(disks[s.VdiId]));
            }
            Assert.Equal(result.Disks.Select(d => d.VdiId).OrderBy(x => x, StringComparer.Ordinal), result.Disks.Select(d => d.VdiId));
        }
    }

    [Fact]
    public async Task Writer_rejects_disks_that_do_not_match_the_metadata()
    {
        var disk = new SparseMemoryDisk(2 * MiB);
        var meta = Metadata(("Ref:1", MiB));
        await Assert.ThrowsAsync<ArgumentException>(() => XvaWriter.WriteAsync(new MemoryStream(), meta, [new XvaDiskSource("Ref:1", disk)], null, default));
        await Assert.ThrowsAsync<ArgumentException>(() => XvaWriter.WriteAsync(new MemoryStream(), meta, [new XvaDiskSource("Ref:7001", disk)], null, default));
        var opaque = new XvaMetadata(new XvaVersion(), [new XvaObject("VDI", "OpaqueRef:abc", new Dictionary<string, object?> { ["virtual_size"] = "2097152" })]);
        await Assert.ThrowsAsync<ArgumentException>(() => XvaWriter.WriteAsync(new MemoryStream(), opaque, [new XvaDiskSource("OpaqueRef:abc", disk)], null, default));
        var small = new SparseMemoryDisk(MiB);
        await Assert.ThrowsAsync<ArgumentException>(() => XvaWriter.WriteAsync(new MemoryStream(), meta, [new XvaDiskSource("Ref:1", small), new XvaDiskSource("Ref:1", small)], null, default));
    }

    [Fact]
    public async Task Asynchronous_targets_get_the_right_bytes_while_the_next_chunk_downloads()
    {
        var disk = RandomDisk(new Random(21), 9 * MiB + 77, 0.7);
        var (xva, _) = await WriteAsync(Metadata(("Ref:1", disk.Length)), NoKeepAlive, new XvaDiskSource("Ref:1", disk));
        var inner = new SparseMemoryDisk(disk.Length);
        var target = new YieldingTarget(inner);
        await XvaReader.ReadAsync(new MemoryStream(xva), "x", new XvaReadOptions { OpenTarget = (_, _) => ValueTask.FromResult<IBlockTarget?>(target) }, default);
        Assert.Equal(await HashAsync(disk), await HashAsync(inner));
        Assert.True(target.Flushed);
    }

    [Fact]
    public async Task A_failing_target_surfaces_its_error()
    {
        var disk = RandomDisk(new Random(22), 4 * MiB, 1.0);
        var (xva, _) = await WriteAsync(Metadata(("Ref:1", disk.Length)), NoKeepAlive, new XvaDiskSource("Ref:1", disk));
        var target = new YieldingTarget(new SparseMemoryDisk(disk.Length)) { FailAfterWrites = 2 };
        var ex = await Assert.ThrowsAsync<IOException>(() => XvaReader.ReadAsync(new MemoryStream(xva), "x",
            new XvaReadOptions { OpenTarget = (_, _) => ValueTask.FromResult<IBlockTarget?>(target) }, default));
        Assert.Equal("disk full", ex.Message);
    }

    [Fact]
    public async Task Asynchronous_sources_are_read_ahead_without_mixing_up_chunks()
    {
        var disk = RandomDisk(new Random(23), 9 * MiB + 5, 0.7);
        var meta = Metadata(("Ref:1", disk.Length));
        var (xva, _) = await WriteAsync(meta, new XvaWriteOptions { KeepAliveInterval = TimeSpan.Zero }, new XvaDiskSource("Ref:1", new YieldingSource(disk)));
        var (_, disks) = await ReadToMemoryAsync(new MemoryStream(xva));
        Assert.Equal(await HashAsync(disk), await HashAsync(disks["Ref:1"]));
    }

    [Fact]
    public async Task A_failing_source_surfaces_its_error()
    {
        var disk = RandomDisk(new Random(24), 4 * MiB, 1.0);
        var ex = await Assert.ThrowsAsync<IOException>(() => XvaWriter.WriteAsync(new MemoryStream(), Metadata(("Ref:1", disk.Length)),
            [new XvaDiskSource("Ref:1", new YieldingSource(disk) { FailAfterReads = 2 })], new XvaWriteOptions { KeepAliveInterval = null }, default));
        Assert.Equal("read error", ex.Message);
    }

    /// <summary>Answers every read later on another thread: catches a writer that reuses a buffer still being filled.</summary>
    private sealed class YieldingSource(SparseMemoryDisk inner) : IBlockSource
    {
        private int _reads;
        public int FailAfterReads { get; init; } = int.MaxValue;
        public long Length => inner.Length;
        public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
        {
            await Task.Delay(1, cancellationToken);
            if (++_reads > FailAfterReads) throw new IOException("read error");
            await inner.ReadAsync(offset, buffer, cancellationToken);
        }
        public IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, CancellationToken cancellationToken) =>
            inner.GetAllocatedExtentsAsync(offset, length, cancellationToken);
    }

    /// <summary>Completes every write later on another thread, copying the data only then: catches buffer reuse.</summary>
    private sealed class YieldingTarget(SparseMemoryDisk inner) : IBlockTarget
    {
        private int _writes;
        public int FailAfterWrites { get; init; } = int.MaxValue;
        public bool Flushed { get; private set; }
        public long Length => inner.Length;
        public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
        {
            await Task.Yield();
            await Task.Delay(1, cancellationToken);
            if (++_writes > FailAfterWrites) throw new IOException("disk full");
            await inner.WriteAsync(offset, data, cancellationToken);
        }
        public async ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken)
        {
            await Task.Yield();
            await inner.WriteZeroesAsync(offset, length, cancellationToken);
        }
        public ValueTask FlushAsync(CancellationToken cancellationToken) { Flushed = true; return ValueTask.CompletedTask; }
    }

    [Fact]
    public async Task Writing_to_a_forward_only_stream_works()
    {
        var disk = RandomDisk(new Random(31), 3 * MiB + 5, 0.5);
        var meta = Metadata(("Ref:1", disk.Length));
        var sink = new MemoryStream();
        var result = await XvaWriter.WriteAsync(new ForwardOnlyWriteStream(sink), meta, [new XvaDiskSource("Ref:1", disk)],
            new XvaWriteOptions { Compression = XvaCompression.Zstd, KeepAliveInterval = null }, default);
        var (read, disks) = await ReadToMemoryAsync(new MemoryStream(sink.ToArray()));
        Assert.Equal(result.TarBytes, read.TarBytes);
        Assert.Equal(await HashAsync(disk), await HashAsync(disks["Ref:1"]));
    }

    [Fact]
    public async Task Vdis_without_data_are_listed_in_metadata_but_get_no_target()
    {
        var disk = RandomDisk(new Random(32), 2 * MiB, 0.5);
        // Ref:2 is in the metadata (think: a CD's VDI) but no disk source is given for it.
        var meta = Metadata(("Ref:1", disk.Length), ("Ref:2", 10 * MiB));
        var (xva, _) = await WriteAsync(meta, NoKeepAlive, new XvaDiskSource("Ref:1", disk));
        var opened = new List<string>();
        var result = await XvaReader.ReadAsync(new MemoryStream(xva), "x", new XvaReadOptions
        {
            OpenTarget = (d, _) => { opened.Add(d.VdiId); return ValueTask.FromResult<IBlockTarget?>(new SparseMemoryDisk(d.VirtualSize)); },
        }, default);
        Assert.Equal(new[] { "Ref:1" }, opened);
        Assert.Equal(2, result.Metadata.Vdis.Count);
    }

    [Fact]
    public async Task A_target_smaller_than_the_disk_is_refused_before_any_write()
    {
        var disk = RandomDisk(new Random(33), 2 * MiB, 1.0);
        var (xva, _) = await WriteAsync(Metadata(("Ref:1", disk.Length)), NoKeepAlive, new XvaDiskSource("Ref:1", disk));
        var small = new SparseMemoryDisk(MiB);
        await Assert.ThrowsAsync<InvalidOperationException>(() => XvaReader.ReadAsync(new MemoryStream(xva), "x",
            new XvaReadOptions { OpenTarget = (_, _) => ValueTask.FromResult<IBlockTarget?>(small) }, default));
        Assert.Equal(0, small.AllocatedPageCount);
    }

    private sealed class ForwardOnlyWriteStream(Stream inner) : Stream
    {
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);
    }

    internal static List<string> TarNames(byte[] xva)
    {
        using var reader = new TarReader(new MemoryStream(xva));
        var names = new List<string>();
        while (reader.GetNextEntry() is { } e) names.Add(e.Name);
        return names;
    }

    private sealed class SyncProgress(Action<TransferProgress> report) : IProgress<TransferProgress>
    {
        public void Report(TransferProgress value) => report(value);
    }
}
