using System.Text.Json;
using System.Text.Json.Serialization;
using VProtect.Simulator.Database;
using VProtect.Simulator.Storage;
using VProtect.Simulator.Xapi;

namespace VProtect.Simulator.Scenario;

/// <summary>A scenario file (JSON); see docs/simulator.md "Scenario files".</summary>
public sealed class ScenarioFile
{
    /// <summary>"default" (the built-in VMs too) or "empty" (hosts, SRs, networks only).</summary>
    public string Base { get; set; } = "empty";
    public bool RestrictCbt { get; set; }
    public string SnapshotWithQuiesce { get; set; } = "removed";
    /// <summary>VDI.resize_online: "removed" (released hosts), "unsupported" (SR_OPERATION_NOT_SUPPORTED) or "works".</summary>
    public string ResizeOnline { get; set; } = "removed";
    /// <summary>false: a host before xapi 21.4, VM.snapshot takes no ignore_vdis.</summary>
    public bool SnapshotIgnoreVdis { get; set; } = true;
    public Dictionary<string, string> SrBetterSeenFrom { get; set; } = new();
    /// <summary>Networks given an NBD purpose at start (name_label -> "nbd" | "insecure_nbd").</summary>
    public Dictionary<string, string> NetworkPurposes { get; set; } = new();
    public List<ScenarioVm> Vms { get; set; } = new();
}

public sealed class ScenarioVm
{
    public string Name { get; set; } = "vm";
    public string PowerState { get; set; } = "Halted";
    public string? Host { get; set; }
    public bool IsTemplate { get; set; }
    public long MemoryBytes { get; set; } = 1L << 30;
    public long Vcpus { get; set; } = 1;
    public List<ScenarioDisk> Disks { get; set; } = new();
    public List<ScenarioVif> Vifs { get; set; } = new();
}

public sealed class ScenarioDisk
{
    public string Name { get; set; } = "disk";
    public long Size { get; set; } = 1L << 30;
    /// <summary>SR name_label; default: the pool's default SR.</summary>
    public string? Sr { get; set; }
    public bool CbtEnabled { get; set; }
    public List<ScenarioFill> Fill { get; set; } = new();
}

/// <summary>A range written with <see cref="DeterministicData"/> at start.</summary>
public sealed record ScenarioFill(long Offset, long Length, long Seed);

public sealed class ScenarioVif
{
    public string Network { get; set; } = DefaultScenario.ManagementNetwork;
    public string? Mac { get; set; }
}

/// <summary>The built-in pool: names that tests and the demo rely on.</summary>
public static class DefaultScenario
{
    public const string MasterName = "xen-sim-01";
    public const string MemberName = "xen-sim-02";
    public const string SharedSr = "Shared NFS storage";
    public const string IsoSr = "ISO library";
    public const string ManagementNetwork = "Pool-wide network associated with eth0";
    public const string StorageNetwork = "Storage network eth1";
    /// <summary>Running VM with a 2 GiB system disk partly filled (see <see cref="WebSystemDiskFill"/>).</summary>
    public const string WebVm = "web-01";
    public const long WebSystemDiskSize = 2L << 30;
    public static readonly ScenarioFill[] WebSystemDiskFill = [new(0, 8L << 20, 1001), new(1L << 30, 4L << 20, 1002), new((2L << 30) - (1L << 20), 1L << 20, 1003)];

    public static IReadOnlyList<ScenarioVm> Vms { get; } =
    [
        new() { Name = WebVm, PowerState = "Running", Host = MasterName, MemoryBytes = 2L << 30, Vcpus = 2,
            Disks = [ new() { Name = "web-01 system", Size = WebSystemDiskSize, Fill = [.. WebSystemDiskFill] },
                      new() { Name = "web-01 data", Size = 1L << 30, Fill = [new(4L << 20, 4L << 20, 1004)] } ],
            Vifs = [ new() { Network = ManagementNetwork }, new() { Network = StorageNetwork } ] },
        new() { Name = "db-01", PowerState = "Halted", MemoryBytes = 4L << 30, Vcpus = 4,
            Disks = [ new() { Name = "db-01 system", Size = 4L << 30, Fill = [new(0, 4L << 20, 2001)] },
                      new() { Name = "db-01 data", Size = 8L << 30, Fill = [new(100L << 20, 2L << 20, 2002)] },
                      new() { Name = "db-01 log", Size = 512L << 20 } ],
            Vifs = [ new() { Network = ManagementNetwork } ] },
        new() { Name = "app-02", PowerState = "Suspended", Host = MemberName,
            Disks = [ new() { Name = "app-02 system", Size = 1L << 30, Fill = [new(0, 1L << 20, 3001)] } ],
            Vifs = [ new() { Network = ManagementNetwork } ] },
        new() { Name = "test-paused", PowerState = "Paused", Host = MemberName,
            Disks = [ new() { Name = "test-paused system", Size = 256L << 20 } ] },
        new() { Name = "Debian Bookworm 12", IsTemplate = true },
        new() { Name = "Windows Server 2022 (64-bit)", IsTemplate = true },
    ];
}

