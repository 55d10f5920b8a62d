namespace VProtect.Core.Xapi.Records;

// Field names as in xapi's datamodel (research/xapi.md §3). Enums stay strings (xapi spells them in lower case).

public sealed class PoolRecord : XapiRecord, IXapiRecord
{
    public static string XapiClass => "pool";
    public string NameLabel => Str("name_label");
    public string Master => Str("master");
    public string DefaultSR => Str("default_SR");
    public IReadOnlyDictionary<string, string> Restrictions => Map("restrictions");
    public IReadOnlyDictionary<string, string> OtherConfig => Map("other_config");
}

public sealed class HostRecord : XapiRecord, IXapiRecord
{
    public static string XapiClass => "host";
    public string NameLabel => Str("name_label");
    public string Hostname => Str("hostname");
    public string Address => Str("address");
    public long ApiVersionMajor => Long("API_version_major");
    public long ApiVersionMinor => Long("API_version_minor");
    public bool Enabled => Bool("enabled");
    public IReadOnlyDictionary<string, string> SoftwareVersion => Map("software_version");
    public IReadOnlyList<string> PIFs => List("PIFs");
}

public sealed class VmRecord : XapiRecord, IXapiRecord
{
    public static string XapiClass => "VM";
    public string NameLabel => Str("name_label");
    public string NameDescription => Str("name_description");
    /// <summary>Halted, Paused, Running or Suspended (as XAPI spells it).</summary>
    public string PowerState => Str("power_state");
    public bool IsATemplate => Bool("is_a_template");
    public bool IsDefaultTemplate => Bool("is_default_template");
    public bool IsASnapshot => Bool("is_a_snapshot");
    public bool IsControlDomain => Bool("is_control_domain");
    public string SnapshotOf => Str("snapshot_of");
    public IReadOnlyList<string> Snapshots => List("snapshots");
    public DateTime SnapshotTime => Date("snapshot_time");
    public IReadOnlyDictionary<string, string> SnapshotInfo => Map("snapshot_info");
    public string Parent => Str("parent");
    public IReadOnlyList<string> VBDs => List("VBDs");
    public IReadOnlyList<string> VIFs => List("VIFs");
    public IReadOnlyList<string> Tags => List("tags");
    public IReadOnlyDictionary<string, string> OtherConfig => Map("other_config");
    public IReadOnlyDictionary<string, string> Platform => Map("platform");
    public IReadOnlyDictionary<string, string> BlockedOperations => Map("blocked_operations");
    public IReadOnlyList<string> AllowedOperations => List("allowed_operations");
    public long MemoryStaticMax => Long("memory_static_max");
    public long MemoryDynamicMax => Long("memory_dynamic_max");
    public long MemoryDynamicMin => Long("memory_dynamic_min");
    public long MemoryStaticMin => Long("memory_static_min");
    public long VcpusMax => Long("VCPUs_max");
    public long VcpusAtStartup => Long("VCPUs_at_startup");
    public string HvmBootPolicy => Str("HVM_boot_policy");
    public string DomainType => Str("domain_type");
    public string ResidentOn => Str("resident_on");
    public string Affinity => Str("affinity");
}

public sealed class VbdRecord : XapiRecord, IXapiRecord
{
    public static string XapiClass => "VBD";
    public string VM => Str("VM");
    public string VDI => Str("VDI");
    public string Device => Str("device");
    public string UserDevice => Str("userdevice");
    public bool Bootable => Bool("bootable");
    /// <summary>RO or RW.</summary>
    public string Mode => Str("mode");
    /// <summary>CD, Disk or Floppy.</summary>
    public string Type => Str("type");
    public bool Empty => Bool("empty");
    public bool Unpluggable => Bool("unpluggable");
    public bool CurrentlyAttached => Bool("currently_attached");
    public IReadOnlyDictionary<string, string> OtherConfig => Map("other_config");
}

