using VProtect.Simulator.Database;
using VProtect.Simulator.Http;
using VProtect.Simulator.Scenario;
using VProtect.Simulator.Storage;

namespace VProtect.Simulator.Xapi;

/// <summary>
/// VDI calls: create/destroy/snapshot/clone and the CBT and NBD family, with the checks and errors of
/// xapi_vdi.ml and SM's VDI.py as summarised in research/xapi.md §3-§5.
/// </summary>
internal sealed class VdiCalls
{
    private static readonly HashSet<string> VdiTypes = ["system", "user", "ephemeral", "suspend", "crashdump", "ha_statefile", "metadata", "redo_log", "rrd", "pvs_cache", "cbt_metadata"];
    private readonly SimulatorCore _core;
    private readonly ModelOps _ops;
    public VdiCalls(SimulatorCore core) { _core = core; _ops = new ModelOps(core); }
    private XapiDatabase Db => _core.Db;

    public void Register(XapiDispatcher d)
    {
        d.Register("VDI.create", 1, 1, c => Create(c.Map(0)));
        d.Register("VDI.destroy", 1, 1, c => { _ops.DestroyVdi(Db.Get("VDI", c.Str(0))); return ""; });
        d.Register("VDI.snapshot", 1, 2, c => _ops.SnapshotVdi(Db.Get("VDI", c.Str(0)), asSnapshot: true).Ref);
        d.Register("VDI.clone", 1, 2, c => _ops.SnapshotVdi(Db.Get("VDI", c.Str(0)), asSnapshot: false).Ref);
        d.Register("VDI.enable_cbt", 1, 1, c => { SetCbt(Db.Get("VDI", c.Str(0)), true); return ""; });
        d.Register("VDI.disable_cbt", 1, 1, c => { SetCbt(Db.Get("VDI", c.Str(0)), false); return ""; });
        d.Register("VDI.data_destroy", 1, 1, c => { DataDestroy(Db.Get("VDI", c.Str(0))); return ""; });
        d.Register("VDI.list_changed_blocks", 2, 2, c => ListChangedBlocks(Db.Get("VDI", c.Str(0)), Db.Get("VDI", c.Str(1))));
        d.Register("VDI.resize", 2, 2, c => { Resize(Db.Get("VDI", c.Str(0)), c.Long(1), online: false); return ""; });
        d.Register("VDI.resize_online", 2, 2, c => { Resize(Db.Get("VDI", c.Str(0)), c.Long(1), online: true); return ""; });
        d.Register("VDI.get_nbd_info", 1, 1, c => GetNbdInfo(Db.Get("VDI", c.Str(0)), c.Session!), hasAsync: false);
        d.Register("VDI.set_name_label", 2, 2, c => { Db.Set(Db.Get("VDI", c.Str(0)), "name_label", c.Str(1)); return ""; }, hasAsync: false);
        d.Register("VDI.set_name_description", 2, 2, c => { Db.Set(Db.Get("VDI", c.Str(0)), "name_description", c.Str(1)); return ""; }, hasAsync: false);
    }

