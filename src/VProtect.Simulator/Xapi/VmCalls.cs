using VProtect.Simulator.Database;
using VProtect.Simulator.Scenario;

namespace VProtect.Simulator.Xapi;

/// <summary>
/// VM, VBD and VIF calls with xapi's power-state rules (xapi_vm_lifecycle.ml) and snapshot semantics
/// (xapi_vm_clone.ml): see research/xapi.md §3 and docs/simulator.md.
/// </summary>
internal sealed class VmCalls
{
    private readonly SimulatorCore _core;
    private readonly ModelOps _ops;
    public VmCalls(SimulatorCore core) { _core = core; _ops = new ModelOps(core); }
    private XapiDatabase Db => _core.Db;

    public void Register(XapiDispatcher d)
    {
        // ignore_vdis came with xapi 21.4 (datamodel_vm.ml); older hosts count it as one parameter too many.
        d.Register("VM.snapshot", 2, () => _core.Settings.SnapshotIgnoreVdis ? 3 : 2, c => Snapshot(c, Db.Get("VM", c.Str(0)), c.Str(1), c.Count > 2 ? c.Set(2) : [], "snapshot"));
        d.Register("VM.snapshot_with_quiesce", 2, 2, c => _core.Settings.SnapshotWithQuiesce switch
        {
            QuiesceMode.Removed => throw new XapiError("MESSAGE_REMOVED"),
            QuiesceMode.Fails => throw new XapiError("VM_SNAPSHOT_WITH_QUIESCE_FAILED", c.Str(0)),
            _ => Snapshot(c, Db.Get("VM", c.Str(0)), c.Str(1), [], "snapshot_with_quiesce"),
        });
        d.Register("VM.checkpoint", 2, 2, c => Snapshot(c, Db.Get("VM", c.Str(0)), c.Str(1), [], "checkpoint"));
        d.Register("VM.clone", 2, 2, c => Clone(Db.Get("VM", c.Str(0)), c.Str(1)));
        d.Register("VM.destroy", 1, 1, c => { Destroy(Db.Get("VM", c.Str(0))); return ""; });
        d.Register("VM.create", 1, 1, c => Create(c.Map(0)));
        d.Register("VM.set_is_a_template", 2, 2, c => { SetTemplate(Db.Get("VM", c.Str(0)), c.Bool(1)); return ""; }, hasAsync: false);
        d.Register("VM.start", 3, 3, c => { Power(Db.Get("VM", c.Str(0)), "start", c.Bool(1) ? "Paused" : "Running", ["Halted"]); return ""; });
        d.Register("VM.start_on", 4, 4, c => { Power(Db.Get("VM", c.Str(0)), "start_on", c.Bool(2) ? "Paused" : "Running", ["Halted"], c.Str(1)); return ""; });
        d.Register("VM.shutdown", 1, 1, c => { Power(Db.Get("VM", c.Str(0)), "shutdown", "Halted", ["Running", "Paused", "Suspended"]); return ""; });
        d.Register("VM.clean_shutdown", 1, 1, c => { Power(Db.Get("VM", c.Str(0)), "clean_shutdown", "Halted", ["Running"]); return ""; });
        d.Register("VM.hard_shutdown", 1, 1, c => { Power(Db.Get("VM", c.Str(0)), "hard_shutdown", "Halted", ["Running", "Paused", "Suspended"]); return ""; });
        d.Register("VM.suspend", 1, 1, c => { Power(Db.Get("VM", c.Str(0)), "suspend", "Suspended", ["Running"]); return ""; });
        d.Register("VM.resume", 3, 3, c => { Power(Db.Get("VM", c.Str(0)), "resume", c.Bool(1) ? "Paused" : "Running", ["Suspended"]); return ""; });
        d.Register("VM.pause", 1, 1, c => { Power(Db.Get("VM", c.Str(0)), "pause", "Paused", ["Running"]); return ""; });
        d.Register("VM.unpause", 1, 1, c => { Power(Db.Get("VM", c.Str(0)), "unpause", "Running", ["Paused"]); return ""; });
        d.Register("VBD.create", 1, 1, c => CreateVbd(c.Map(0)));
        d.Register("VBD.destroy", 1, 1, c => { DestroyVbd(Db.Get("VBD", c.Str(0))); return ""; });
        d.Register("VBD.plug", 1, 1, c => { Plug(Db.Get("VBD", c.Str(0)), true); return ""; });
        d.Register("VBD.unplug", 1, 1, c => { Plug(Db.Get("VBD", c.Str(0)), false); return ""; });
        d.Register("VIF.create", 1, 1, c => CreateVif(c.Map(0)));
        d.Register("VIF.destroy", 1, 1, c => { var v = Db.Get("VIF", c.Str(0)); Db.Delete(v); return ""; });
    }

