using System.IO.Compression;
using System.Runtime.CompilerServices;
using VProtect.Core.Formats.Xva;
using Xunit;
using static VProtect.Core.Tests.Xva.XvaTestData;

namespace VProtect.Core.Tests.Xva;

/// <summary>The checked-in xapi-shaped sample (see <see cref="XapiStyleSample"/>) and other writers' header flavours.</summary>
public class XvaSampleTests
{
    private static string SamplePath([CallerFilePath] string here = "") =>
        Path.Combine(Path.GetDirectoryName(here)!, "Samples", "xapi-style.xva.gz");

    [Fact]
    public async Task Checked_in_sample_is_what_its_documented_generator_builds()
    {
        var tar = XapiStyleSample.BuildTar();
        if (Environment.GetEnvironmentVariable("VPROTECT_WRITE_SAMPLES") == "1")
        {
            using var f = File.Create(SamplePath());
            using var gz = new GZipStream(f, CompressionLevel.SmallestSize);
            gz.Write(tar);
        }
        Assert.True(File.Exists(SamplePath()), $"{SamplePath()} is missing; regenerate it (see XapiStyleSample).");
        using var input = new GZipStream(File.OpenRead(SamplePath()), CompressionMode.Decompress);
        var checkedIn = new MemoryStream();
        await input.CopyToAsync(checkedIn);
        Assert.Equal(tar, checkedIn.ToArray());
    }

    [Fact]
    public async Task Checked_in_sample_reads_with_its_disks_and_metadata()
    {
        await using var file = File.OpenRead(SamplePath());
        var (result, disks) = await ReadToMemoryAsync(file, "xapi-style.xva.gz");

        Assert.Equal(XvaCompression.Gzip, result.Compression);
        var v = result.Metadata.Version;
        Assert.Equal((25L, 6L, 2L, "xs-sample", "XenServer"), (v.XapiMajor, v.XapiMinor, v.ExportVersion, v.Hostname, v.ProductBrand));
        Assert.Equal(new[] { "VM", "VBD", "SR", "VIF", "network", "VDI", "VBD", "VDI" }, result.Metadata.Objects.Select(o => o.Class));
        Assert.Equal("sample & vm", result.Metadata.Vm!.GetString("name_label"));
        Assert.Equal(2147483648L, result.Metadata.Vm.GetInt64("memory_static_max"));
        Assert.Equal(new DateTime(1970, 1, 1, 0, 0, 0, DateTimeKind.Utc), result.Metadata.Vm.Snapshot["snapshot_time"]);
        Assert.Equal(new[] { XapiStyleSample.VdiFirst, XapiStyleSample.VdiSecond }, result.Disks.Select(d => d.VdiId));
        Assert.Equal(new[] { XapiStyleSample.VdiFirst, XapiStyleSample.VdiSecond }, result.Metadata.Vdis.Select(d => d.Id));

        var second = result.Disks[1];
        Assert.Equal((3L, 1L, 1L), (second.ChunksPresent, second.ChunksOmitted, second.KeepAliveChunks));
        Assert.Equal(XapiStyleSample.Expected(XapiStyleSample.VdiFirst), await ReadAllAsync(disks[XapiStyleSample.VdiFirst]));
        Assert.Equal(XapiStyleSample.Expected(XapiStyleSample.VdiSecond), await ReadAllAsync(disks[XapiStyleSample.VdiSecond]));
    }

    [Theory]
    [InlineData(RawTarBuilder.Flavour.V7)]
    [InlineData(RawTarBuilder.Flavour.Ustar)]
    [InlineData(RawTarBuilder.Flavour.Gnu)]
    public async Task Header_flavours_are_read(RawTarBuilder.Flavour flavour)
    {
        var data = Pattern(MiB, 4);
        var last = Pattern(MiB, 5); // Xen Orchestra pads the last chunk to 1 MiB and rounds virtual_size up
        var xva = new RawTarBuilder()
            .Add("ova.xml", System.Text.Encoding.UTF8.GetBytes(OvaXml(("Ref:002", 3L * MiB))), flavour)
            .Chunk("Ref:002", 0, data, flavour: flavour)
            .Chunk("Ref:002", 2, last, flavour: flavour)
            .End().ToArray();
        var (_, disks) = await ReadToMemoryAsync(new MemoryStream(xva));
        var got = await ReadAllAsync(disks["Ref:002"]);
        Assert.Equal(data, got[..MiB]);
        Assert.False(got.AsSpan(MiB, MiB).ContainsAnyExcept((byte)0), "the omitted chunk did not read as zeros");
        Assert.Equal(last, got[(2 * MiB)..]);
    }

