using VProtect.Core.Backup;
using VProtect.Core.IO;
using VProtect.Core.Repository;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;

namespace VProtect.Core.Restore.Cbt;

/// <summary>
/// Restores a CBT backup: recreates the VM from vm.json (VM.create with the fields Xen Orchestra's create sends,
/// VDI.create, VBD.create, VIF.create) and writes each disk's merged chain in one pass (every stored block read once)
/// through PUT /import_raw_vdi?format=raw&amp;chunked=true (only allocated extents travel). MAC rule: if a VM with the backed-up uuid is still in the pool, the restore is a new
/// VM with new MACs; otherwise the original configuration comes back, MACs included. A failure removes everything
/// the restore created; what cannot be removed is named in the error.
/// </summary>
public sealed class CbtRestore : IRestoreStrategy
{
    /// <summary>other_config key on restored VMs and VDIs: the backup they came from.</summary>
    public const string RestoredFromKey = "vprotect:restored-from";

    // The VM.create fields of XO's vm.mjs create (all required by xapi) plus the optional ones worth keeping.
    private static readonly string[] VmCreateFields =
    {
        "name_label", "name_description", "user_version", "is_a_template", "affinity",
        "memory_static_max", "memory_dynamic_max", "memory_dynamic_min", "memory_static_min",
        "VCPUs_params", "VCPUs_max", "VCPUs_at_startup", "actions_after_shutdown", "actions_after_reboot",
        "actions_after_crash", "PV_bootloader", "PV_kernel", "PV_ramdisk", "PV_args", "PV_bootloader_args",
        "PV_legacy_args", "HVM_boot_policy", "HVM_boot_params", "platform", "PCI_bus", "other_config", "recommendations",
        "xenstore_data", "ha_always_run", "ha_restart_priority", "tags", "HVM_shadow_multiplier", "hardware_platform_version",
        "has_vendor_device", "domain_type", "NVRAM",
    };

    private static readonly Dictionary<string, object?> VmDefaults = new()
    {
        ["name_description"] = "", ["user_version"] = 1L, ["affinity"] = XapiValue.NullRef,
        ["VCPUs_params"] = new Dictionary<string, object?>(), ["actions_after_shutdown"] = "destroy",
        ["actions_after_reboot"] = "restart", ["actions_after_crash"] = "restart", ["PV_bootloader"] = "", ["PV_kernel"] = "",
        ["PV_ramdisk"] = "", ["PV_args"] = "", ["PV_bootloader_args"] = "", ["PV_legacy_args"] = "", ["HVM_boot_policy"] = "BIOS order",
        ["HVM_boot_params"] = new Dictionary<string, object?> { ["order"] = "cd" }, ["platform"] = new Dictionary<string, object?>(),
        ["PCI_bus"] = "", ["other_config"] = new Dictionary<string, object?>(), ["recommendations"] = "",
    };

    public BackupStrategy Kind => BackupStrategy.Cbt;

