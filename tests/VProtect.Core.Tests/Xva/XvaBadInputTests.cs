using System.IO.Compression;
using System.Text;
using VProtect.Core.Formats;
using VProtect.Core.Formats.Xva;
using VProtect.Core.IO;
using Xunit;
using static VProtect.Core.Tests.Xva.XvaTestData;

namespace VProtect.Core.Tests.Xva;

/// <summary>Every malformed stream must end in a BackupFormatException naming the stream and offset: no crash, hang or wrong data.</summary>
public class XvaBadInputTests
{
    private const string Name = "bad.xva";

    private static RawTarBuilder Start(params (string Id, long Size)[] vdis) =>
        new RawTarBuilder().AddText("ova.xml", OvaXml(vdis.Length == 0 ? [("Ref:1", 4L * MiB)] : vdis));

    private static async Task<BackupFormatException> FailsAsync(byte[] xva, bool compressed = false)
    {
        var ex = await Assert.ThrowsAsync<BackupFormatException>(() => ReadToMemoryAsync(new MemoryStream(xva), Name));
        Assert.StartsWith(Name, ex.Source);
        // Offsets are in the decompressed tar, which may be longer than a compressed input.
        if (!compressed) Assert.InRange(ex.Offset, 0, xva.Length);
        return ex;
    }

    private static async Task<byte[]> ValidXvaAsync(XvaCompression compression = XvaCompression.None)
    {
        var disk = RandomDisk(new Random(3), 3 * MiB + 999, 0.6);
        var ms = new MemoryStream();
        await XvaWriter.WriteAsync(ms, Metadata(("Ref:1", disk.Length)), [new XvaDiskSource("Ref:1", disk)],
            new XvaWriteOptions { KeepAliveInterval = null, Compression = compression }, default);
        return ms.ToArray();
    }

    [Fact]
    public async Task Every_truncation_of_a_valid_xva_is_reported()
    {
        var xva = await ValidXvaAsync();
        var rng = new Random(11);
        // The last 512 bytes are the second end-of-archive block, which a reader may do without.
        var cuts = new List<int> { 0, 1, 511, 512, 513, xva.Length - 1024, xva.Length - 600 };
        for (int i = 0; i < 40; i++) cuts.Add(rng.Next(0, xva.Length - 512));
        foreach (int cut in cuts)
        {
            var ex = await FailsAsync(xva[..cut]);
            Assert.Contains("truncated", ex.Message);
        }
    }

    [Theory]
    [InlineData(XvaCompression.Gzip)]
    [InlineData(XvaCompression.Zstd)]
    public async Task Truncated_compressed_streams_are_reported(XvaCompression compression)
    {
        var xva = await ValidXvaAsync(compression);
        await FailsAsync(xva[..(xva.Length / 2)], compressed: true);
        await FailsAsync(xva[..(xva.Length - 30)], compressed: true);
    }

    [Fact]
    public async Task Corrupt_compressed_data_is_reported()
    {
        var xva = await ValidXvaAsync(XvaCompression.Gzip);
        for (int i = 100; i < 400; i++) xva[i] ^= 0x5A;
        await FailsAsync(xva, compressed: true);
    }

    [Fact]
    public async Task A_corrupted_chunk_is_detected_and_named()
    {
        var xva = await ValidXvaAsync();
        // Second chunk's data starts after ova.xml, chunk 0 and its checksum; flip one byte in it.
        int dataStart = Find(xva, "Ref:1/00000001") + 512;
        xva[dataStart + 777] ^= 1;
        var ex = await FailsAsync(xva);
        Assert.Contains("Chunk Ref:1/00000001", ex.Message);
        Assert.Contains("checksum", ex.Message);
        Assert.Equal(dataStart - 512, ex.Offset);
    }