/// <summary>Builds the pool (hosts, dom0s, SRs, PBDs, networks, PIFs) and the scenario's VMs into a core.</summary>
internal static class ScenarioBuilder
{
    private static readonly JsonSerializerOptions Json = new() { PropertyNameCaseInsensitive = true, ReadCommentHandling = JsonCommentHandling.Skip, AllowTrailingCommas = true };

    public static ScenarioFile Load(string scenario)
    {
        if (scenario.Equals("default", StringComparison.OrdinalIgnoreCase)) return new ScenarioFile { Base = "default" };
        if (scenario.Equals("empty", StringComparison.OrdinalIgnoreCase)) return new ScenarioFile { Base = "empty" };
        if (!File.Exists(scenario)) throw new FileNotFoundException($"Scenario '{scenario}' is neither 'default', 'empty' nor an existing .json file.", scenario);
        try
        {
            return JsonSerializer.Deserialize<ScenarioFile>(File.ReadAllText(scenario), Json) ?? new ScenarioFile();
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"Scenario file {scenario} is not valid: {e.Message} (format: docs/simulator.md, 'Scenario files').", e);
        }
    }

    public static ScenarioSettings Settings(ScenarioFile f) => new()
    {
        RestrictCbt = f.RestrictCbt,
        SnapshotWithQuiesce = Enum.TryParse<QuiesceMode>(f.SnapshotWithQuiesce, true, out var q) ? q
            : throw new InvalidDataException($"snapshotWithQuiesce must be removed, works or fails, not '{f.SnapshotWithQuiesce}'."),
        ResizeOnline = Enum.TryParse<ResizeOnlineMode>(f.ResizeOnline, true, out var r) ? r
            : throw new InvalidDataException($"resizeOnline must be removed, unsupported or works, not '{f.ResizeOnline}'."),
        SnapshotIgnoreVdis = f.SnapshotIgnoreVdis,
        SrBetterSeenFrom = new Dictionary<string, string>(f.SrBetterSeenFrom, StringComparer.Ordinal),
    };

    public static void Build(SimulatorCore core, ScenarioFile file)
    {
        core.Settings = Settings(file);
        var db = core.Db;
        var ops = new ModelOps(core);
        var hosts = new List<XapiObject>();
        foreach (var (name, ip) in new[] { (DefaultScenario.MasterName, core.MasterAddress.ToString()), (DefaultScenario.MemberName, core.MemberAddress.ToString()) })
        {
            hosts.Add(db.Create("host", new Dictionary<string, object?>
            {
                ["name_label"] = name, ["hostname"] = name, ["address"] = ip,
                ["API_version_major"] = 2L, ["API_version_minor"] = 21L, ["API_version_vendor"] = "XenSource",
                ["software_version"] = new Dictionary<string, object?>
                {
                    ["product_brand"] = "XenServer", ["product_version"] = "8.4.0", ["platform_version"] = "3.4.0",
                    ["xapi"] = "24.19", ["xapi_build"] = "24.19.2", ["xen"] = "4.17.5", ["build_number"] = "sim", ["hostname"] = name,
                },
                ["edition"] = file.RestrictCbt ? "standard" : "premium",
                ["license_params"] = new Dictionary<string, object?> { ["restrict_cbt"] = file.RestrictCbt ? "true" : "false" },
                ["enabled"] = true, ["memory_overhead"] = 0L,
                ["cpu_info"] = new Dictionary<string, object?> { ["cpu_count"] = "8", ["vendor"] = "GenuineIntel" },
            }));
        }
        var master = hosts[0];
        // Storage: a local SR per host, one shared SR, one ISO library.
        var srs = new List<XapiObject>();
        XapiObject NewSr(string name, string type, string content, long size, bool shared, IEnumerable<XapiObject> seenBy)
        {
            var sr = db.Create("SR", new Dictionary<string, object?>
            {
                ["name_label"] = name, ["type"] = type, ["content_type"] = content, ["physical_size"] = size, ["shared"] = shared,
                ["sm_config"] = new Dictionary<string, object?> { ["devserial"] = "sim" },
            });
            foreach (var h in seenBy)
                db.Create("PBD", new Dictionary<string, object?> { ["host"] = h.Ref, ["SR"] = sr.Ref, ["currently_attached"] = true,
                    ["device_config"] = new Dictionary<string, object?> { ["location"] = "/sim/" + name } });
            srs.Add(sr);
            return sr;
        }
        var shared = NewSr(DefaultScenario.SharedSr, "nfs", "", 2L << 40, true, hosts);
        foreach (var h in hosts) NewSr($"Local storage {h.Str("name_label")}", "ext", "user", 500L << 30, false, [h]);
        var iso = NewSr(DefaultScenario.IsoSr, "iso", "iso", 100L << 30, true, hosts);
        var tools = ops.CreateVdi(iso.Ref, new() { ["name_label"] = "guest-tools.iso", ["type"] = "user", ["read_only"] = true, ["is_tools_iso"] = true }, 64L << 20);

        db.Create("pool", new Dictionary<string, object?>
        {
            ["name_label"] = "sim-pool", ["master"] = master.Ref, ["default_SR"] = shared.Ref, ["suspend_image_SR"] = shared.Ref, ["crash_dump_SR"] = shared.Ref,
            ["restrictions"] = new Dictionary<string, object?> { ["restrict_cbt"] = file.RestrictCbt ? "true" : "false", ["restrict_checkpoint"] = "false" },
            ["other_config"] = new Dictionary<string, object?>(),
        });

        // Networks: management PIFs carry the hosts' loopback IPs so NBD info points at the simulator's listener.
        var mgmt = db.Create("network", new Dictionary<string, object?> { ["name_label"] = DefaultScenario.ManagementNetwork, ["bridge"] = "xenbr0" });
        var storage = db.Create("network", new Dictionary<string, object?> { ["name_label"] = DefaultScenario.StorageNetwork, ["bridge"] = "xenbr1" });
        db.Create("network", new Dictionary<string, object?> { ["name_label"] = "Host internal management network", ["bridge"] = "xenapi",
            ["other_config"] = new Dictionary<string, object?> { ["is_guest_installer_network"] = "true", ["is_host_internal_management_network"] = "true" } });
        int hostIndex = 0;
        foreach (var h in hosts)
        {
            hostIndex++;
            db.Create("PIF", new Dictionary<string, object?> { ["device"] = "eth0", ["network"] = mgmt.Ref, ["host"] = h.Ref, ["MAC"] = ModelOps.NewMac(),
                ["IP"] = h.Str("address"), ["netmask"] = "255.0.0.0", ["management"] = true, ["ip_configuration_mode"] = "Static" });
            // Loopback on purpose (127.0.1.N): anything that follows this network stays on the machine.
            db.Create("PIF", new Dictionary<string, object?> { ["device"] = "eth1", ["network"] = storage.Ref, ["host"] = h.Ref, ["MAC"] = ModelOps.NewMac(),
                ["IP"] = $"127.0.1.{hostIndex}", ["netmask"] = "255.255.255.0", ["ip_configuration_mode"] = "Static" });
            // dom0
            var dom0 = db.Create("VM", new Dictionary<string, object?>
            {
                ["name_label"] = $"Control domain on host: {h.Str("name_label")}", ["is_control_domain"] = true, ["power_state"] = "Running",
                ["resident_on"] = h.Ref, ["domid"] = 0L, ["memory_static_max"] = 4L << 30, ["memory_dynamic_max"] = 4L << 30,
                ["memory_dynamic_min"] = 4L << 30, ["memory_static_min"] = 4L << 30, ["VCPUs_max"] = 8L, ["VCPUs_at_startup"] = 8L, ["domain_type"] = "pv",
            });
            db.Set(dom0, "metrics", ops.CreateVmMetrics(4L << 30, 8, true).Ref);
        }
        foreach (var (net, purpose) in file.NetworkPurposes)
        {
            var n = db.All("network").FirstOrDefault(x => x.Str("name_label") == net) ?? throw new InvalidDataException($"networkPurposes names unknown network '{net}'.");
            db.Set(n, "purpose", new object?[] { purpose });
        }

        var vms = file.Base.Equals("default", StringComparison.OrdinalIgnoreCase) ? DefaultScenario.Vms.Concat(file.Vms) : file.Vms;
        foreach (var vm in vms) AddVm(core, ops, vm, hosts, shared, tools);
        foreach (var sr in srs) ops.RefreshSr(sr.Ref);
    }

    private static void AddVm(SimulatorCore core, ModelOps ops, ScenarioVm spec, List<XapiObject> hosts, XapiObject defaultSr, XapiObject toolsIso)
    {
        var db = core.Db;
        bool running = spec.PowerState is "Running" or "Paused";
        var host = spec.Host is null ? hosts[0] : hosts.FirstOrDefault(h => h.Str("name_label") == spec.Host)
            ?? throw new InvalidDataException($"VM '{spec.Name}' names unknown host '{spec.Host}'.");
        if (spec.PowerState is not ("Halted" or "Running" or "Paused" or "Suspended"))
            throw new InvalidDataException($"VM '{spec.Name}': powerState must be Halted, Running, Paused or Suspended.");
        var vm = db.Create("VM", new Dictionary<string, object?>
        {
            ["name_label"] = spec.Name, ["name_description"] = spec.IsTemplate ? "Template" : "Simulated VM",
            ["power_state"] = spec.IsTemplate ? "Halted" : spec.PowerState, ["is_a_template"] = spec.IsTemplate, ["is_default_template"] = spec.IsTemplate,
            ["resident_on"] = running && !spec.IsTemplate ? host.Ref : Schema.NullRef, ["domid"] = running ? 10L + db.All("VM").Count : -1L,
            ["memory_static_max"] = spec.MemoryBytes, ["memory_dynamic_max"] = spec.MemoryBytes, ["memory_dynamic_min"] = spec.MemoryBytes,
            ["memory_static_min"] = Math.Min(spec.MemoryBytes, 512L << 20), ["memory_target"] = spec.MemoryBytes,
            ["VCPUs_max"] = spec.Vcpus, ["VCPUs_at_startup"] = spec.Vcpus, ["HVM_boot_policy"] = "BIOS order",
            ["HVM_boot_params"] = new Dictionary<string, object?> { ["order"] = "cd" },
            ["platform"] = new Dictionary<string, object?> { ["device-model"] = "qemu-upstream-uefi", ["viridian"] = "true" },
            ["other_config"] = new Dictionary<string, object?> { ["mac_seed"] = Guid.NewGuid().ToString() },
            ["generation_id"] = spec.IsTemplate ? "" : $"{Random.Shared.NextInt64()}:{Random.Shared.NextInt64()}",
        });
        db.Set(vm, "metrics", ops.CreateVmMetrics(spec.MemoryBytes, spec.Vcpus, running).Ref);
        int device = 0;
        foreach (var d in spec.Disks)
        {
            var sr = d.Sr is null ? defaultSr : db.All("SR").FirstOrDefault(s => s.Str("name_label") == d.Sr)
                ?? throw new InvalidDataException($"Disk '{d.Name}' names unknown SR '{d.Sr}'.");
            var vdi = ops.CreateVdi(sr.Ref, new() { ["name_label"] = d.Name, ["name_description"] = $"Disk of {spec.Name}", ["type"] = device == 0 ? "system" : "user" }, d.Size);
            if (d.CbtEnabled) { core.Storage.EnableCbt(vdi.Uuid); vdi.Fields["cbt_enabled"] = true; }
            var disk = core.Storage.Open(vdi.Uuid);
            var buffer = new byte[1 << 20];
            foreach (var fill in d.Fill)
            {
                if (fill.Offset < 0 || fill.Length < 0 || fill.Offset + fill.Length > d.Size)
                    throw new InvalidDataException($"Disk '{d.Name}': fill [{fill.Offset}, +{fill.Length}) is outside its {d.Size} bytes.");
                for (long done = 0; done < fill.Length;)
                {
                    int n = (int)Math.Min(buffer.Length, fill.Length - done);
                    DeterministicData.Fill(buffer.AsSpan(0, n), fill.Seed, fill.Offset + done);
                    disk.WriteAsync(fill.Offset + done, buffer.AsMemory(0, n), CancellationToken.None).AsTask().GetAwaiter().GetResult();
                    done += n;
                }
            }
            ops.CreateVbd(vm.Ref, vdi.Ref, device.ToString(), "Disk", "RW", device == 0, running);
            device++;
        }
        if (!spec.IsTemplate)
            ops.CreateVbd(vm.Ref, spec.Name == DefaultScenario.WebVm ? toolsIso.Ref : Schema.NullRef, "3", "CD", "RO", false, running);
        int vifDevice = 0;
        foreach (var v in spec.Vifs)
        {
            var net = db.All("network").FirstOrDefault(n => n.Str("name_label") == v.Network)
                ?? throw new InvalidDataException($"VIF of '{spec.Name}' names unknown network '{v.Network}'.");
            ops.CreateVif(vm.Ref, net.Ref, (vifDevice++).ToString(), v.Mac ?? "", running);
        }
    }
}