    private static string Lower(IEnumerable<string> states, string sep = ", ") => string.Join(sep, states.Select(s => s.ToLowerInvariant()));

    private void AssertNotTemplateOrSnapshot(XapiObject vm, string op)
    {
        if (vm.Bool("is_a_snapshot")) throw new XapiError("VM_IS_SNAPSHOT", vm.Ref, op);
        if (vm.Bool("is_a_template")) throw new XapiError("VM_IS_TEMPLATE", vm.Ref, op);
    }

    private static void AssertPowerState(XapiObject vm, string[] allowed)
    {
        var state = vm.Str("power_state");
        if (!allowed.Contains(state)) throw new XapiError("VM_BAD_POWER_STATE", vm.Ref, Lower(allowed), state.ToLowerInvariant());
    }

    /// <summary>
    /// VM.snapshot / checkpoint / snapshot_with_quiesce: a Halted VM with is_a_snapshot and is_a_template true,
    /// snapshot_of, snapshot_time, snapshot_info; each disk through VDI.snapshot (CBT inherited); VIF MACs kept;
    /// the source's parent becomes the snapshot. Checkpoints of Running/Suspended VMs come out Suspended.
    /// </summary>
    private string Snapshot(CallContext c, XapiObject vm, string name, List<string> ignoreVdis, string op)
    {
        lock (Db.Gate)
        {
            AssertNotTemplateOrSnapshot(vm, op);
            if (vm.Bool("is_control_domain")) throw new XapiError("OPERATION_NOT_ALLOWED", "The control domain cannot be snapshotted.");
            string state = vm.Str("power_state");
            if (op == "checkpoint") AssertPowerState(vm, ["Running", "Paused", "Suspended"]);
            var vbds = Db.Where("VBD", "VM", vm.Ref).OrderBy(b => b.Str("userdevice")).ToList();
            var disks = vbds.Where(b => b.Str("type") == "Disk" && b.Str("VDI") != Schema.NullRef && !ignoreVdis.Contains(b.Str("VDI"))).ToList();
            foreach (var group in disks.Select(b => Db.Get("VDI", b.Str("VDI"))).GroupBy(v => v.Str("SR")))
            {
                var sr = Db.Get("SR", group.Key);
                _ops.EnsureSpace(sr, group.Sum(v => v.Long("virtual_size")));
            }
            var rec = Db.Record(vm);
            foreach (var k in new[] { "uuid", "VBDs", "VIFs", "snapshots", "children", "consoles", "allowed_operations", "current_operations", "VGPUs", "VTPMs", "VUSBs", "crash_dumps" })
                rec.Remove(k);
            rec["name_label"] = name;
            rec["is_a_snapshot"] = true;
            rec["is_a_template"] = true;
            rec["snapshot_of"] = vm.Ref;
            rec["snapshot_time"] = DateTime.UtcNow;
            rec["parent"] = vm.Str("parent").Length == 0 ? Schema.NullRef : vm.Str("parent");
            rec["resident_on"] = Schema.NullRef;
            rec["domid"] = -1L;
            rec["is_control_domain"] = false;
            rec["power_state"] = op == "checkpoint" && state is "Running" or "Suspended" ? "Suspended" : "Halted";
            rec["snapshot_info"] = new Dictionary<string, object?>
            {
                ["disk-snapshot-type"] = op == "snapshot_with_quiesce" ? "quiesced" : "crash_consistent",
                ["power-state-at-snapshot"] = state,
            };
            rec["metrics"] = _ops.CreateVmMetrics(vm.Long("memory_static_max"), vm.Long("VCPUs_max"), false).Ref;
            rec["guest_metrics"] = Schema.NullRef;
            var snap = Db.Create("VM", rec);
            int done = 0;
            foreach (var vbd in vbds)
            {
                string vdi = vbd.Str("VDI");
                if (vbd.Str("type") == "Disk" && (vdi == Schema.NullRef || ignoreVdis.Contains(vdi))) continue;
                string target = vbd.Str("type") == "Disk" ? _ops.SnapshotVdi(Db.Get("VDI", vdi), asSnapshot: true).Ref : vdi;
                var copy = _ops.CreateVbd(snap.Ref, target, vbd.Str("userdevice"), vbd.Str("type"), vbd.Str("mode"), vbd.Bool("bootable"), attached: false);
                copy.Fields["device"] = vbd.Str("device");
                _core.Tasks.SetProgress(c.TaskRef, 0.9 * ++done / Math.Max(1, vbds.Count));
            }
            foreach (var vif in Db.Where("VIF", "VM", vm.Ref))
                _ops.CreateVif(snap.Ref, vif.Str("network"), vif.Str("device"), vif.Str("MAC"), attached: false).Fields["MAC_autogenerated"] = vif.Bool("MAC_autogenerated");
            Db.Set(vm, "parent", snap.Ref);
            return snap.Ref;
        }
    }

