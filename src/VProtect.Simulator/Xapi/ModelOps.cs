using System.Security.Cryptography;
using VProtect.Simulator.Database;
using VProtect.Simulator.Storage;

namespace VProtect.Simulator.Xapi;

/// <summary>Object-level operations shared by the call handlers and the scenario builder.</summary>
internal sealed class ModelOps
{
    private readonly SimulatorCore _core;
    public ModelOps(SimulatorCore core) => _core = core;
    private XapiDatabase Db => _core.Db;

    public static string NewMac()
    {
        Span<byte> b = stackalloc byte[6];
        RandomNumberGenerator.Fill(b);
        b[0] = (byte)((b[0] & 0xFE) | 0x02); // locally administered unicast, as xapi's random MACs
        return Convert.ToHexString(b).ToLowerInvariant().Chunk(2).Select(c => new string(c)).Aggregate((a, x) => a + ":" + x);
    }

    public bool IsIsoSr(XapiObject sr) => sr.Str("content_type") == "iso";

    /// <summary>Creates a VDI record with storage behind it, enforcing SR capacity (SR_FULL [requested, maximum]).</summary>
    public XapiObject CreateVdi(string srRef, Dictionary<string, object?> fields, long virtualSize)
    {
        lock (Db.Gate)
        {
            var sr = Db.Get("SR", srRef);
            EnsureSpace(sr, virtualSize);
            fields["SR"] = srRef;
            fields["virtual_size"] = virtualSize;
            fields.TryAdd("location", "");
            var vdi = Db.Create("VDI", fields);
            if (vdi.Str("location").Length == 0) vdi.Fields["location"] = vdi.Uuid;
            _core.Storage.CreateVdi(vdi.Uuid, virtualSize);
            RefreshSr(srRef);
            return vdi;
        }
    }

    public void EnsureSpace(XapiObject sr, long requested)
    {
        long physical = sr.Long("physical_size");
        long used = Db.Where("VDI", "SR", sr.Ref).Sum(v => v.Long("virtual_size"));
        if (physical > 0 && used + requested > physical)
            throw new XapiError("SR_FULL", requested.ToString(), (physical - used).ToString());
    }

    /// <summary>virtual_allocation = sum of sizes; physical_utilisation = stored 64 KiB units.</summary>
    public void RefreshSr(string srRef)
    {
        lock (Db.Gate)
        {
            if (Db.TryGet(srRef) is not { Class: "SR" } sr) return;
            var vdis = Db.Where("VDI", "SR", srRef);
            sr.Fields["virtual_allocation"] = vdis.Sum(v => v.Long("virtual_size"));
            long units = 0;
            foreach (var v in vdis)
                if (_core.Storage.Exists(v.Uuid)) units += _core.Storage.Chain(v.Uuid)[0].AllocatedUnits;
            sr.Fields["physical_utilisation"] = units * Layer.UnitSize;
            Db.Touch(sr);
        }
    }

    /// <summary>
    /// VDI.snapshot: a new VDI sharing the content at this instant (storage branch), is_a_snapshot=true,
    /// snapshot_of=source, cbt_enabled inherited (quicktest_cbt.ml); read_only=false as SM reports it.
    /// </summary>
    public XapiObject SnapshotVdi(XapiObject vdi, bool asSnapshot)
    {
        lock (Db.Gate)
        {
            if (vdi.Str("type") == "cbt_metadata") throw new XapiError("VDI_INCOMPATIBLE_TYPE", vdi.Ref, "cbt_metadata");
            if (asSnapshot && vdi.Bool("sharable")) throw new XapiError("VDI_IS_SHARABLE", vdi.Ref);
            var sr = Db.Get("SR", vdi.Str("SR"));
            EnsureSpace(sr, vdi.Long("virtual_size"));
            var rec = Db.Record(vdi);
            foreach (var k in new[] { "uuid", "VBDs", "snapshots", "crash_dumps", "location", "allowed_operations", "current_operations" }) rec.Remove(k);
            rec["is_a_snapshot"] = asSnapshot;
            rec["snapshot_of"] = asSnapshot ? vdi.Ref : Schema.NullRef;
            rec["snapshot_time"] = asSnapshot ? DateTime.UtcNow : DateTime.UnixEpoch;
            rec["cbt_enabled"] = asSnapshot && vdi.Bool("cbt_enabled");
            rec["read_only"] = false;
            rec["managed"] = true;
            var copy = Db.Create("VDI", rec);
            copy.Fields["location"] = copy.Uuid;
            _core.Storage.Branch(vdi.Uuid, copy.Uuid, keepCbt: asSnapshot);
            copy.Map("sm_config")["vhd-parent"] = _core.Storage.Chain(copy.Uuid)[1].Id;
            vdi.Map("sm_config")["vhd-parent"] = _core.Storage.Chain(vdi.Uuid)[1].Id;
            Db.Touch(vdi);
            RefreshSr(sr.Ref);
            return copy;
        }
    }