    [Fact]
    public async Task A_wrong_checksum_text_names_the_chunk_and_no_data_reaches_the_target()
    {
        var xva = Start().Chunk("Ref:1", 0, Pattern(MiB, 1), checksum: "0123456789ABCDEF").End().ToArray();
        SparseMemoryDisk? target = null;
        var ex = await Assert.ThrowsAsync<BackupFormatException>(() => XvaReader.ReadAsync(new MemoryStream(xva), Name, new XvaReadOptions
        {
            OpenTarget = (d, _) => ValueTask.FromResult<IBlockTarget?>(target = new SparseMemoryDisk(d.VirtualSize)),
        }, default));
        Assert.Contains("Ref:1/00000000", ex.Message);
        Assert.Equal(0, target!.AllocatedPageCount);
    }

    [Fact]
    public async Task A_legacy_sha1_checksum_mismatch_is_detected()
    {
        var xva = Start().Chunk("Ref:1", 0, Pattern(MiB, 1), checksum: new string('a', 40), ext: ".checksum").End().ToArray();
        Assert.Contains("checksum", (await FailsAsync(xva)).Message);
    }

    [Theory]
    [InlineData("../evil")]
    [InlineData("Ref:1/../../etc/passwd")]
    [InlineData("/etc/passwd")]
    [InlineData("C:\\evil")]
    public async Task Hostile_names_are_refused(string name)
    {
        var xva = Start().Add(name, Pattern(10, 1)).End().ToArray();
        var ex = await FailsAsync(xva);
        Assert.Equal(Find(xva, name), ex.Offset);
    }

    [Theory]
    [InlineData('1')]
    [InlineData('2')]
    public async Task Links_are_refused(char type)
    {
        var xva = Start().Add("Ref:1/00000000", [], type: type, linkName: "/etc/shadow").End().ToArray();
        Assert.Contains("link", (await FailsAsync(xva)).Message);
    }

    [Theory]
    [InlineData('3')]
    [InlineData('4')]
    [InlineData('6')]
    public async Task Devices_and_fifos_are_refused(char type)
    {
        var xva = Start().Add("Ref:1/00000000", [], type: type).End().ToArray();
        Assert.Contains("regular files", (await FailsAsync(xva)).Message);
    }

    [Fact]
    public async Task Counters_out_of_order_are_refused()
    {
        var xva = Start().Chunk("Ref:1", 2, Pattern(MiB, 1)).Chunk("Ref:1", 1, Pattern(MiB, 2)).End().ToArray();
        Assert.Contains("strictly increase", (await FailsAsync(xva)).Message);
    }

    [Fact]
    public async Task Repeated_counters_are_refused()
    {
        var xva = Start().Chunk("Ref:1", 0, Pattern(MiB, 1)).Chunk("Ref:1", 0, Pattern(MiB, 1)).End().ToArray();
        Assert.Contains("strictly increase", (await FailsAsync(xva)).Message);
    }

    [Fact]
    public async Task A_missing_checksum_file_is_refused()
    {
        var chunk = Pattern(MiB, 1);
        var xva = Start().Add("Ref:1/00000000", chunk).Chunk("Ref:1", 1, Pattern(MiB, 2)).End().ToArray();
        Assert.Contains("no checksum file", (await FailsAsync(xva)).Message);
        var last = Start().Chunk("Ref:1", 0, chunk).Add("Ref:1/00000001", chunk).End().ToArray();
        Assert.Contains("no checksum file", (await FailsAsync(last)).Message);
    }

    [Fact]
    public async Task A_checksum_without_its_chunk_is_refused()
    {
        var xva = Start().Chunk("Ref:1", 0, Pattern(MiB, 1)).AddText("Ref:1/00000000.xxhash", "0000000000000000").End().ToArray();
        Assert.Contains("does not follow", (await FailsAsync(xva)).Message);
    }

    [Fact]
    public async Task A_chunk_larger_than_the_chunk_size_is_refused()
    {
        var xva = Start().Chunk("Ref:1", 0, Pattern(MiB + 1, 1)).End().ToArray();
        Assert.Contains("more than the 1048576-byte chunk size", (await FailsAsync(xva)).Message);
        // The first chunk sets the size; a later, larger one is damage.
        var grow = Start().Chunk("Ref:1", 0, Pattern(4096, 1)).Chunk("Ref:1", 1, Pattern(8192, 2)).End().ToArray();
        Assert.Contains("chunk size of 4096", (await FailsAsync(grow)).Message);
    }

