using System.Text;

namespace VProtect.Core.Tests.Xva;

/// <summary>
/// Builds <c>Samples/xapi-style.xva.gz</c> from the facts in research/xapi.md §7, without XvaWriter or our XML-RPC
/// encoder: ova.xml is written out as text the way xapi's <c>Xmlrpc.to_string</c> does (strings and int64 record
/// fields as untyped <c>&lt;value&gt;</c>, the version ints as <c>&lt;i4&gt;</c>, booleans as 0/1, no XML declaration),
/// tar headers come from <see cref="RawTarBuilder"/> in V7 form (mode 0400, mtime 0 for chunks), and checksums
/// are <c>.xxhash</c> files (XXH64 seed 0, 16 upper-case hex digits, from System.IO.Hashing).
/// Content:
/// <list type="bullet">
/// <item>VM Ref:99990 with VBDs Ref:99994, Ref:100002; VIF Ref:99996 on network Ref:99997; SR Ref:99995.</item>
/// <item>VDI Ref:100003 (1.5 MiB: chunk 0, short last chunk 1) and VDI Ref:99999 (3 MiB + 4 KiB: chunk 0 at counter 0,
/// a zero-length keep-alive at counter 1 that shifts later counters by one, chunk 1 all-zero and omitted (counter 2
/// absent), chunk 2 at counter 3, the 4 KiB last chunk 3 at counter 4). Ids come from a large counter, and "Ref:100003" sorts before "Ref:99999", so that
/// disk's data comes first, as xapi orders them.</item>
/// </list>
/// The tar is gzip-compressed when checked in (1 MiB chunks of patterned data shrink to a few KiB).
/// Regenerate with <c>VPROTECT_WRITE_SAMPLES=1 dotnet test --filter FullyQualifiedName~XvaSampleTests</c>.
/// </summary>
internal static class XapiStyleSample
{
    public const string VdiFirst = "Ref:100003", VdiSecond = "Ref:99999";
    public const long FirstSize = 3 * XvaTestData.MiB / 2, SecondSize = 3L * XvaTestData.MiB + 4096;

    /// <summary>Deterministic disk contents: byte i of disk d is a simple function of i, so tests can recompute them.</summary>
    public static byte ContentByte(string vdi, long offset) => (byte)((offset * 31 + (vdi == VdiFirst ? 7 : 13) + offset / 4096) & 0xFF);

    public static byte[] Expected(string vdi)
    {
        long size = vdi == VdiFirst ? FirstSize : SecondSize;
        var b = new byte[size];
        for (long i = 0; i < size; i++)
        {
            bool zero = vdi == VdiSecond && i >= XvaTestData.MiB && i < 2 * XvaTestData.MiB; // the omitted chunk
            b[i] = zero ? (byte)0 : ContentByte(vdi, i);
        }
        return b;
    }

    public static byte[] BuildTar()
    {
        var first = Expected(VdiFirst);
        var second = Expected(VdiSecond);
        var tar = new RawTarBuilder();
        tar.Add("ova.xml", Encoding.UTF8.GetBytes(OvaXml()), mtime: 1795780800); // 2026-11-27T12:00:00Z
        tar.Chunk(VdiFirst, 0, first[..XvaTestData.MiB]);
        tar.Chunk(VdiFirst, 1, first[XvaTestData.MiB..]);
        tar.Chunk(VdiSecond, 0, second[..XvaTestData.MiB]);
        tar.Chunk(VdiSecond, 1, []);                                                  // keep-alive: later counters shift by one
        // counter 2 (chunk 1, all zero) omitted
        tar.Chunk(VdiSecond, 3, second[(2 * XvaTestData.MiB)..(3 * XvaTestData.MiB)]); // chunk 2
        tar.Chunk(VdiSecond, 4, second[(3 * XvaTestData.MiB)..]);                     // chunk 3, short (4 KiB)
        return tar.End().ToArray();
    }

