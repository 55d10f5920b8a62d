using VProtect.Core.Formats;
using VProtect.Core.Formats.Xva;
using Xunit;

namespace VProtect.Core.Tests.Xva;

public class XvaMetadataTests
{
    [Fact]
    public void Builder_rewrites_references_like_xapi_export()
    {
        var b = new XvaMetadataBuilder(firstId: 4711);
        string vm = b.Add("VM", "OpaqueRef:vm", new Dictionary<string, object?>
        {
            ["name_label"] = "a", ["VBDs"] = new object?[] { "OpaqueRef:vbd", "OpaqueRef:cd-vbd" },
            ["resident_on"] = "OpaqueRef:host", ["other_config"] = new Dictionary<string, object?> { ["OpaqueRef:key"] = "OpaqueRef:vdi" },
        });
        string vbd = b.Add("VBD", "OpaqueRef:vbd", new Dictionary<string, object?> { ["VM"] = "OpaqueRef:vm", ["VDI"] = "OpaqueRef:vdi" });
        string vdi = b.Add("VDI", "OpaqueRef:vdi", new Dictionary<string, object?> { ["virtual_size"] = "1024", ["SR"] = "OpaqueRef:sr" });
        Assert.Equal(vdi, b.Add("VDI", "OpaqueRef:vdi", new Dictionary<string, object?>()));
        var meta = b.Build(new XvaVersion());

        Assert.Equal(("Ref:4711", "Ref:4712", "Ref:4713"), (vm, vbd, vdi));
        var vmRec = meta.Find(vm)!;
        Assert.Equal(new object?[] { "Ref:4712", "OpaqueRef:NULL" }, (object?[])vmRec.Snapshot["VBDs"]!);
        Assert.Equal("OpaqueRef:NULL", vmRec.GetString("resident_on"));
        var oc = (Dictionary<string, object?>)vmRec.Snapshot["other_config"]!;
        Assert.Equal("Ref:4713", oc["OpaqueRef:key"]); // keys are left alone, values rewritten
        Assert.Equal(vm, meta.Find(vbd)!.GetString("VM"));
        Assert.Equal("OpaqueRef:NULL", meta.Find(vdi)!.GetString("SR"));
        Assert.Equal(new[] { vdi }, meta.Vdis.Select(v => v.Id));
    }

    [Fact]
    public void Encoded_metadata_decodes_to_the_same_model()
    {
        var meta = new XvaMetadata(new XvaVersion { Hostname = "h", XapiMajor = 2, XapiMinor = 21, ExportVersion = 2 }, [
            new XvaObject("VM", "Ref:1", new Dictionary<string, object?>
            {
                ["name_label"] = "x < y & z", ["is_a_template"] = true, ["VCPUs_max"] = 4L, ["weight"] = 0.5,
                ["tags"] = new object?[] { "a", "b" }, ["snapshot_time"] = new DateTime(2026, 1, 2, 3, 4, 5, DateTimeKind.Utc),
            }),
        ]);
        var back = XvaMetadataXml.Decode(XvaMetadataXml.Encode(meta), "t", 0);
        Assert.Equal(meta.Version, back.Version);
        var vm = back.Vm!;
        Assert.Equal("x < y & z", vm.GetString("name_label"));
        Assert.Equal(true, vm.Snapshot["is_a_template"]);
        Assert.Equal(4L, vm.GetInt64("VCPUs_max"));
        Assert.Equal(0.5, vm.Snapshot["weight"]);
        Assert.Equal(new object?[] { "a", "b" }, (object?[])vm.Snapshot["tags"]!);
        Assert.Equal(new DateTime(2026, 1, 2, 3, 4, 5, DateTimeKind.Utc), vm.Snapshot["snapshot_time"]);
    }

    [Theory]
    [InlineData("<value><struct><member><name>version</name><value><struct></struct></value></member><member><name>objects</name><value><array><data></data></array></value></member></struct></value>", "xapi_major")]
    [InlineData("<value><struct><member><name>version</name><value><struct><member><name>xapi_major</name><value>1</value></member><member><name>xapi_minor</name><value>2</value></member></struct></value></member><member><name>objects</name><value><array><data><value>oops</value></data></array></value></member></struct></value>", "object #0")]
    [InlineData("<value><struct><member><name>version</name><value><struct><member><name>xapi_major</name><value>1</value></member><member><name>xapi_minor</name><value>2</value></member></struct></value></member><member><name>objects</name><value><array><data><value><struct><member><name>class</name><value>VM</value></member><member><name>id</name><value>Ref:1</value></member></struct></value></data></array></value></member></struct></value>", "snapshot")]
    public void Misshapen_metadata_is_a_format_error(string xml, string expected)
    {
        var ex = Assert.Throws<BackupFormatException>(() => XvaMetadataXml.Decode(xml, "m.xva", 512));
        Assert.Contains(expected, ex.Message);
        Assert.Equal(512, ex.Offset);
    }

    [Fact]
    public void Duplicate_export_ids_are_refused()
    {
        string obj = "<value><struct><member><name>class</name><value>VM</value></member><member><name>id</name><value>Ref:1</value></member><member><name>snapshot</name><value><struct></struct></value></member></struct></value>";
        string xml = "<value><struct><member><name>version</name><value><struct><member><name>xapi_major</name><value>1</value></member><member><name>xapi_minor</name><value>2</value></member></struct></value></member>" +
                     $"<member><name>objects</name><value><array><data>{obj}{obj}</data></array></value></member></struct></value>";
        Assert.Contains("twice", Assert.Throws<BackupFormatException>(() => XvaMetadataXml.Decode(xml, "m", 0)).Message);
        Assert.Throws<ArgumentException>(() => new XvaMetadata(new XvaVersion(), [new XvaObject("VM", "Ref:1", new Dictionary<string, object?>()), new XvaObject("VDI", "Ref:1", new Dictionary<string, object?>())]));
    }
}