    [Fact]
    public async Task Gnu_long_names_pax_paths_ustar_prefixes_and_directories_are_read()
    {
        var a = Pattern(1000, 1);
        var b = Pattern(2000, 2);
        string sumA = XxHash(a), sumB = XxHash(b);
        // Long names and pax overrides replace the (deliberately wrong) names in the following header.
        var longName = System.Text.Encoding.ASCII.GetBytes("Ref:1/00000000\0");
        var pax = PaxRecord("path", "Ref:2/00000000") + PaxRecord("size", "2000");
        var xva = new RawTarBuilder()
            .AddText("ova.xml", OvaXml(("Ref:1", 1000), ("Ref:2", 2000)), RawTarBuilder.Flavour.Ustar)
            .Add("Ref:1/", [], RawTarBuilder.Flavour.Ustar, type: '5')
            .Add("././@LongLink", longName, RawTarBuilder.Flavour.Gnu, type: 'L')
            .Add("junk", a, RawTarBuilder.Flavour.Gnu)
            .Add("00000000.xxhash", System.Text.Encoding.ASCII.GetBytes(sumA), RawTarBuilder.Flavour.Ustar, prefix: "Ref:1")
            .Add("PaxHeaders/x", System.Text.Encoding.UTF8.GetBytes(pax), RawTarBuilder.Flavour.Ustar, type: 'x')
            .Add("junk2", b, RawTarBuilder.Flavour.Ustar)
            .Add("Ref:2/00000000.xxhash", System.Text.Encoding.ASCII.GetBytes(sumB), RawTarBuilder.Flavour.Ustar)
            .End().ToArray();
        var (_, disks) = await ReadToMemoryAsync(new MemoryStream(xva));
        Assert.Equal(a, await ReadAllAsync(disks["Ref:1"]));
        Assert.Equal(b, await ReadAllAsync(disks["Ref:2"]));
    }

    [Fact]
    public async Task A_forward_only_stream_with_tiny_reads_is_read()
    {
        var tar = XapiStyleSample.BuildTar();
        var (result, disks) = await ReadToMemoryAsync(new TrickleStream(tar));
        Assert.Equal(tar.Length, result.TarBytes);
        Assert.Equal(XapiStyleSample.Expected(XapiStyleSample.VdiSecond), await ReadAllAsync(disks[XapiStyleSample.VdiSecond]));
    }

    [Fact]
    public async Task Cancellation_stops_a_read()
    {
        using var cts = new CancellationTokenSource();
        cts.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() =>
            XvaReader.ReadAsync(new TrickleStream(XapiStyleSample.BuildTar()), "x", null, cts.Token));
    }

    private static string PaxRecord(string key, string value)
    {
        string body = $" {key}={value}\n";
        int len = body.Length + 1;
        while ((len.ToString() + body).Length != len) len++;
        return len + body;
    }

    /// <summary>Forward-only, at most 7 bytes per read: what a slow network download looks like to the reader.</summary>
    private sealed class TrickleStream(byte[] data) : Stream
    {
        private int _pos;
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override int Read(byte[] buffer, int offset, int count)
        {
            int n = Math.Min(Math.Min(count, 7), data.Length - _pos);
            Array.Copy(data, _pos, buffer, offset, n);
            _pos += n;
            return n;
        }
        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            cancellationToken.ThrowIfCancellationRequested();
            int n = Math.Min(Math.Min(buffer.Length, 7), data.Length - _pos);
            data.AsSpan(_pos, n).CopyTo(buffer.Span);
            _pos += n;
            return ValueTask.FromResult(n);
        }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