    private string Create(Dictionary<string, object?> args)
    {
        var spec = Schema.Get("VDI");
        foreach (var f in spec.RequiredOnCreate)
            if (!args.ContainsKey(f)) throw new XapiError("INTERNAL_ERROR", $"Field {f} not present in rpc");
        var fields = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (k, v) in args)
            if (spec.TryGetField(k, out var f) && f.Inverse is null && (f.Writable || spec.RequiredOnCreate.Contains(k) || k is "sm_config" or "xenstore_data" or "tags"))
                fields[k] = CallContext.Coerce(f, v);
        string type = (string)fields["type"]!;
        if (!VdiTypes.Contains(type)) throw new XapiError("INVALID_VALUE", "type", type);
        // xapi_vdi.ml: a cbt_metadata VDI only comes from data_destroy, never from create.
        if (type == "cbt_metadata") throw new XapiError("VDI_INCOMPATIBLE_TYPE", "", "cbt_metadata");
        long size = (long)fields["virtual_size"]!;
        if (size < 0) throw new XapiError("INVALID_VALUE", "virtual_size", size.ToString());
        var sr = Db.Get("SR", (string)fields["SR"]!);
        if (_ops.IsIsoSr(sr)) throw new XapiError("SR_OPERATION_NOT_SUPPORTED", sr.Ref);
        return _ops.CreateVdi(sr.Ref, fields, size).Ref;
    }

    /// <summary>SM's VHD size rules (vhdutil.py): at least 2 MiB, at most 2040 GiB, rounded up to the 2 MiB block.</summary>
    public const long VhdBlockSize = 2L << 20, MaxVhdSize = 2040L << 30;

    /// <summary>
    /// VDI.resize / VDI.resize_online as xapi_vdi.ml (check_operation_error, resize) and SM's FileSR/LVHDSR resize do
    /// it: offline resize of an attached VDI → VDI_IN_USE [vdi, "resize"]; a cbt_metadata VDI → VDI_INCOMPATIBLE_TYPE;
    /// SR without the capability → SR_OPERATION_NOT_SUPPORTED [sr]; shrinking or an out-of-range size →
    /// SR_BACKEND_FAILURE_79 (SM's VDISize); not enough room → SR_BACKEND_FAILURE_44 (SRNoSpace). The size is rounded up
    /// to 2 MiB; the new area reads zeros; CBT stays on (SM resizes the log, VDI.resize_cbt), so list_changed_blocks
    /// still relates snapshots from before and after, its bitmap sized by the later VDI. Snapshot VDIs are not refused:
    /// neither xapi nor SM checks is_a_snapshot for resize.
    /// </summary>
    private void Resize(XapiObject vdi, long size, bool online)
    {
        lock (Db.Gate)
        {
            var sr = Db.Get("SR", vdi.Str("SR"));
            if (online && _core.Settings.ResizeOnline == ResizeOnlineMode.Removed) throw new XapiError("MESSAGE_REMOVED");
            if (!online && Db.Where("VBD", "VDI", vdi.Ref).Any(b => b.Bool("currently_attached") || b.Bool("reserved")))
                throw new XapiError("VDI_IN_USE", vdi.Ref, "resize");
            bool srCan = !_ops.IsIsoSr(sr) && sr.Str("type") is not ("udev" or "iso")
                         && (!online || _core.Settings.ResizeOnline == ResizeOnlineMode.Works);
            if (!srCan) throw new XapiError("SR_OPERATION_NOT_SUPPORTED", sr.Ref);
            if (vdi.Str("type") == "cbt_metadata") throw new XapiError("VDI_INCOMPATIBLE_TYPE", vdi.Ref, "cbt_metadata");
            long current = vdi.Long("virtual_size");
            if (size < current)
                throw new XapiError("SR_BACKEND_FAILURE_79", "", "VDI Invalid size [opterr=shrinking not allowed]", "");
            if (size > MaxVhdSize)
                throw new XapiError("SR_BACKEND_FAILURE_79", "", $"VDI Invalid size [opterr=VDI size must be between 1 MB and {MaxVhdSize >> 20} MB]", "");
            long rounded = Math.Max(size, VhdBlockSize);
            rounded = (rounded + VhdBlockSize - 1) / VhdBlockSize * VhdBlockSize;
            if (rounded == current) return;
            long physical = sr.Long("physical_size");
            long used = Db.Where("VDI", "SR", sr.Ref).Sum(v => v.Long("virtual_size"));
            if (physical > 0 && used + (rounded - current) > physical)
                throw new XapiError("SR_BACKEND_FAILURE_44", "", "There is insufficient space", "");
            _core.Storage.Resize(vdi.Uuid, rounded);
            Db.Set(vdi, "virtual_size", rounded);
            _ops.RefreshSr(sr.Ref);
        }
    }

    private void SetCbt(XapiObject vdi, bool enable)
    {
        lock (Db.Gate)
        {
            if (enable && _core.Settings.RestrictCbt) throw new XapiError("LICENCE_RESTRICTION", "CBT");
            if (vdi.Str("type") == "cbt_metadata") throw new XapiError("VDI_INCOMPATIBLE_TYPE", vdi.Ref, "cbt_metadata");
            if (vdi.Bool("is_a_snapshot")) throw new XapiError("OPERATION_NOT_ALLOWED", $"VDI is a snapshot: {vdi.Ref}");
            if (vdi.Str("type") is not ("user" or "system")) throw new XapiError("VDI_INCOMPATIBLE_TYPE", vdi.Ref, vdi.Str("type"));
            if (vdi.Str("on_boot") == "reset") throw new XapiError("VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION");
            var sr = Db.Get("SR", vdi.Str("SR"));
            if (_ops.IsIsoSr(sr) || sr.Str("type") is "udev" or "iso") throw new XapiError("SR_OPERATION_NOT_SUPPORTED", sr.Ref);
            if (enable) _core.Storage.EnableCbt(vdi.Uuid); else _core.Storage.DisableCbt(vdi.Uuid);
            Db.Set(vdi, "cbt_enabled", enable);
        }
    }

    private void DataDestroy(XapiObject vdi)
    {
        lock (Db.Gate)
        {
            if (!vdi.Bool("is_a_snapshot")) throw new XapiError("OPERATION_NOT_ALLOWED", $"VDI is not a snapshot: {vdi.Ref}");
            if (!vdi.Bool("cbt_enabled")) throw new XapiError("VDI_NO_CBT_METADATA", vdi.Ref);
            if (vdi.Str("type") == "cbt_metadata") return;
            // xapi waits up to 4 s for the VBDs to go; a simulator call has nothing to wait for, so it checks once.
            if (Db.Where("VBD", "VDI", vdi.Ref).Count > 0) throw new XapiError("VDI_IN_USE", vdi.Ref, "data_destroy");
            _core.Storage.DestroyData(vdi.Uuid);
            vdi.Fields["type"] = "cbt_metadata";
            vdi.Fields["physical_utilisation"] = 0L;
            vdi.Map("other_config")["content_id"] = "/No content: this is a cbt_metadata VDI/";
            Db.Touch(vdi);
        }
    }

    /// <summary>
    /// Base64 (standard, padded) of a bitmap with one bit per 64 KiB block of vdi_to, MSB first
    /// (block i is byte i/8, mask 0x80 >> i%8), length ceil(ceil(size/64 KiB)/8) (SM VDI.py, blktap cbt-util).
    /// </summary>
    private string ListChangedBlocks(XapiObject from, XapiObject to)
    {
        lock (Db.Gate)
        {
            if (_ops.IsAttachedOutsideSnapshots(to.Ref)) throw new XapiError("VDI_IN_USE", to.Ref, "list_changed_blocks");
            if (!from.Bool("cbt_enabled")) throw new XapiError("VDI_NO_CBT_METADATA", from.Ref);
            if (!to.Bool("cbt_enabled")) throw new XapiError("VDI_NO_CBT_METADATA", to.Ref);
            var units = _core.Storage.ChangedUnits(from.Uuid, to.Uuid)
                ?? throw new XapiError("SR_BACKEND_FAILURE_460", "", "Failed to calculate changed blocks for given VDIs. [opterr=Source and target VDI are unrelated]", "");
            long size = to.Long("virtual_size");
            long blocks = (size + Layer.UnitSize - 1) / Layer.UnitSize;
            var bitmap = new byte[(blocks + 7) / 8];
            foreach (var u in units)
                if (u < blocks) bitmap[u / 8] |= (byte)(0x80 >> (int)(u % 8));
            return Convert.ToBase64String(bitmap);
        }
    }

    /// <summary>
    /// One entry per IP of each attached PIF on a network with purpose nbd/insecure_nbd, on hosts with an
    /// attached PBD for the VDI's SR (xapi_vdi.ml l.1461-1593). Empty when no network has such a purpose.
    /// </summary>
    private object?[] GetNbdInfo(XapiObject vdi, string session)
    {
        lock (Db.Gate)
        {
            if (vdi.Str("type") == "cbt_metadata") throw new XapiError("VDI_INCOMPATIBLE_TYPE", vdi.Ref, "cbt_metadata");
            var hostsSeeingSr = Db.Where("PBD", "SR", vdi.Str("SR")).Where(p => p.Bool("currently_attached")).Select(p => p.Str("host")).ToHashSet();
            var result = new List<object?>();
            foreach (var net in Db.All("network").Where(n => n.Set("purpose").Any(p => p is "nbd" or "insecure_nbd")))
                foreach (var pif in Db.Where("PIF", "network", net.Ref).Where(p => p.Bool("currently_attached") && hostsSeeingSr.Contains(p.Str("host"))))
                {
                    var host = Db.Get("host", pif.Str("host"));
                    var ips = new List<string>();
                    if (pif.Str("IP").Length > 0) ips.Add(pif.Str("IP"));
                    ips.AddRange(pif.Set("IPv6").Select(a => a.Split('/')[0]).Where(a => a.Length > 0));
                    foreach (var ip in ips)
                        result.Add(new Dictionary<string, object?>
                        {
                            ["exportname"] = $"/{vdi.Uuid}?session_id={session}",
                            ["address"] = ip,
                            ["port"] = (long)_core.NbdPort,
                            ["cert"] = HostCertificate.ToPem(_core.Certificate),
                            ["subject"] = DataPlane.Nbd.NbdCertificateSubject.Of(_core.Certificate, host.Str("hostname")),
                        });
                }
            return result.ToArray();
        }
    }
}