    public async Task<RestoreResult> RestoreAsync(RestoreRun run, CancellationToken ct)
    {
        var session = run.Session;
        var point = run.Point;
        var folder = run.Repository.GetBackupFolder(point);
        var metadata = VmMetadata.Read(Path.Combine(folder, BackupRepository.VmMetadataFile));
        var disks = SelectDisks(run, metadata);
        var created = new CreatedObjects();
        try
        {
            bool originalPresent = await ExistsAsync(session, "VM", metadata.VmUuid, ct).ConfigureAwait(false);
            var restoredDisks = new List<RestoredDisk>();
            string? vmRef = null;
            string? vmUuid = null;
            string name = run.Options.Name ?? (run.Options.Disks is null && originalPresent ? $"{metadata.VmName} (restored {point.SnapshotTime ?? point.CreatedUtc:yyyy-MM-dd HH:mm})" : metadata.VmName);
            if (run.Options.Disks is null)
            {
                run.Observer.OnProgress(new BackupProgress(metadata.VmUuid, metadata.VmName, "Creating VM", null, 0, 0));
                vmRef = XapiValue.AsString(await session.CallAsync("VM.create", new object?[] { VmFields(metadata, name, point) }, ct).ConfigureAwait(false));
                created.Vm = vmRef;
                vmUuid = (await session.GetRecordAsync<VmRecord>(vmRef, ct).ConfigureAwait(false)).Uuid;
            }
            foreach (var (meta, manifest) in disks)
            {
                ct.ThrowIfCancellationRequested();
                var srRef = await ChooseSrAsync(session, run.Options.StorageRepository, meta, ct).ConfigureAwait(false);
                var vdi = meta.Vdi ?? new Dictionary<string, object?>();
                string vdiName = Str(vdi, "name_label", manifest.Name ?? manifest.Key);
                var vdiRef = XapiValue.AsString(await session.CallAsync("VDI.create", new object?[] { new Dictionary<string, object?>
                {
                    ["name_label"] = vdiName,
                    ["name_description"] = Str(vdi, "name_description", ""),
                    ["SR"] = srRef,
                    ["virtual_size"] = manifest.VirtualSize,
                    ["type"] = "user",
                    ["sharable"] = false,
                    ["read_only"] = false,
                    ["other_config"] = new Dictionary<string, object?> { [RestoredFromKey] = point.Id },
                    ["sm_config"] = new Dictionary<string, object?>(),
                    ["xenstore_data"] = new Dictionary<string, object?>(),
                    ["tags"] = Array.Empty<object?>(),
                } }, ct).ConfigureAwait(false));
                created.Vdis.Add(vdiRef);
                long written = await ImportDiskAsync(run, manifest, vdiRef, ct).ConfigureAwait(false);
                var vdiUuid = (await session.GetRecordAsync<VdiRecord>(vdiRef, ct).ConfigureAwait(false)).Uuid;
                if (vmRef is not null)
                {
                    var vbd = meta.Vbd;
                    await session.CallAsync("VBD.create", new object?[] { new Dictionary<string, object?>
                    {
                        ["VM"] = vmRef, ["VDI"] = vdiRef, ["userdevice"] = Str(vbd, "userdevice", "0"),
                        ["bootable"] = vbd.TryGetValue("bootable", out var b) && b is bool bb && bb,
                        ["mode"] = "RW", ["type"] = "Disk", ["empty"] = false, ["unpluggable"] = !vbd.TryGetValue("unpluggable", out var u) || u is not bool ub || ub,
                        ["other_config"] = new Dictionary<string, object?>(), ["qos_algorithm_type"] = "",
                        ["qos_algorithm_params"] = new Dictionary<string, object?>(),
                    } }, ct).ConfigureAwait(false);
                }
                restoredDisks.Add(new RestoredDisk(manifest.Key, manifest.Device, vdiUuid, written));
            }
            bool newMacs = originalPresent;
            if (vmRef is not null)
            {
                // Non-disk VBDs (the CD drive) come back empty.
                foreach (var cd in metadata.Disks.Where(d => Str(d.Vbd, "type", "") == "CD"))
                    await session.CallAsync("VBD.create", new object?[] { new Dictionary<string, object?>
                    {
                        ["VM"] = vmRef, ["VDI"] = XapiValue.NullRef, ["userdevice"] = Str(cd.Vbd, "userdevice", "3"), ["bootable"] = false,
                        ["mode"] = "RO", ["type"] = "CD", ["empty"] = true, ["other_config"] = new Dictionary<string, object?>(),
                        ["qos_algorithm_type"] = "", ["qos_algorithm_params"] = new Dictionary<string, object?>(),
                    } }, ct).ConfigureAwait(false);
                await CreateVifsAsync(run, metadata, vmRef, newMacs, ct).ConfigureAwait(false);
                if (run.Options.PowerOn)
                {
                    run.Observer.OnProgress(new BackupProgress(metadata.VmUuid, metadata.VmName, "Starting VM", null, 0, 0));
                    await session.CallAsyncTaskAsync("VM.start", new object?[] { vmRef, false, false }, null, ct).ConfigureAwait(false);
                }
            }
            return new RestoreResult(vmUuid, vmRef is null ? null : name, restoredDisks, vmRef is not null && newMacs, TimeSpan.Zero);
        }
        catch (Exception ex)
        {
            var leftovers = await created.RemoveQuietlyAsync(session).ConfigureAwait(false);
            if (leftovers.Count == 0) throw;
            throw new RestoreIncompleteException($"The restore failed ({ex.Message}) and these objects it created could not be removed: {string.Join(", ", leftovers)}. Remove them by hand.", ex);
        }
    }

