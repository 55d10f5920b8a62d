namespace VProtect.Simulator.Database;

/// <summary>Wire-level type of a field; decides defaults, JSON reload coercion and set/map handling.</summary>
internal enum FieldType { String, Int, Float, Bool, DateTime, Ref, RefSet, StringSet, Map, Enum }

/// <summary>
/// One datamodel field. <see cref="Inverse"/> marks a one-to-many set (VM.VBDs) that xapi derives from the
/// other side (VBD.VM); we compute it on read so the two can never disagree.
/// </summary>
internal sealed record FieldSpec(string Name, FieldType Type, bool Writable, object? Default, (string Class, string Field)? Inverse = null)
{
    public object? NewDefault() => Default switch
    {
        null => Type switch
        {
            FieldType.String or FieldType.Enum => "",
            FieldType.Int => 0L,
            FieldType.Float => 0.0,
            FieldType.Bool => false,
            FieldType.DateTime => DateTime.UnixEpoch,
            FieldType.Ref => Schema.NullRef,
            FieldType.RefSet or FieldType.StringSet => Array.Empty<object?>(),
            FieldType.Map => new Dictionary<string, object?>(),
            _ => null,
        },
        Dictionary<string, object?> map => new Dictionary<string, object?>(map),
        object?[] set => (object?[])set.Clone(),
        var v => v,
    };
}

internal sealed class ClassSpec
{
    private readonly Dictionary<string, FieldSpec> _fields = new(StringComparer.Ordinal);
    public ClassSpec(string name) => Name = name;
    public string Name { get; }
    public IReadOnlyCollection<FieldSpec> Fields => _fields.Values;
    /// <summary>Fields a constructor struct must carry (no datamodel default).</summary>
    public HashSet<string> RequiredOnCreate { get; } = new(StringComparer.Ordinal);
    public bool TryGetField(string name, out FieldSpec spec) => _fields.TryGetValue(name, out spec!);

    public ClassSpec Ro(string name, FieldType type = FieldType.String, object? def = null) { _fields[name] = new(name, type, false, def); return this; }
    public ClassSpec Rw(string name, FieldType type = FieldType.String, object? def = null) { _fields[name] = new(name, type, true, def); return this; }
    public ClassSpec Inverse(string name, string otherClass, string otherField) { _fields[name] = new(name, FieldType.RefSet, false, null, (otherClass, otherField)); return this; }
    public ClassSpec Required(params string[] names) { foreach (var n in names) RequiredOnCreate.Add(n); return this; }
}

/// <summary>
/// The subset of XAPI's datamodel (ocaml/idl/datamodel*.ml) the simulator models. Field names and
/// read/write qualifiers follow the datamodel; fields we do not model are simply absent.
/// </summary>
internal static class Schema
{
    public const string NullRef = "OpaqueRef:NULL";
    private static readonly Dictionary<string, ClassSpec> Classes = Build();

    /// <summary>Classes in xapi's casing (VM, VDI, pool, host...).</summary>
    public static IEnumerable<ClassSpec> All => Classes.Values;

    public static bool TryGet(string name, out ClassSpec spec) => Classes.TryGetValue(name, out spec!);

    /// <summary>Event class names are lower case; map back to the datamodel spelling.</summary>
    public static ClassSpec? ByLowerName(string lower) => Classes.Values.FirstOrDefault(c => string.Equals(c.Name, lower, StringComparison.OrdinalIgnoreCase));

    public static ClassSpec Get(string name) => Classes[name];