public sealed class VdiRecord : XapiRecord, IXapiRecord
{
    public static string XapiClass => "VDI";
    public string NameLabel => Str("name_label");
    public string NameDescription => Str("name_description");
    public string SR => Str("SR");
    public IReadOnlyList<string> VBDs => List("VBDs");
    public long VirtualSize => Long("virtual_size");
    public long PhysicalUtilisation => Long("physical_utilisation");
    /// <summary>system, user, ephemeral, suspend, …, cbt_metadata.</summary>
    public string Type => Str("type");
    public bool Sharable => Bool("sharable");
    public bool ReadOnly => Bool("read_only");
    public bool IsASnapshot => Bool("is_a_snapshot");
    public string SnapshotOf => Str("snapshot_of");
    public IReadOnlyList<string> Snapshots => List("snapshots");
    public DateTime SnapshotTime => Date("snapshot_time");
    public bool CbtEnabled => Bool("cbt_enabled");
    public string Location => Str("location");
    public bool Managed => Bool("managed");
    public bool Missing => Bool("missing");
    public string OnBoot => Str("on_boot");
    public IReadOnlyList<string> Tags => List("tags");
    public IReadOnlyList<string> AllowedOperations => List("allowed_operations");
    public IReadOnlyDictionary<string, string> OtherConfig => Map("other_config");
    public IReadOnlyDictionary<string, string> SmConfig => Map("sm_config");
}

public sealed class VifRecord : XapiRecord, IXapiRecord
{
    public static string XapiClass => "VIF";
    public string Device => Str("device");
    public string Network => Str("network");
    public string VM => Str("VM");
    public string MAC => Str("MAC");
    public long MTU => Long("MTU");
    public bool MacAutogenerated => Bool("MAC_autogenerated");
    public bool CurrentlyAttached => Bool("currently_attached");
    public string LockingMode => Str("locking_mode");
    public IReadOnlyDictionary<string, string> OtherConfig => Map("other_config");
}

public sealed class SrRecord : XapiRecord, IXapiRecord
{
    public static string XapiClass => "SR";
    public string NameLabel => Str("name_label");
    public string Type => Str("type");
    public string ContentType => Str("content_type");
    public long PhysicalSize => Long("physical_size");
    public long PhysicalUtilisation => Long("physical_utilisation");
    public long VirtualAllocation => Long("virtual_allocation");
    public IReadOnlyList<string> VDIs => List("VDIs");
    public IReadOnlyList<string> PBDs => List("PBDs");
    public bool Shared => Bool("shared");
    public IReadOnlyDictionary<string, string> SmConfig => Map("sm_config");
    public IReadOnlyDictionary<string, string> OtherConfig => Map("other_config");
    public long FreeSpace => Math.Max(0, PhysicalSize - PhysicalUtilisation);
}

public sealed class NetworkRecord : XapiRecord, IXapiRecord
{
    public static string XapiClass => "network";
    public string NameLabel => Str("name_label");
    public string Bridge => Str("bridge");
    public long MTU => Long("MTU");
    public IReadOnlyList<string> PIFs => List("PIFs");
    public IReadOnlyList<string> VIFs => List("VIFs");
    public IReadOnlyList<string> Purpose => List("purpose");
    public IReadOnlyDictionary<string, string> OtherConfig => Map("other_config");
}

public sealed class PifRecord : XapiRecord, IXapiRecord
{
    public static string XapiClass => "PIF";
    public string Device => Str("device");
    public string Network => Str("network");
    public string Host => Str("host");
    public string MAC => Str("MAC");
    public string IP => Str("IP");
    public string Netmask => Str("netmask");
    public string Gateway => Str("gateway");
    public IReadOnlyList<string> IPv6 => List("IPv6");
    public bool Management => Bool("management");
    public long VLAN => Long("VLAN");
    public bool CurrentlyAttached => Bool("currently_attached");
}

public sealed class TaskRecord : XapiRecord, IXapiRecord
{
    public static string XapiClass => "task";
    public string NameLabel => Str("name_label");
    /// <summary>pending, success, failure, cancelling or cancelled.</summary>
    public string Status => Str("status");
    public double Progress => Double("progress");
    /// <summary>An XML-RPC value fragment; decode with <see cref="Wire.XmlRpc.DecodeValue"/>.</summary>
    public string Result => Str("result");
    public IReadOnlyList<string> ErrorInfo => List("error_info");
    public DateTime Created => Date("created");
    public DateTime Finished => Date("finished");
    public string ResidentOn => Str("resident_on");
    public IReadOnlyList<string> AllowedOperations => List("allowed_operations");
    public IReadOnlyDictionary<string, string> OtherConfig => Map("other_config");

    public bool IsFinished => Status is "success" or "failure" or "cancelled";
}