    private static List<(DiskMetadata Meta, DiskManifest Manifest)> SelectDisks(RestoreRun run, VmMetadata metadata)
    {
        var result = new List<(DiskMetadata, DiskManifest)>();
        var wanted = run.Options.Disks is null ? null : new HashSet<string>(run.Options.Disks, StringComparer.OrdinalIgnoreCase);
        foreach (var manifest in run.Point.Disks)
        {
            var meta = metadata.Disks.FirstOrDefault(d => d.VdiUuid == manifest.Key) ?? new DiskMetadata { VdiUuid = manifest.Key };
            var names = new[] { manifest.Key, manifest.Device, Str(meta.Vbd, "userdevice", ""), Str(meta.Vbd, "device", "") };
            if (wanted is not null)
            {
                var hit = names.FirstOrDefault(n => !string.IsNullOrEmpty(n) && wanted.Contains(n!));
                if (hit is null) continue;
                foreach (var n in names) if (n is not null) wanted.Remove(n);
            }
            result.Add((meta, manifest));
        }
        if (wanted is { Count: > 0 })
            throw new ArgumentException($"The backup {run.Point.Id} has no disk {string.Join(", ", wanted)} (give a device such as xvda, a userdevice number, or the source VDI uuid; Get-VMBackup shows the disks).");
        if (result.Count == 0) throw new InvalidOperationException($"The backup {run.Point.Id} holds no disk to restore.");
        return result;
    }

    private static Dictionary<string, object?> VmFields(VmMetadata metadata, string name, BackupManifest point)
    {
        var fields = new Dictionary<string, object?>();
        foreach (var f in VmCreateFields)
            if (metadata.Vm.TryGetValue(f, out var v) && v is not null) fields[f] = v;
        foreach (var (k, v) in VmDefaults) fields.TryAdd(k, v);
        fields["name_label"] = name;
        fields["is_a_template"] = false;
        fields["affinity"] = XapiValue.NullRef; // the original host may be gone; let the pool choose
        var other = fields["other_config"] is IReadOnlyDictionary<string, object?> o ? new Dictionary<string, object?>(o) : new Dictionary<string, object?>();
        foreach (var key in other.Keys.Where(k => k.StartsWith("vprotect:", StringComparison.Ordinal)).ToList()) other.Remove(key);
        other[RestoredFromKey] = point.Id;
        fields["other_config"] = other;
        foreach (var key in new[] { "memory_static_max", "memory_dynamic_max", "memory_dynamic_min", "memory_static_min", "VCPUs_max", "VCPUs_at_startup" })
            fields.TryAdd(key, key.StartsWith("memory", StringComparison.Ordinal) ? 1L << 30 : 1L);
        return fields;
    }

    /// <summary>
    /// Streams the merged chain of one disk into a blank VDI with vhd-tool's chunked framing: only allocated
    /// extents travel, each stored block is read once. Returns the bytes of disk data sent.
    /// </summary>
    private static async Task<long> ImportDiskAsync(RestoreRun run, DiskManifest manifest, string vdiRef, CancellationToken ct)
    {
        using var source = run.Repository.OpenDisk(run.Point, manifest.Key);
        await using var body = await ChunkedExtentStream.CreateAsync(source, ct).ConfigureAwait(false);
        var query = new Dictionary<string, string> { ["vdi"] = vdiRef, ["format"] = "raw", ["chunked"] = "true" };
        await run.Session.Http.PutAsync("/import_raw_vdi", query, body, body.Length, new SyncProgress(run, manifest, body.Length), ct).ConfigureAwait(false);
        return body.DataBytes;
    }

    private static async Task CreateVifsAsync(RestoreRun run, VmMetadata metadata, string vmRef, bool newMacs, CancellationToken ct)
    {
        var session = run.Session;
        foreach (var vif in metadata.Vifs)
        {
            string? networkRef = null;
            if (vif.NetworkUuid is not null)
            {
                try { networkRef = await session.GetByUuidAsync("network", vif.NetworkUuid, ct).ConfigureAwait(false); }
                catch (XapiException ex) when (ex.ErrorCode is "UUID_INVALID" or "HANDLE_INVALID") { }
            }
            if (networkRef is null && vif.NetworkName is not null)
                networkRef = (await session.GetByNameLabelAsync("network", vif.NetworkName, ct).ConfigureAwait(false)).FirstOrDefault();
            if (networkRef is null)
            {
                run.Observer.OnWarning($"Network '{vif.NetworkName}' ({vif.NetworkUuid}) of VIF {vif.Device} is not in this pool; the VIF was not restored. Add one with the host's tools.");
                continue;
            }
            await session.CallAsync("VIF.create", new object?[] { new Dictionary<string, object?>
            {
                ["device"] = vif.Device, ["network"] = networkRef, ["VM"] = vmRef, ["MAC"] = newMacs ? "" : vif.Mac,
                ["MTU"] = vif.Vif.TryGetValue("MTU", out var mtu) && mtu is long m ? m : 1500L,
                ["other_config"] = new Dictionary<string, object?>(), ["qos_algorithm_type"] = "",
                ["qos_algorithm_params"] = new Dictionary<string, object?>(),
            } }, ct).ConfigureAwait(false);
        }
    }