    private static Dictionary<string, ClassSpec> Build()
    {
        var list = new List<ClassSpec>();
        ClassSpec C(string n) { var c = new ClassSpec(n); c.Ro("uuid"); list.Add(c); return c; }
        var M = FieldType.Map; var I = FieldType.Int; var B = FieldType.Bool; var R = FieldType.Ref; var S = FieldType.StringSet;
        var D = FieldType.DateTime; var F = FieldType.Float; var E = FieldType.Enum; var RS = FieldType.RefSet;

        C("pool").Rw("name_label").Rw("name_description").Ro("master", R).Rw("default_SR", R).Rw("suspend_image_SR", R)
            .Rw("crash_dump_SR", R).Rw("other_config", M).Ro("restrictions", M).Rw("tags", S).Ro("ha_enabled", B)
            .Ro("cpu_info", M).Rw("gui_config", M).Ro("redo_log_enabled", B).Rw("wlb_enabled", B);

        C("host").Rw("name_label").Rw("name_description").Rw("address").Ro("hostname").Ro("API_version_major", I)
            .Ro("API_version_minor", I).Ro("API_version_vendor").Ro("API_version_vendor_implementation", M)
            .Ro("software_version", M).Ro("enabled", B, true).Rw("other_config", M).Ro("capabilities", S)
            .Ro("cpu_info", M).Ro("edition").Ro("license_params", M).Ro("memory_overhead", I).Rw("tags", S)
            .Ro("metrics", R).Ro("bios_strings", M).Rw("logging", M).Ro("sched_policy")
            .Inverse("resident_VMs", "VM", "resident_on").Inverse("PIFs", "PIF", "host").Inverse("PBDs", "PBD", "host");

        C("VM").Rw("name_label").Rw("name_description").Ro("power_state", E, "Halted").Rw("user_version", I, 1L)
            .Rw("is_a_template", B).Ro("is_default_template", B).Ro("is_a_snapshot", B).Ro("snapshot_of", R)
            .Inverse("snapshots", "VM", "snapshot_of").Ro("snapshot_time", D).Ro("snapshot_info", M).Rw("snapshot_metadata")
            .Ro("parent", R).Inverse("children", "VM", "parent").Ro("suspend_VDI", R).Rw("suspend_SR", R)
            .Ro("resident_on", R).Rw("affinity", R).Ro("memory_overhead", I).Ro("memory_target", I)
            .Ro("memory_static_max", I).Ro("memory_dynamic_max", I).Ro("memory_dynamic_min", I).Ro("memory_static_min", I)
            .Rw("VCPUs_params", M).Ro("VCPUs_max", I, 1L).Ro("VCPUs_at_startup", I, 1L)
            .Rw("actions_after_shutdown", E, "destroy").Rw("actions_after_reboot", E, "restart").Rw("actions_after_crash", E, "restart")
            .Rw("actions_after_softreboot", E, "soft_reboot")
            .Inverse("consoles", "console", "VM").Inverse("VIFs", "VIF", "VM").Inverse("VBDs", "VBD", "VM")
            .Ro("VGPUs", RS).Ro("VTPMs", RS).Ro("VUSBs", RS).Ro("crash_dumps", RS)
            .Rw("PV_bootloader").Rw("PV_kernel").Rw("PV_ramdisk").Rw("PV_args").Rw("PV_bootloader_args").Rw("PV_legacy_args")
            .Rw("HVM_boot_policy").Rw("HVM_boot_params", M).Ro("HVM_shadow_multiplier", F, 1.0)
            .Rw("platform", M).Rw("PCI_bus").Rw("other_config", M).Ro("domid", I, -1L).Ro("domarch")
            .Ro("last_boot_CPU_flags", M).Ro("is_control_domain", B).Ro("metrics", R).Ro("guest_metrics", R)
            .Ro("last_booted_record").Rw("recommendations").Rw("xenstore_data", M).Rw("ha_always_run", B)
            .Rw("ha_restart_priority").Rw("tags", S).Rw("blocked_operations", M).Ro("allowed_operations", S)
            .Ro("current_operations", M).Ro("bios_strings", M).Ro("generation_id").Ro("domain_type", E, "hvm")
            .Rw("NVRAM", M).Ro("has_vendor_device", B).Ro("requires_reboot", B).Rw("hardware_platform_version", I)
            .Ro("reference_label")
            // XO's @xen-orchestra/xapi vm.mjs `create` sends these; xapi has no default for them.
            .Required("name_label", "name_description", "user_version", "is_a_template", "affinity",
                "memory_static_max", "memory_dynamic_max", "memory_dynamic_min", "memory_static_min",
                "VCPUs_params", "VCPUs_max", "VCPUs_at_startup", "actions_after_shutdown", "actions_after_reboot",
                "actions_after_crash", "PV_bootloader", "PV_kernel", "PV_ramdisk", "PV_args", "PV_bootloader_args",
                "PV_legacy_args", "HVM_boot_policy", "HVM_boot_params", "platform", "PCI_bus", "other_config", "recommendations");

        C("VM_metrics").Ro("memory_actual", I).Ro("VCPUs_number", I).Ro("VCPUs_utilisation", M).Ro("state", S)
            .Ro("start_time", D).Ro("install_time", D).Ro("last_updated", D).Rw("other_config", M).Ro("hvm", B)
            .Ro("nested_virt", B).Ro("nomigrate", B).Ro("current_domain_type", E, "hvm");

        C("console").Ro("protocol", E, "rfb").Ro("location").Ro("VM", R).Rw("other_config", M);

        C("VBD").Ro("VM", R).Ro("VDI", R).Ro("device").Rw("userdevice").Rw("bootable", B).Rw("mode", E, "RW")
            .Rw("type", E, "Disk").Rw("unpluggable", B, true).Ro("storage_lock", B).Ro("empty", B).Ro("reserved", B)
            .Ro("currently_attached", B).Ro("status_code", I).Ro("status_detail").Ro("runtime_properties", M)
            .Rw("other_config", M).Rw("qos_algorithm_type").Rw("qos_algorithm_params", M).Ro("qos_supported_algorithms", S)
            .Ro("metrics", R).Ro("allowed_operations", S).Ro("current_operations", M)
            .Required("VM", "VDI", "userdevice", "bootable", "mode", "type", "empty", "other_config", "qos_algorithm_type", "qos_algorithm_params");

        C("VDI").Rw("name_label").Rw("name_description").Ro("SR", R).Inverse("VBDs", "VBD", "VDI").Ro("crash_dumps", RS)
            .Ro("virtual_size", I).Ro("physical_utilisation", I).Ro("type", E, "user").Ro("sharable", B).Ro("read_only", B)
            .Rw("other_config", M).Ro("storage_lock", B).Ro("location").Ro("managed", B, true).Ro("missing", B)
            .Ro("parent", R).Rw("xenstore_data", M).Rw("sm_config", M).Ro("is_a_snapshot", B).Ro("snapshot_of", R)
            .Inverse("snapshots", "VDI", "snapshot_of").Ro("snapshot_time", D).Rw("tags", S).Ro("allow_caching", B)
            .Ro("on_boot", E, "persist").Ro("metadata_of_pool", R).Ro("metadata_latest", B).Ro("is_tools_iso", B)
            .Ro("cbt_enabled", B).Ro("allowed_operations", S).Ro("current_operations", M)
            .Required("name_label", "name_description", "SR", "virtual_size", "type", "sharable", "read_only", "other_config");

        C("VIF").Ro("device").Ro("network", R).Ro("VM", R).Ro("MAC").Ro("MTU", I, 1500L).Ro("MAC_autogenerated", B)
            .Ro("currently_attached", B).Ro("status_code", I).Ro("status_detail").Ro("runtime_properties", M)
            .Rw("other_config", M).Rw("qos_algorithm_type").Rw("qos_algorithm_params", M).Ro("qos_supported_algorithms", S)
            .Ro("metrics", R).Ro("locking_mode", E, "network_default").Ro("ipv4_allowed", S).Ro("ipv6_allowed", S)
            .Ro("ipv4_configuration_mode", E, "None").Ro("ipv4_addresses", S).Ro("ipv4_gateway")
            .Ro("ipv6_configuration_mode", E, "None").Ro("ipv6_addresses", S).Ro("ipv6_gateway")
            .Ro("allowed_operations", S).Ro("current_operations", M)
            .Required("device", "network", "VM", "MAC", "MTU", "other_config", "qos_algorithm_type", "qos_algorithm_params");

        C("SR").Rw("name_label").Rw("name_description").Ro("type").Ro("content_type").Ro("physical_size", I)
            .Ro("physical_utilisation", I).Ro("virtual_allocation", I).Inverse("VDIs", "VDI", "SR").Inverse("PBDs", "PBD", "SR")
            .Rw("shared", B).Rw("sm_config", M).Rw("other_config", M).Rw("tags", S).Ro("local_cache_enabled", B)
            .Ro("introduced_by", R).Ro("clustered", B).Ro("is_tools_sr", B).Ro("allowed_operations", S).Ro("current_operations", M);

        C("PBD").Ro("host", R).Ro("SR", R).Ro("device_config", M).Ro("currently_attached", B).Rw("other_config", M);

        C("network").Rw("name_label").Rw("name_description").Rw("MTU", I, 1500L).Ro("bridge").Ro("managed", B, true)
            .Inverse("PIFs", "PIF", "network").Inverse("VIFs", "VIF", "network").Rw("other_config", M).Rw("tags", S)
            .Ro("purpose", S).Ro("default_locking_mode", E, "unlocked").Ro("blobs", M).Ro("assigned_ips", M)
            .Ro("allowed_operations", S).Ro("current_operations", M);

        C("PIF").Ro("device").Ro("network", R).Ro("host", R).Ro("MAC").Ro("MTU", I, 1500L).Ro("VLAN", I, -1L)
            .Ro("physical", B, true).Ro("currently_attached", B, true).Ro("ip_configuration_mode", E, "Static")
            .Ro("IP").Ro("netmask").Ro("gateway").Ro("DNS").Ro("management", B).Rw("other_config", M)
            .Ro("ipv6_configuration_mode", E, "None").Ro("IPv6", S).Ro("ipv6_gateway").Ro("primary_address_type", E, "IPv4")
            .Ro("managed", B, true).Ro("properties", M).Ro("capabilities", S).Ro("metrics", R);

        C("task").Rw("name_label").Rw("name_description").Ro("allowed_operations", S).Ro("current_operations", M)
            .Ro("created", D).Ro("finished", D).Ro("status", E, "pending").Ro("resident_on", R).Ro("progress", F)
            .Ro("type").Ro("result").Ro("error_info", S).Rw("other_config", M).Ro("subtask_of", R)
            .Inverse("subtasks", "task", "subtask_of").Ro("backtrace", FieldType.String, "()");

        C("session").Ro("this_host", R).Ro("this_user", R).Ro("last_active", D).Ro("pool", B).Rw("other_config", M)
            .Ro("is_local_superuser", B).Ro("subject", R).Ro("validation_time", D).Ro("auth_user_sid").Ro("auth_user_name")
            .Ro("rbac_permissions", S).Ro("tasks", RS).Ro("parent", R).Ro("originator")
            .Ro("client_certificate", B);

        return list.ToDictionary(c => c.Name, StringComparer.Ordinal);
    }
}