    [Fact]
    public async Task Huge_declared_sizes_fail_fast_without_allocating()
    {
        long huge = (8L << 30) - 1; // largest 11-digit octal size
        var chunk = Start().Add("Ref:1/00000000", [], declaredSize: huge, writeData: false).ToArray();
        Assert.Contains("declares", (await FailsAsync(chunk)).Message);
        var ova = new RawTarBuilder().Add("ova.xml", [], declaredSize: huge, writeData: false).ToArray();
        Assert.Contains("declares", (await FailsAsync(ova)).Message);
        var longName = new RawTarBuilder().Add("././@LongLink", [], type: 'L', declaredSize: huge, writeData: false, flavour: RawTarBuilder.Flavour.Gnu).ToArray();
        Assert.Contains("declares", (await FailsAsync(longName)).Message);
        var pax = new RawTarBuilder().Add("PaxHeader", [], type: 'x', declaredSize: huge, writeData: false, flavour: RawTarBuilder.Flavour.Ustar).ToArray();
        Assert.Contains("declares", (await FailsAsync(pax)).Message);
        var checksum = Start().Add("Ref:1/00000000", Pattern(10, 1)).Add("Ref:1/00000000.xxhash", [], declaredSize: huge, writeData: false).ToArray();
        Assert.Contains("declares", (await FailsAsync(checksum)).Message);
    }

    [Fact]
    public async Task A_base256_size_field_of_absurd_size_is_refused()
    {
        var xva = Start().Add("Ref:1/00000000", [], writeData: false).ToArray();
        int header = Find(xva, "Ref:1/00000000");
        // GNU base-256 size: 0x80 marker then 2^62 big-endian; fix the header checksum afterwards.
        var size = xva.AsSpan(header + 124, 12);
        size.Clear();
        size[0] = 0x80;
        size[4] = 0x40;
        FixChecksum(xva, header);
        Assert.Contains("declares", (await FailsAsync(xva)).Message);
    }

    [Fact]
    public async Task Data_beyond_the_disk_size_is_refused()
    {
        var xva = Start(("Ref:1", MiB + 10)).Chunk("Ref:1", 0, Pattern(MiB, 1)).Chunk("Ref:1", 1, Pattern(MiB, 2)).End().ToArray();
        Assert.Contains("beyond the end of disk Ref:1", (await FailsAsync(xva)).Message);
        var gap = Start(("Ref:1", 3 * MiB)).Chunk("Ref:1", 0, Pattern(MiB, 1)).Chunk("Ref:1", 5, Pattern(MiB, 2)).End().ToArray();
        Assert.Contains("the end of", (await FailsAsync(gap)).Message);
        var farGap = Start(("Ref:1", 3 * MiB)).Chunk("Ref:1", 0, Pattern(MiB, 1)).Chunk("Ref:1", 99999999999999, Pattern(MiB, 2)).End().ToArray();
        Assert.Contains("past the end", (await FailsAsync(farGap)).Message);
    }

    [Fact]
    public async Task An_unknown_vdi_id_is_refused()
    {
        var xva = Start().Chunk("Ref:2", 0, Pattern(100, 1)).End().ToArray();
        Assert.Contains("does not list as a VDI", (await FailsAsync(xva)).Message);
    }

    [Fact]
    public async Task Disks_out_of_xapi_order_are_refused()
    {
        // "Ref:10" < "Ref:9" lexicographically, so Ref:9 must come last.
        var xva = Start(("Ref:9", MiB), ("Ref:10", MiB)).Chunk("Ref:9", 0, Pattern(MiB, 1)).Chunk("Ref:10", 0, Pattern(MiB, 2)).End().ToArray();
        Assert.Contains("comes after disk Ref:9", (await FailsAsync(xva)).Message);
        var back = Start(("Ref:1", 2 * MiB), ("Ref:2", MiB)).Chunk("Ref:1", 0, Pattern(MiB, 1)).Chunk("Ref:2", 0, Pattern(MiB, 2)).Chunk("Ref:1", 1, Pattern(MiB, 3)).End().ToArray();
        await FailsAsync(back);
    }

