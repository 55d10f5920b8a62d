using System.IO.Compression;
using System.Security.Cryptography;
using System.Text;
using VProtect.Core.Formats;
using VProtect.Core.Formats.Xva;
using VProtect.Core.IO;
using Xunit;
using static VProtect.Core.Tests.Xva.XvaTestData;

namespace VProtect.Core.Tests.Xva;

/// <summary>
/// XvaChecksumMode.ReportAndContinue (xapi's PUT /import?force=true, stream_vdi.ml recv_all_vdi): a chunk that fails its
/// checksum is written as it arrived and reported; everything structural still throws; Strict stays the default.
/// </summary>
public class XvaChecksumModeTests
{
    private const string Name = "forced.xva";

    private static RawTarBuilder Start(params (string Id, long Size)[] vdis) =>
        new RawTarBuilder().AddText("ova.xml", OvaXml(vdis.Length == 0 ? [("Ref:1", 4L * MiB)] : vdis));

    private static async Task<(XvaReadResult Result, Dictionary<string, SparseMemoryDisk> Disks, List<XvaChecksumFailure> Reported)> ReadForcedAsync(
        byte[] xva, int maxRecorded = 100)
    {
        var disks = new Dictionary<string, SparseMemoryDisk>();
        var reported = new List<XvaChecksumFailure>();
        var result = await XvaReader.ReadAsync(new MemoryStream(xva), Name, new XvaReadOptions
        {
            OpenTarget = (d, _) => { var m = new SparseMemoryDisk(d.VirtualSize); disks[d.VdiId] = m; return ValueTask.FromResult<IBlockTarget?>(m); },
            Checksums = XvaChecksumMode.ReportAndContinue,
            OnChecksumFailure = (f, _) => { reported.Add(f); return ValueTask.CompletedTask; },
            MaxRecordedChecksumFailures = maxRecorded,
        }, default);
        return (result, disks, reported);
    }

    private static Task<BackupFormatException> ForcedFailsAsync(byte[] xva) =>
        Assert.ThrowsAsync<BackupFormatException>(() => ReadForcedAsync(xva));

    [Fact]
    public async Task A_corrupted_chunk_is_written_as_it_arrived_and_reported_with_expected_and_actual()
    {
        var c0 = Pattern(MiB, 1);
        var c1 = Pattern(MiB, 2);
        var c3 = Pattern(MiB, 3);
        string goodSum = XxHash(c1);
        var corrupt = (byte[])c1.Clone();
        corrupt[777] ^= 0x40; // damaged in transit: the checksum file still describes the original data
        var xva = Start().Chunk("Ref:1", 0, c0).Chunk("Ref:1", 1, corrupt, checksum: goodSum).Chunk("Ref:1", 3, c3).End().ToArray();

        var (result, disks, reported) = await ReadForcedAsync(xva);

        var f = Assert.Single(result.ChecksumFailures);
        Assert.Equal(1, result.ChecksumFailureCount);
        Assert.Equal(new XvaChecksumFailure("Ref:1", "Ref:1/00000001", 1, MiB, MiB, XvaChecksumKind.XxHash64, goodSum, XxHash(corrupt),
            XvaBadInputTests.Find(xva, "Ref:1/00000001")), f);
        Assert.Equal([f], reported);
        // The corrupt bytes landed where the chunk belongs; the good chunks and the omitted one are as exported.
        var disk = await ReadAllAsync(disks["Ref:1"]);
        Assert.Equal(c0, disk[..MiB]);
        Assert.Equal(corrupt, disk[MiB..(2 * MiB)]);
        Assert.All(disk[(2 * MiB)..(3 * MiB)], b => Assert.Equal(0, b));
        Assert.Equal(c3, disk[(3 * MiB)..]);
        var summary = Assert.Single(result.Disks);
        Assert.Equal(1, summary.ChecksumFailures);
        Assert.Equal(3, summary.ChunksPresent);
        Assert.Equal(1, summary.ChunksOmitted);
    }