    private static string OvaXml()
    {
        static string S(string v) => $"<value>{v}</value>";
        static string M(string name, string value) => $"<member><name>{name}</name>{value}</member>";
        static string Struct(params string[] members) => "<value><struct>" + string.Concat(members) + "</struct></value>";
        static string Arr(params string[] values) => "<value><array><data>" + string.Concat(values) + "</data></array></value>";
        static string Obj(string cls, string id, string snapshot) => Struct(M("class", S(cls)), M("id", S(id)), M("snapshot", snapshot));
        const string Null = "OpaqueRef:NULL";
        string bo(bool b) => $"<value><boolean>{(b ? 1 : 0)}</boolean></value>";

        var version = Struct(
            M("hostname", S("xs-sample")), M("date", S("2026-11-27")), M("product_version", S("8.4.0")),
            M("product_brand", S("XenServer")), M("build_number", S("release/yangtze/master/58")),
            M("xapi_major", "<value><i4>25</i4></value>"), M("xapi_minor", "<value><i4>6</i4></value>"),
            M("export_vsn", "<value><i4>2</i4></value>"));
        var vm = Obj("VM", "Ref:99990", Struct(
            M("uuid", S("6f0d3c2a-5b7e-4e1f-9a2b-3c4d5e6f7a8b")), M("name_label", S("sample &amp; vm")), M("name_description", S("")),
            M("power_state", S("Halted")), M("is_a_template", bo(false)), M("is_a_snapshot", bo(false)),
            M("snapshot_of", S(Null)), M("snapshots", Arr()), M("snapshot_time", "<value><dateTime.iso8601>19700101T00:00:00Z</dateTime.iso8601></value>"),
            M("memory_static_max", S("2147483648")), M("VCPUs_max", S("2")), M("VCPUs_at_startup", S("2")),
            M("VBDs", Arr(S("Ref:99994"), S("Ref:100002"))), M("VIFs", Arr(S("Ref:99996"))),
            M("HVM_boot_params", Struct(M("order", S("cd")), M("firmware", S("uefi")))),
            M("other_config", Struct(M("mac_seed", S("0c7b5a1e-0000-4000-8000-000000000001")))),
            M("affinity", S(Null)), M("guest_metrics", S(Null))));
        string vbd(string id, string vdi, string dev) => Obj("VBD", id, Struct(
            M("uuid", S($"aaaaaaaa-0000-4000-8000-0000000{id[4..]}")), M("VM", S("Ref:99990")), M("VDI", S(vdi)),
            M("userdevice", S(dev)), M("bootable", bo(dev == "0")), M("mode", S("RW")), M("type", S("Disk")), M("empty", bo(false))));
        string vdiObj(string id, long size, string label) => Obj("VDI", id, Struct(
            M("uuid", S($"bbbbbbbb-0000-4000-8000-0000000{id[4..]}")), M("name_label", S(label)), M("name_description", S("")),
            M("SR", S("Ref:99995")), M("virtual_size", S(size.ToString())), M("physical_utilisation", S(size.ToString())),
            M("type", S("user")), M("sharable", bo(false)), M("read_only", bo(false)), M("VBDs", Arr()),
            M("other_config", Struct()), M("sm_config", Struct()), M("snapshot_of", S(Null)), M("cbt_enabled", bo(false))));
        var objects = Arr(
            vm,
            vbd("Ref:99994", VdiSecond, "0"),
            Obj("SR", "Ref:99995", Struct(M("uuid", S("cccccccc-0000-4000-8000-000000000001")), M("name_label", S("Local storage")),
                M("content_type", S("user")), M("type", S("ext")), M("VDIs", Arr(S(VdiSecond), S(VdiFirst))))),
            Obj("VIF", "Ref:99996", Struct(M("uuid", S("dddddddd-0000-4000-8000-000000000001")), M("VM", S("Ref:99990")),
                M("network", S("Ref:99997")), M("device", S("0")), M("MAC", S("b6:2a:11:22:33:44")), M("MTU", S("1500")))),
            Obj("network", "Ref:99997", Struct(M("uuid", S("eeeeeeee-0000-4000-8000-000000000001")), M("name_label", S("Pool-wide network associated with eth0")),
                M("bridge", S("xenbr0")), M("VIFs", Arr(S("Ref:99996"))))),
            vdiObj(VdiSecond, SecondSize, "system"),
            vbd("Ref:100002", VdiFirst, "1"),
            vdiObj(VdiFirst, FirstSize, "data"));
        return Struct(M("version", version), M("objects", objects));
    }
}