    [Fact]
    public async Task Ova_xml_not_first_is_refused()
    {
        var xva = new RawTarBuilder().Chunk("Ref:1", 0, Pattern(100, 1)).AddText("ova.xml", OvaXml(("Ref:1", 100))).End().ToArray();
        var ex = await FailsAsync(xva);
        Assert.Contains("starts with ova.xml", ex.Message);
        Assert.Equal(0, ex.Offset);
        Assert.True(XvaErrors.TryGetUnexpectedMember(ex, out var expected, out var actual));
        Assert.Equal(("ova.xml", "Ref:1/00000000"), (expected, actual));
        // Other layout errors carry no member pair (xapi reports them as the generic IMPORT_ERROR).
        var missing = Start().Add("Ref:1/00000000", Pattern(100, 1)).Chunk("Ref:1", 1, Pattern(100, 2)).End().ToArray();
        Assert.False(XvaErrors.TryGetUnexpectedMember(await FailsAsync(missing), out _, out _));
    }

    [Fact]
    public async Task A_second_ova_xml_is_refused()
    {
        var xva = Start().AddText("ova.xml", OvaXml(("Ref:1", 100))).End().ToArray();
        Assert.Contains("second ova.xml", (await FailsAsync(xva)).Message);
    }

    [Theory]
    [InlineData("<value><struct><member><name>version</name>")]
    [InlineData("not xml at all")]
    [InlineData("<?xml version=\"1.0\"?><!DOCTYPE x [<!ENTITY a \"aaaa\">]><value>&a;</value>")]
    [InlineData("<value><array><data></data></array></value>")]
    [InlineData("<value><struct><member><name>objects</name><value><array><data></data></array></value></member></struct></value>")]
    public async Task Malformed_ova_xml_is_refused(string xml)
    {
        var xva = new RawTarBuilder().AddText("ova.xml", xml).End().ToArray();
        var ex = await FailsAsync(xva);
        Assert.Equal(512, ex.Offset); // where ova.xml's data starts
        Assert.Contains("ova.xml", ex.Message);
    }

    [Fact]
    public async Task Absurdly_deep_ova_xml_is_refused()
    {
        var sb = new StringBuilder();
        for (int i = 0; i < 5000; i++) sb.Append("<value><array><data>");
        for (int i = 0; i < 5000; i++) sb.Append("</data></array></value>");
        var xva = new RawTarBuilder().AddText("ova.xml", sb.ToString()).End().ToArray();
        Assert.Contains("ova.xml", (await FailsAsync(xva)).Message);
    }

    [Fact]
    public async Task Unexpected_members_are_refused()
    {
        var xva = Start().AddText("Ref:1/notes.txt", "hi").End().ToArray();
        Assert.Contains("Unexpected member", (await FailsAsync(xva)).Message);
    }

    [Fact]
    public async Task A_damaged_tar_header_is_refused()
    {
        var xva = Start().Chunk("Ref:1", 0, Pattern(100, 1)).End().ToArray();
        int chunkHeader = Find(xva, "Ref:1/00000000");
        xva[chunkHeader + 20] ^= 0x40; // inside the name field: the header checksum no longer matches
        var ex = await FailsAsync(xva);
        Assert.Equal(chunkHeader, ex.Offset);
        Assert.Contains("checksum mismatch", ex.Message);
    }

    [Fact]
    public async Task Garbage_and_empty_input_are_refused()
    {
        await FailsAsync(Pattern(5000, 9));
        await FailsAsync([]);
        await FailsAsync(new byte[1024]); // an empty tar: no ova.xml
    }