    /// <summary>VM.clone: Halted (or a Suspended snapshot); disks cloned (CBT off), new MACs for autogenerated VIFs.</summary>
    private string Clone(XapiObject vm, string name)
    {
        lock (Db.Gate)
        {
            var allowed = vm.Bool("is_a_snapshot") ? new[] { "Halted", "Suspended" } : new[] { "Halted" };
            AssertPowerState(vm, allowed);
            if (vm.Bool("is_control_domain")) throw new XapiError("OPERATION_NOT_ALLOWED", "The control domain cannot be cloned.");
            var rec = Db.Record(vm);
            foreach (var k in new[] { "uuid", "VBDs", "VIFs", "snapshots", "children", "consoles", "allowed_operations", "current_operations", "VGPUs", "VTPMs", "VUSBs", "crash_dumps" })
                rec.Remove(k);
            rec["name_label"] = name;
            rec["is_a_snapshot"] = false;
            rec["snapshot_of"] = Schema.NullRef;
            rec["snapshot_time"] = DateTime.UnixEpoch;
            rec["snapshot_info"] = new Dictionary<string, object?>();
            rec["parent"] = Schema.NullRef;
            rec["is_default_template"] = false;
            rec["power_state"] = "Halted";
            rec["metrics"] = _ops.CreateVmMetrics(vm.Long("memory_static_max"), vm.Long("VCPUs_max"), false).Ref;
            var clone = Db.Create("VM", rec);
            foreach (var vbd in Db.Where("VBD", "VM", vm.Ref))
            {
                string vdi = vbd.Str("VDI");
                string target = vbd.Str("type") == "Disk" && vdi != Schema.NullRef ? _ops.SnapshotVdi(Db.Get("VDI", vdi), asSnapshot: false).Ref : vdi;
                _ops.CreateVbd(clone.Ref, target, vbd.Str("userdevice"), vbd.Str("type"), vbd.Str("mode"), vbd.Bool("bootable"), attached: false);
            }
            foreach (var vif in Db.Where("VIF", "VM", vm.Ref))
                _ops.CreateVif(clone.Ref, vif.Str("network"), vif.Str("device"), vif.Bool("MAC_autogenerated") ? "" : vif.Str("MAC"), attached: false);
            return clone.Ref;
        }
    }

    /// <summary>VM.destroy: Halted or Suspended only; removes VBDs, VIFs and metrics but not the VDIs (as xapi).</summary>
    private void Destroy(XapiObject vm)
    {
        lock (Db.Gate)
        {
            if (vm.Bool("is_control_domain")) throw new XapiError("OPERATION_NOT_ALLOWED", "The control domain cannot be destroyed.");
            AssertPowerState(vm, ["Halted", "Suspended"]);
            foreach (var b in Db.Where("VBD", "VM", vm.Ref)) Db.Delete(b);
            foreach (var v in Db.Where("VIF", "VM", vm.Ref)) Db.Delete(v);
            if (Db.TryGet(vm.Str("metrics")) is { } m) Db.Delete(m);
            foreach (var child in Db.Where("VM", "parent", vm.Ref)) Db.Set(child, "parent", vm.Str("parent"));
            Db.Delete(vm);
        }
    }