    private static async Task<string> ChooseSrAsync(XapiSession session, string? requested, DiskMetadata disk, CancellationToken ct)
    {
        if (!string.IsNullOrEmpty(requested))
        {
            try { return await session.GetByUuidAsync("SR", requested, ct).ConfigureAwait(false); }
            catch (XapiException ex) when (ex.ErrorCode is "UUID_INVALID" or "HANDLE_INVALID") { }
            var byName = await session.GetByNameLabelAsync("SR", requested, ct).ConfigureAwait(false);
            return byName.Count switch
            {
                1 => byName[0],
                0 => throw new ArgumentException($"There is no SR '{requested}' in the pool; give an SR uuid or name."),
                _ => throw new ArgumentException($"Several SRs are named '{requested}'; give the SR's uuid."),
            };
        }
        if (disk.SrUuid is not null)
        {
            try { return await session.GetByUuidAsync("SR", disk.SrUuid, ct).ConfigureAwait(false); }
            catch (XapiException ex) when (ex.ErrorCode is "UUID_INVALID" or "HANDLE_INVALID") { }
        }
        var pools = await session.GetAllRecordsAsync<PoolRecord>(ct).ConfigureAwait(false);
        var defaultSr = pools.FirstOrDefault()?.DefaultSR;
        if (XapiValue.IsNullRef(defaultSr))
            throw new InvalidOperationException($"The disk's original SR ({disk.SrName}) is not in this pool and the pool has no default SR; pass -SR.");
        return defaultSr!;
    }

    private static async Task<bool> ExistsAsync(XapiSession session, string cls, string uuid, CancellationToken ct)
    {
        try { await session.GetByUuidAsync(cls, uuid, ct).ConfigureAwait(false); return true; }
        catch (XapiException ex) when (ex.ErrorCode is "UUID_INVALID" or "HANDLE_INVALID") { return false; }
    }

    private static string Str(IReadOnlyDictionary<string, object?> map, string key, string fallback) =>
        map.TryGetValue(key, out var v) && v is not null ? XapiValue.AsString(v) : fallback;

    private sealed class SyncProgress(RestoreRun run, DiskManifest manifest, long total) : IProgress<TransferProgress>
    {
        public void Report(TransferProgress value) => run.Observer.OnProgress(
            new BackupProgress(run.Point.VmUuid, run.Point.VmName, "Writing", manifest.Device, value.BytesDone, total));
    }

    /// <summary>What a restore created, removed in reverse on failure.</summary>
    private sealed class CreatedObjects
    {
        public string? Vm { get; set; }
        public List<string> Vdis { get; } = new();

        public async Task<List<string>> RemoveQuietlyAsync(XapiSession session)
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(2));
            var left = new List<string>();
            if (Vm is not null)
            {
                try { await session.CallAsync("VM.hard_shutdown", new object?[] { Vm }, cts.Token).ConfigureAwait(false); } catch (XapiException) { }
                try { await session.CallAsync("VM.destroy", new object?[] { Vm }, cts.Token).ConfigureAwait(false); }
                catch (Exception e) when (e is not XapiException { ErrorCode: "HANDLE_INVALID" }) { left.Add($"VM {Vm}"); }
            }
            foreach (var vdi in Vdis)
            {
                try { await session.CallAsync("VDI.destroy", new object?[] { vdi }, cts.Token).ConfigureAwait(false); }
                catch (Exception e) when (e is not XapiException { ErrorCode: "HANDLE_INVALID" }) { left.Add($"VDI {vdi}"); }
            }
            return left;
        }
    }
}

/// <summary>A restore failed and could not remove everything it created; the message names what is left.</summary>
public sealed class RestoreIncompleteException : Exception
{
    public RestoreIncompleteException(string message, Exception inner) : base(message, inner) { }
}
