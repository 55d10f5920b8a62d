using System.Text.Json;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;

namespace VProtect.Core.Backup;

/// <summary>
/// The records needed to recreate a VM, as XAPI returned them at backup time: the VM, each disk's VBD and VDI with
/// its SR's name, each VIF with its MAC and network. Stored as vm.json in every backup; restore reads it without the
/// original host. Raw field maps are kept whole so fields this version does not know survive a round trip.
/// </summary>
public sealed class VmMetadata
{
    public int FormatVersion { get; set; } = 1;
    public string VmUuid { get; set; } = "";
    public string VmName { get; set; } = "";
    public string? SnapshotUuid { get; set; }
    public Dictionary<string, object?> Vm { get; set; } = new();
    public List<DiskMetadata> Disks { get; set; } = new();
    public List<VifMetadata> Vifs { get; set; } = new();

    /// <summary>Reads the VM's records. Disks in <paramref name="excludedVdiRefs"/> are listed but marked excluded.</summary>
    public static async Task<VmMetadata> CaptureAsync(XapiSession session, VmRecord vm, string? snapshotUuid,
        IReadOnlyCollection<string> excludedVdiRefs, CancellationToken ct)
    {
        var m = new VmMetadata { VmUuid = vm.Uuid, VmName = vm.NameLabel, SnapshotUuid = snapshotUuid, Vm = Copy(vm.Raw) };
        foreach (var vbdRef in vm.VBDs)
        {
            var vbd = await session.GetRecordAsync<VbdRecord>(vbdRef, ct).ConfigureAwait(false);
            var disk = new DiskMetadata { Vbd = Copy(vbd.Raw) };
            if (vbd.Type == "Disk" && !XapiValue.IsNullRef(vbd.VDI))
            {
                var vdi = await session.GetRecordAsync<VdiRecord>(vbd.VDI, ct).ConfigureAwait(false);
                disk.Vdi = Copy(vdi.Raw);
                disk.VdiUuid = vdi.Uuid;
                disk.Excluded = excludedVdiRefs.Contains(vbd.VDI);
                if (!XapiValue.IsNullRef(vdi.SR))
                {
                    var sr = await session.GetRecordAsync<SrRecord>(vdi.SR, ct).ConfigureAwait(false);
                    disk.SrUuid = sr.Uuid;
                    disk.SrName = sr.NameLabel;
                }
            }
            m.Disks.Add(disk);
        }
        foreach (var vifRef in vm.VIFs)
        {
            var vif = await session.GetRecordAsync<VifRecord>(vifRef, ct).ConfigureAwait(false);
            var entry = new VifMetadata { Vif = Copy(vif.Raw), Mac = vif.MAC, Device = vif.Device };
            if (!XapiValue.IsNullRef(vif.Network))
            {
                var net = await session.GetRecordAsync<NetworkRecord>(vif.Network, ct).ConfigureAwait(false);
                entry.NetworkUuid = net.Uuid;
                entry.NetworkName = net.NameLabel;
            }
            m.Vifs.Add(entry);
        }
        return m;
    }

    public static VmMetadata Read(string path)
    {
        using var s = File.OpenRead(path);
        var m = JsonSerializer.Deserialize<VmMetadata>(s, Repository.BackupManifest.Json)
                ?? throw new Formats.BackupFormatException(path, 0, "vm.json is empty.");
        m.Vm = XapiJson.NormalizeStruct(m.Vm);
        foreach (var d in m.Disks) { d.Vbd = XapiJson.NormalizeStruct(d.Vbd); d.Vdi = d.Vdi is null ? null : XapiJson.NormalizeStruct(d.Vdi); }
        foreach (var v in m.Vifs) v.Vif = XapiJson.NormalizeStruct(v.Vif);
        return m;
    }

    private static Dictionary<string, object?> Copy(IReadOnlyDictionary<string, object?> raw) => new(raw);
}

public sealed class DiskMetadata
{
    public Dictionary<string, object?> Vbd { get; set; } = new();
    public Dictionary<string, object?>? Vdi { get; set; }
    public string? VdiUuid { get; set; }
    public string? SrUuid { get; set; }
    public string? SrName { get; set; }
    public bool Excluded { get; set; }
}

public sealed class VifMetadata
{
    public Dictionary<string, object?> Vif { get; set; } = new();
    public string Mac { get; set; } = "";
    public string Device { get; set; } = "";
    public string? NetworkUuid { get; set; }
    public string? NetworkName { get; set; }
}

/// <summary>Turns values read back from JSON into XAPI values (string, long, double, bool, object?[], Dictionary).</summary>
public static class XapiJson
{
    public static Dictionary<string, object?> NormalizeStruct(Dictionary<string, object?> raw)
        => raw.ToDictionary(kv => kv.Key, kv => Normalize(kv.Value));

    public static object? Normalize(object? value) => value switch
    {
        JsonElement e => FromElement(e),
        _ => value,
    };

    private static object? FromElement(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Number => e.TryGetInt64(out var l) ? l : e.GetDouble(),
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        JsonValueKind.Array => e.EnumerateArray().Select(FromElement).ToArray(),
        JsonValueKind.Object => e.EnumerateObject().ToDictionary(p => p.Name, p => FromElement(p.Value)),
        _ => null,
    };
}
