using System.IO.Hashing;
using System.Security.Cryptography;
using System.Text;
using VProtect.Core.Formats.Xva;
using VProtect.Core.IO;

namespace VProtect.Core.Tests.Xva;

/// <summary>Shared builders for XVA tests: xapi-shaped metadata, random sparse disks, hand-made XVA streams.</summary>
internal static class XvaTestData
{
    public const int MiB = 1024 * 1024;

    /// <summary>Metadata for one VM whose VDIs have the given ids and sizes (as our model, for the writer).</summary>
    public static XvaMetadata Metadata(params (string Id, long Size)[] vdis)
    {
        var objects = new List<XvaObject>
        {
            new("VM", "Ref:7001", new Dictionary<string, object?>
            {
                ["uuid"] = "3f1c8f8e-6a2b-4d7e-9c0a-1b2c3d4e5f60",
                ["name_label"] = "web-01 <test> & \"quotes\"",
                ["memory_static_max"] = (4L << 30).ToString(),
                ["VCPUs_max"] = "2",
                ["is_a_template"] = false,
                ["VBDs"] = vdis.Select((v, i) => (object?)$"Ref:{8000 + i}").ToArray(),
                ["other_config"] = new Dictionary<string, object?> { ["mac_seed"] = "x" },
            }),
        };
        for (int i = 0; i < vdis.Length; i++)
        {
            objects.Add(new XvaObject("VBD", $"Ref:{8000 + i}", new Dictionary<string, object?>
            {
                ["VM"] = "Ref:7001", ["VDI"] = vdis[i].Id, ["userdevice"] = i.ToString(), ["type"] = "Disk", ["mode"] = "RW",
            }));
            objects.Add(new XvaObject("VDI", vdis[i].Id, new Dictionary<string, object?>
            {
                ["uuid"] = Guid.NewGuid().ToString(), ["name_label"] = $"disk {i}", ["virtual_size"] = vdis[i].Size.ToString(),
                ["SR"] = "Ref:9000", ["type"] = "user", ["sharable"] = false, ["read_only"] = false,
            }));
        }
        objects.Add(new XvaObject("SR", "Ref:9000", new Dictionary<string, object?> { ["name_label"] = "Local storage", ["content_type"] = "user" }));
        return new XvaMetadata(new XvaVersion { Hostname = "xs1", Date = "2026-11-27", ProductVersion = "8.4.0", ProductBrand = "XenServer", BuildNumber = "release/yangtze/master/1", XapiMajor = 25, XapiMinor = 6 }, objects);
    }

    /// <summary>A random sparse disk: some 64 KiB pages with random data, some runs of whole chunks left empty.</summary>
    public static SparseMemoryDisk RandomDisk(Random rng, long length, double fill)
    {
        var disk = new SparseMemoryDisk(length);
        var page = new byte[SparseMemoryDisk.PageSize];
        for (long off = 0; off < length; off += page.Length)
        {
            if (rng.NextDouble() >= fill) continue;
            int n = (int)Math.Min(page.Length, length - off);
            rng.NextBytes(page.AsSpan(0, n));
            disk.WriteAsync(off, page.AsMemory(0, n), default).AsTask().GetAwaiter().GetResult();
        }
        return disk;
    }

    /// <summary>SHA-256 of a whole disk, read in 1 MiB pieces.</summary>
    public static async Task<string> HashAsync(IBlockSource disk)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buf = new byte[MiB];
        for (long off = 0; off < disk.Length; off += buf.Length)
        {
            int n = (int)Math.Min(buf.Length, disk.Length - off);
            await disk.ReadAsync(off, buf.AsMemory(0, n), default);
            sha.AppendData(buf, 0, n);
        }
        return Convert.ToHexString(sha.GetHashAndReset());
    }

    /// <summary>An ova.xml written by hand in xapi's style (untyped strings and int64s), for one VDI per entry.</summary>
    public static string OvaXml(params (string Id, long Size)[] vdis)
    {
        var sb = new StringBuilder("<value><struct><member><name>version</name><value><struct>");
        sb.Append("<member><name>hostname</name><value>xs1</value></member>");
        sb.Append("<member><name>xapi_major</name><value><int>1</int></value></member>");
        sb.Append("<member><name>xapi_minor</name><value><int>20</int></value></member>");
        sb.Append("<member><name>export_vsn</name><value><int>2</int></value></member>");
        sb.Append("</struct></value></member><member><name>objects</name><value><array><data>");
        foreach (var (id, size) in vdis)
            sb.Append($"<value><struct><member><name>class</name><value>VDI</value></member><member><name>id</name><value>{id}</value></member>" +
                      $"<member><name>snapshot</name><value><struct><member><name>virtual_size</name><value>{size}</value></member></struct></value></member></struct></value>");
        sb.Append("</data></array></value></member></struct></value>");
        return sb.ToString();
    }

    public static string XxHash(ReadOnlySpan<byte> data) => XxHash64.HashToUInt64(data).ToString("X16");

    /// <summary>Adds a chunk and its .xxhash (or a given checksum text) to a hand-built tar.</summary>
    public static RawTarBuilder Chunk(this RawTarBuilder tar, string vdi, long counter, byte[] data, string? checksum = null,
        RawTarBuilder.Flavour flavour = RawTarBuilder.Flavour.V7, string ext = ".xxhash")
    {
        string name = $"{vdi}/{counter:D8}";
        tar.Add(name, data, flavour);
        string sum = checksum ?? (ext == ".checksum" ? Convert.ToHexString(SHA1.HashData(data)).ToLowerInvariant() : XxHash(data));
        return tar.Add(name + ext, Encoding.ASCII.GetBytes(sum), flavour);
    }

    public static byte[] Pattern(int length, int seed)
    {
        var b = new byte[length];
        new Random(seed).NextBytes(b);
        return b;
    }

    /// <summary>Reads into sparse disks sized from the metadata; returns the result and the disks by VDI id.</summary>
    public static async Task<(XvaReadResult Result, Dictionary<string, SparseMemoryDisk> Disks)> ReadToMemoryAsync(Stream xva, string name = "test.xva")
    {
        var disks = new Dictionary<string, SparseMemoryDisk>();
        var result = await XvaReader.ReadAsync(xva, name, new XvaReadOptions
        {
            OpenTarget = (d, _) => { var m = new SparseMemoryDisk(d.VirtualSize); disks[d.VdiId] = m; return ValueTask.FromResult<IBlockTarget?>(m); },
        }, CancellationToken.None);
        return (result, disks);
    }

    public static async Task<byte[]> ReadAllAsync(IBlockSource disk)
    {
        var b = new byte[disk.Length];
        await disk.ReadAsync(0, b, default);
        return b;
    }
}