    private string Create(Dictionary<string, object?> args)
    {
        var spec = Schema.Get("VM");
        foreach (var f in spec.RequiredOnCreate)
            if (!args.ContainsKey(f)) throw new XapiError("INTERNAL_ERROR", $"Field {f} not present in rpc");
        var fields = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var (k, v) in args)
            if (spec.TryGetField(k, out var f) && f.Inverse is null && k is not ("uuid" or "power_state" or "is_a_snapshot" or "snapshot_of" or "resident_on" or "is_control_domain"))
                fields[k] = CallContext.Coerce(f, v);
        fields["power_state"] = "Halted";
        fields["metrics"] = _ops.CreateVmMetrics(0, 0, false).Ref;
        fields["generation_id"] = "";
        return Db.Create("VM", fields).Ref;
    }

    private void SetTemplate(XapiObject vm, bool value)
    {
        lock (Db.Gate)
        {
            if (value && vm.Str("power_state") != "Halted" && !vm.Bool("is_a_snapshot"))
                throw new XapiError("VM_BAD_POWER_STATE", vm.Ref, "halted", vm.Str("power_state").ToLowerInvariant());
            Db.Set(vm, "is_a_template", value);
        }
    }

    /// <summary>Power transitions change only power_state, resident_on, metrics and VBD/VIF attachment.</summary>
    private void Power(XapiObject vm, string op, string target, string[] from, string? host = null)
    {
        lock (Db.Gate)
        {
            if (vm.Bool("is_control_domain")) throw new XapiError("OPERATION_NOT_ALLOWED", "The control domain's power state is the host's.");
            AssertNotTemplateOrSnapshot(vm, op);
            AssertPowerState(vm, from);
            bool running = target is "Running" or "Paused";
            vm.Fields["power_state"] = target;
            vm.Fields["resident_on"] = running ? host ?? _core.MasterRef : Schema.NullRef;
            vm.Fields["domid"] = running ? (long)Random.Shared.Next(1, 1000) : -1L;
            Db.Touch(vm);
            foreach (var b in Db.Where("VBD", "VM", vm.Ref)) if (b.Bool("currently_attached") != running) Db.Set(b, "currently_attached", running);
            foreach (var v in Db.Where("VIF", "VM", vm.Ref)) if (v.Bool("currently_attached") != running) Db.Set(v, "currently_attached", running);
        }
    }

    private string CreateVbd(Dictionary<string, object?> args)
    {
        var spec = Schema.Get("VBD");
        foreach (var f in spec.RequiredOnCreate)
            if (!args.ContainsKey(f)) throw new XapiError("INTERNAL_ERROR", $"Field {f} not present in rpc");
        lock (Db.Gate)
        {
            var vm = Db.Get("VM", CallContext.ToStr(args["VM"]));
            string vdi = CallContext.ToStr(args["VDI"]);
            bool empty = CallContext.ToBool(args["empty"], "empty");
            if (!empty || vdi != Schema.NullRef) Db.Get("VDI", vdi);
            var vbd = _ops.CreateVbd(vm.Ref, empty ? Schema.NullRef : vdi, CallContext.ToStr(args["userdevice"]), CallContext.ToStr(args["type"]),
                CallContext.ToStr(args["mode"]), CallContext.ToBool(args["bootable"], "bootable"), attached: false);
            foreach (var k in new[] { "other_config", "qos_algorithm_type", "qos_algorithm_params", "unpluggable" })
                if (args.TryGetValue(k, out var v) && spec.TryGetField(k, out var f)) vbd.Fields[k] = CallContext.Coerce(f, v);
            Db.Touch(vbd);
            return vbd.Ref;
        }
    }

    private void DestroyVbd(XapiObject vbd)
    {
        if (vbd.Bool("currently_attached")) throw new XapiError("OPERATION_NOT_ALLOWED", "VBD is currently attached; unplug it first.");
        Db.Delete(vbd);
    }

    private void Plug(XapiObject vbd, bool attach)
    {
        lock (Db.Gate)
        {
            var vm = Db.Get("VM", vbd.Str("VM"));
            if (vm.Str("power_state") != "Running" && !vm.Bool("is_control_domain"))
                throw new XapiError("VM_BAD_POWER_STATE", vm.Ref, "running", vm.Str("power_state").ToLowerInvariant());
            if (vbd.Bool("currently_attached") == attach)
                throw new XapiError(attach ? "DEVICE_ALREADY_ATTACHED" : "DEVICE_ALREADY_DETACHED", vbd.Ref);
            Db.Set(vbd, "currently_attached", attach);
        }
    }

    private string CreateVif(Dictionary<string, object?> args)
    {
        var spec = Schema.Get("VIF");
        foreach (var f in spec.RequiredOnCreate.Where(f => f != "MAC"))
            if (!args.ContainsKey(f)) throw new XapiError("INTERNAL_ERROR", $"Field {f} not present in rpc");
        lock (Db.Gate)
        {
            var vm = Db.Get("VM", CallContext.ToStr(args["VM"]));
            var net = Db.Get("network", CallContext.ToStr(args["network"]));
            string device = CallContext.ToStr(args["device"]);
            if (Db.Where("VIF", "VM", vm.Ref).Any(v => v.Str("device") == device)) throw new XapiError("DEVICE_ALREADY_EXISTS", device);
            var vif = _ops.CreateVif(vm.Ref, net.Ref, device, args.TryGetValue("MAC", out var mac) ? CallContext.ToStr(mac) : "", attached: false);
            foreach (var k in new[] { "MTU", "other_config", "qos_algorithm_type", "qos_algorithm_params", "locking_mode" })
                if (args.TryGetValue(k, out var v) && spec.TryGetField(k, out var f)) vif.Fields[k] = CallContext.Coerce(f, v);
            Db.Touch(vif);
            return vif.Ref;
        }
    }
}