    [Fact]
    public async Task The_default_stays_strict_on_the_same_stream()
    {
        var c1 = Pattern(MiB, 2);
        var xva = Start().Chunk("Ref:1", 0, Pattern(MiB, 1)).Chunk("Ref:1", 1, c1, checksum: "0123456789ABCDEF").End().ToArray();
        Assert.Equal(XvaChecksumMode.Strict, new XvaReadOptions().Checksums);
        var ex = await Assert.ThrowsAsync<BackupFormatException>(() => ReadToMemoryAsync(new MemoryStream(xva), Name));
        Assert.Equal(XvaErrorKind.ChecksumMismatch, XvaErrors.KindOf(ex));
        Assert.Contains("Ref:1/00000001", ex.Message);
        // Forced, the same stream reads to the end.
        var (result, _, _) = await ReadForcedAsync(xva);
        Assert.Equal("0123456789ABCDEF", Assert.Single(result.ChecksumFailures).Expected);
    }

    [Fact]
    public async Task Legacy_sha1_failures_are_reported_in_sha1_terms()
    {
        var data = Pattern(100_000, 5);
        var stored = new string('a', 40);
        var xva = Start(("Ref:1", 100_000)).Chunk("Ref:1", 0, data, checksum: stored, ext: ".checksum").End().ToArray();
        var (result, disks, _) = await ReadForcedAsync(xva);
        var f = Assert.Single(result.ChecksumFailures);
        Assert.Equal(XvaChecksumKind.Sha1, f.ChecksumKind);
        Assert.Equal(stored, f.Expected);
        Assert.Equal(Convert.ToHexString(SHA1.HashData(data)).ToLowerInvariant(), f.Actual);
        Assert.Equal(data, await ReadAllAsync(disks["Ref:1"]));
    }

    [Fact]
    public async Task Failures_on_several_disks_are_counted_per_disk_and_the_list_is_capped()
    {
        var tar = Start(("Ref:1", 3 * MiB), ("Ref:2", 2 * MiB));
        for (int i = 0; i < 3; i++) tar.Chunk("Ref:1", i, Pattern(MiB, 10 + i), checksum: "FFFFFFFFFFFFFFF" + i);
        tar.Chunk("Ref:2", 0, Pattern(MiB, 20)).Chunk("Ref:2", 1, Pattern(MiB, 21), checksum: "0000000000000000");
        var (result, disks, reported) = await ReadForcedAsync(tar.End().ToArray(), maxRecorded: 2);

        Assert.Equal(4, result.ChecksumFailureCount);
        Assert.Equal(["Ref:1/00000000", "Ref:1/00000001"], result.ChecksumFailures.Select(f => f.ChunkName));
        Assert.Equal(["Ref:1/00000000", "Ref:1/00000001", "Ref:1/00000002", "Ref:2/00000001"], reported.Select(f => f.ChunkName));
        Assert.Equal([3L, 1L], result.Disks.Select(d => d.ChecksumFailures));
        Assert.Equal(Pattern(MiB, 21), (await ReadAllAsync(disks["Ref:2"]))[MiB..]);
    }

    [Fact]
    public async Task Report_mode_works_through_a_compressed_stream()
    {
        var c0 = Pattern(MiB, 1);
        var tar = Start(("Ref:1", MiB)).Chunk("Ref:1", 0, c0, checksum: "1111111111111111").End().ToArray();
        var gz = new MemoryStream();
        await using (var z = new GZipStream(gz, CompressionLevel.Fastest, leaveOpen: true)) await z.WriteAsync(tar);
        var (result, disks, _) = await ReadForcedAsync(gz.ToArray());
        Assert.Equal(XvaCompression.Gzip, result.Compression);
        Assert.Equal("1111111111111111", Assert.Single(result.ChecksumFailures).Expected);
        Assert.Equal(c0, await ReadAllAsync(disks["Ref:1"]));
    }

    [Fact]
    public async Task Truncation_still_fails_when_checksums_are_forced()
    {
        var c1 = Pattern(MiB, 2);
        var xva = Start().Chunk("Ref:1", 0, Pattern(MiB, 1)).Chunk("Ref:1", 1, c1, checksum: "0123456789ABCDEF").End().ToArray();
        int afterBadChunk = XvaBadInputTests.Find(xva, "Ref:1/00000001.xxhash") + 1024;
        foreach (int cut in new[] { 700, XvaBadInputTests.Find(xva, "Ref:1/00000001") + 5000, afterBadChunk, xva.Length - 1024 })
        {
            var ex = await ForcedFailsAsync(xva[..cut]);
            Assert.Equal(XvaErrorKind.Truncated, XvaErrors.KindOf(ex));
        }
    }