    /// <summary>VDI.destroy: VDI_IN_USE while a VBD is attached or reserved; also drops the VDI's VBD records.</summary>
    public void DestroyVdi(XapiObject vdi)
    {
        lock (Db.Gate)
        {
            var vbds = Db.Where("VBD", "VDI", vdi.Ref);
            if (vbds.Any(b => b.Bool("currently_attached") || b.Bool("reserved"))) throw new XapiError("VDI_IN_USE", vdi.Ref, "destroy");
            foreach (var b in vbds) Db.Delete(b);
            Db.Delete(vdi);
            _core.Storage.DeleteVdi(vdi.Uuid);
            RefreshSr(vdi.Str("SR"));
        }
    }

    public XapiObject CreateVbd(string vmRef, string vdiRef, string userdevice, string type, string mode, bool bootable, bool attached)
    {
        lock (Db.Gate)
        {
            if (userdevice is "autodetect" or "")
            {
                var used = Db.Where("VBD", "VM", vmRef).Select(b => b.Str("userdevice")).ToHashSet();
                userdevice = Enumerable.Range(0, 16).Select(i => i.ToString()).First(d => !used.Contains(d));
            }
            return Db.Create("VBD", new Dictionary<string, object?>
            {
                ["VM"] = vmRef, ["VDI"] = vdiRef, ["userdevice"] = userdevice,
                ["device"] = attached ? (type == "CD" ? "xvdd" : "xvd" + (char)('a' + int.Parse(userdevice) % 26)) : "",
                ["type"] = type, ["mode"] = mode, ["bootable"] = bootable, ["empty"] = vdiRef == Schema.NullRef,
                ["currently_attached"] = attached, ["unpluggable"] = true,
            });
        }
    }

    public XapiObject CreateVif(string vmRef, string networkRef, string device, string mac, bool attached)
        => Db.Create("VIF", new Dictionary<string, object?>
        {
            ["VM"] = vmRef, ["network"] = networkRef, ["device"] = device,
            ["MAC"] = mac.Length == 0 ? NewMac() : mac, ["MAC_autogenerated"] = mac.Length == 0,
            ["MTU"] = 1500L, ["currently_attached"] = attached,
        });

    public XapiObject CreateVmMetrics(long memory, long vcpus, bool running)
        => Db.Create("VM_metrics", new Dictionary<string, object?>
        {
            ["memory_actual"] = running ? memory : 0L, ["VCPUs_number"] = running ? vcpus : 0L,
            ["start_time"] = running ? DateTime.UtcNow : DateTime.UnixEpoch, ["install_time"] = DateTime.UtcNow,
            ["last_updated"] = DateTime.UtcNow, ["state"] = Array.Empty<object?>(),
        });

    /// <summary>Whether VDI <paramref name="vdiRef"/> is plugged into a VM other than a snapshot (xapi_vdi.ml l.262-275).</summary>
    public bool IsAttachedOutsideSnapshots(string vdiRef)
        => Db.Where("VBD", "VDI", vdiRef).Any(b => b.Bool("currently_attached")
            && !(Db.TryGet(b.Str("VM")) is { } vm && vm.Bool("is_a_snapshot")));
}