    [Fact]
    public async Task A_gzip_bomb_of_zeros_stops_at_the_end_marker()
    {
        // 64 MiB of zeros compressed: the first zero block is the end-of-archive, before any ova.xml.
        var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Fastest, leaveOpen: true)) gz.Write(new byte[64 * MiB]);
        var ex = await FailsAsync(ms.ToArray());
        Assert.Contains("no ova.xml", ex.Message);
    }

    private static void FixChecksum(byte[] tar, int header)
    {
        var h = tar.AsSpan(header, 512);
        h.Slice(148, 8).Fill((byte)' ');
        int sum = 0;
        foreach (byte b in h) sum += b;
        Encoding.ASCII.GetBytes(Convert.ToString(sum, 8).PadLeft(6, '0') + "\0 ").CopyTo(h.Slice(148));
    }

    [Fact]
    public async Task Random_corruption_is_reported_or_harmless_never_wrong_data()
    {
        // Any single damaged byte must either be reported as a BackupFormatException or leave the disk data intact
        // (padding, an ignored header field, the case of a hex digit). Never another exception, never other data.
        var disk = RandomDisk(new Random(41), 2 * MiB + 3000, 0.8);
        var ms = new MemoryStream();
        await XvaWriter.WriteAsync(ms, Metadata(("Ref:1", disk.Length)), [new XvaDiskSource("Ref:1", disk)], new XvaWriteOptions { KeepAliveInterval = null }, default);
        var good = ms.ToArray();
        string expected = await HashAsync(disk);
        var rng = new Random(42);
        int reported = 0;
        for (int i = 0; i < 150; i++)
        {
            var bad = (byte[])good.Clone();
            // Half the hits land in headers and metadata (the first 8 KiB and each header), half anywhere.
            int at = i % 2 == 0 ? rng.Next(0, Math.Min(8192, bad.Length)) : rng.Next(0, bad.Length);
            bad[at] ^= (byte)(1 << rng.Next(8));
            try
            {
                var (_, disks) = await ReadToMemoryAsync(new MemoryStream(bad));
                Assert.Equal(expected, await HashAsync(disks["Ref:1"]));
            }
            catch (BackupFormatException)
            {
                reported++;
            }
        }
        Assert.True(reported > 50, $"only {reported} of 150 corruptions were reported");
    }

    [Fact]
    public async Task Errors_carry_the_kind_xapi_would_report()
    {
        var valid = await ValidXvaAsync();
        Assert.Equal(XvaErrorKind.Truncated, XvaErrors.KindOf(await FailsAsync(valid[..(valid.Length / 2)])));
        var zstd = await ValidXvaAsync(XvaCompression.Zstd);
        Assert.Equal(XvaErrorKind.Truncated, XvaErrors.KindOf(await FailsAsync(zstd[..(zstd.Length / 2)], compressed: true)));
        var badSum = Start().Chunk("Ref:1", 0, Pattern(100, 1), checksum: "0000000000000000").End().ToArray();
        Assert.Equal(XvaErrorKind.ChecksumMismatch, XvaErrors.KindOf(await FailsAsync(badSum)));
        var unknown = Start().Chunk("Ref:2", 0, Pattern(100, 1)).End().ToArray();
        Assert.Equal(XvaErrorKind.UnknownObject, XvaErrors.KindOf(await FailsAsync(unknown)));
        var notFirst = new RawTarBuilder().Chunk("Ref:1", 0, Pattern(100, 1)).End().ToArray();
        Assert.Equal(XvaErrorKind.UnexpectedMember, XvaErrors.KindOf(await FailsAsync(notFirst)));
        var noSum = Start().Add("Ref:1/00000000", Pattern(100, 1)).End().ToArray();
        Assert.Equal(XvaErrorKind.UnexpectedMember, XvaErrors.KindOf(await FailsAsync(noSum)));
        var badXml = new RawTarBuilder().AddText("ova.xml", "<value><struct>").End().ToArray();
        Assert.Equal(XvaErrorKind.Malformed, XvaErrors.KindOf(await FailsAsync(badXml)));
    }

    internal static int Find(byte[] haystack, string name)
    {
        var needle = Encoding.ASCII.GetBytes(name + "\0");
        for (int i = 0; i + needle.Length <= haystack.Length; i += 512)
            if (haystack.AsSpan(i, needle.Length).SequenceEqual(needle)) return i;
        throw new InvalidOperationException($"{name} not found");
    }
}