    [Fact]
    public async Task A_damaged_tar_header_still_fails_when_checksums_are_forced()
    {
        var xva = Start().Chunk("Ref:1", 0, Pattern(MiB, 1)).Chunk("Ref:1", 1, Pattern(MiB, 2), checksum: "0123456789ABCDEF").End().ToArray();
        int header = XvaBadInputTests.Find(xva, "Ref:1/00000001.xxhash");
        xva[header + 130] ^= 0x01; // a size digit: the header checksum no longer matches
        var ex = await ForcedFailsAsync(xva);
        Assert.Contains("Tar header checksum mismatch", ex.Message);
        Assert.Equal(header, ex.Offset);
    }

    [Fact]
    public async Task Bad_ova_xml_still_fails_when_checksums_are_forced()
    {
        var xva = new RawTarBuilder().AddText("ova.xml", "<value><struct><member><name>version</name>").Chunk("Ref:1", 0, Pattern(100, 1), checksum: "0").End().ToArray();
        var ex = await ForcedFailsAsync(xva);
        Assert.Contains("ova.xml", ex.Message);
        Assert.Equal(512, ex.Offset);
    }

    [Fact]
    public async Task A_missing_or_misplaced_checksum_file_still_fails_when_checksums_are_forced()
    {
        var chunk = Pattern(MiB, 1);
        var missing = Start().Add("Ref:1/00000000", chunk).Chunk("Ref:1", 1, Pattern(MiB, 2)).End().ToArray();
        Assert.Equal(XvaErrorKind.UnexpectedMember, XvaErrors.KindOf(await ForcedFailsAsync(missing)));
        // xapi: "Found unsupported checksum file" is a Failure, not Invalid_checksum, so force does not skip it.
        var unsupported = Start().Add("Ref:1/00000000", chunk).Add("Ref:1/00000000.md5", Encoding.ASCII.GetBytes("x")).End().ToArray();
        Assert.Equal(XvaErrorKind.UnexpectedMember, XvaErrors.KindOf(await ForcedFailsAsync(unsupported)));
    }

    [Fact]
    public async Task An_oversized_checksum_file_is_damage_not_a_checksum_failure()
    {
        var xva = Start().Add("Ref:1/00000000", Pattern(100, 1)).Add("Ref:1/00000000.xxhash", new byte[200]).End().ToArray();
        var ex = await ForcedFailsAsync(xva);
        Assert.Equal(XvaErrorKind.Malformed, XvaErrors.KindOf(ex));
        Assert.Contains("declares 200 bytes", ex.Message);
    }

    [Fact]
    public async Task Verify_only_reads_in_report_mode_keep_counting()
    {
        var xva = Start().Chunk("Ref:1", 0, Pattern(MiB, 1), checksum: "2222222222222222").Chunk("Ref:1", 1, Pattern(MiB, 2)).End().ToArray();
        var result = await XvaReader.ReadAsync(new MemoryStream(xva), Name, new XvaReadOptions { Checksums = XvaChecksumMode.ReportAndContinue }, default);
        Assert.Equal(1, result.ChecksumFailureCount);
        Assert.Equal(2, Assert.Single(result.Disks).ChunksPresent);
    }

    [Fact]
    public async Task A_clean_stream_reports_no_failures_in_either_mode()
    {
        var xva = Start().Chunk("Ref:1", 0, Pattern(MiB, 1)).Chunk("Ref:1", 2, Pattern(MiB, 2)).End().ToArray();
        var (forced, _, reported) = await ReadForcedAsync(xva);
        Assert.Empty(forced.ChecksumFailures);
        Assert.Equal(0, forced.ChecksumFailureCount);
        Assert.Empty(reported);
        var (strict, _) = await ReadToMemoryAsync(new MemoryStream(xva), Name);
        Assert.Equal(0, strict.ChecksumFailureCount);
    }

    [Fact]
    public async Task Invalid_options_are_refused_up_front()
    {
        var xva = Start().Chunk("Ref:1", 0, Pattern(100, 1)).End().ToArray();
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => XvaReader.ReadAsync(new MemoryStream(xva), Name,
            new XvaReadOptions { MaxRecordedChecksumFailures = -1 }, default));
        await Assert.ThrowsAsync<ArgumentOutOfRangeException>(() => XvaReader.ReadAsync(new MemoryStream(xva), Name,
            new XvaReadOptions { Checksums = (XvaChecksumMode)7 }, default));
    }
}
