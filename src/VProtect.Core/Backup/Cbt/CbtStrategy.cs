using System.Collections.Concurrent;
using VProtect.Core.Cbt;
using VProtect.Core.IO;
using VProtect.Core.Nbd;
using VProtect.Core.Repository;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;

namespace VProtect.Core.Backup.Cbt;

/// <summary>
/// The CBT strategy: a full reads each snapshot disk's allocated blocks (/export_raw_vdi?format=vhd; NBD on request), an incremental
/// reads only the blocks <c>VDI.list_changed_blocks</c> reports between the previous backup's snapshot VDI and this
/// one's, over NBD. Each disk records its snapshot VDI uuid for the next run. Never a silent full: every reason an
/// incremental is impossible is found and named, in PlanAsync where it can be seen before the snapshot, and in
/// TransferAsync (unrelated VDIs, CBT reset) where only list_changed_blocks can tell.
/// </summary>
public sealed class CbtStrategy : IBackupStrategy
{
    /// <summary>DiskManifest.Properties key: the snapshot VDI the disk was read from (the next incremental's base).</summary>
    public const string SnapshotVdiProperty = "snapshotVdi";
    /// <summary>DiskManifest.Properties key: how the data travelled ("nbd", "http-vhd").</summary>
    public const string TransportProperty = "transport";
    /// <summary>DiskManifest.Properties key: why CBT could not be enabled on the disk (the next incremental will be a full).</summary>
    public const string CbtUnavailableProperty = "cbtUnavailable";

        private readonly ConcurrentDictionary<BackupRun, Dictionary<string, string>> _cbtUnavailable = new();

    public BackupStrategy Kind => BackupStrategy.Cbt;

    /// <summary>
    /// Read fulls over NBD instead of /export_raw_vdi?format=vhd. Off by default: xapi-nbd does not offer
    /// base:allocation, so over NBD a full reads every byte of the disk, zeros included, while the VHD export moves
    /// only the allocated blocks (a 100 GiB disk with 2 GiB written moves about 2 GiB). Incrementals always use NBD.
    /// </summary>
    public bool FullsOverNbd { get; init; }

    public async Task<BackupPlan> PlanAsync(BackupRun run, CancellationToken ct)
    {
        if (run.Options.Type == BackupType.Full) return BackupPlan.Full();
        var last = run.History.LastOrDefault();
        if (last is null) return BackupPlan.Full("there is no previous CBT backup of this VM in the repository.");
        foreach (var disk in run.Disks)
        {
            var reason = await WhyNoIncrementalAsync(run, last, disk, ct).ConfigureAwait(false);
            if (reason is not null) return BackupPlan.Full(reason);
        }
        return BackupPlan.Incremental(last);
    }

    private static async Task<string?> WhyNoIncrementalAsync(BackupRun run, BackupManifest last, BackupDisk disk, CancellationToken ct)
    {
        string name = $"disk {disk.Device} ({disk.Vdi.Uuid})";
        var previous = last.Disks.FirstOrDefault(d => d.Key == disk.Key);
        if (previous is null) return $"{name} was added since the previous backup {last.Id}.";
        if (previous.VirtualSize != disk.Vdi.VirtualSize)
            return $"{name} was resized since the previous backup {last.Id} ({previous.VirtualSize} -> {disk.Vdi.VirtualSize} bytes).";
        if (previous.Properties.TryGetValue(CbtUnavailableProperty, out var why)) return $"CBT could not be enabled on {name} at the previous backup: {why}";
        if (!disk.Vdi.CbtEnabled) return $"CBT is disabled on {name} (it was turned off since the previous backup, or never on).";
        if (!previous.Properties.TryGetValue(SnapshotVdiProperty, out var baseUuid))
            return $"the previous backup {last.Id} does not name the snapshot VDI of {name}.";
        VdiRecord baseVdi;
        try
        {
            var baseRef = await run.Session.GetByUuidAsync("VDI", baseUuid, ct).ConfigureAwait(false);
            baseVdi = await run.Session.GetRecordAsync<VdiRecord>(baseRef, ct).ConfigureAwait(false);
        }
        catch (XapiException ex) when (ex.ErrorCode is "UUID_INVALID" or "HANDLE_INVALID")
        {
            return $"the base snapshot VDI {baseUuid} of {name} is gone from the pool.";
        }
        if (!baseVdi.CbtEnabled) return $"the base snapshot VDI {baseUuid} of {name} has no CBT metadata (CBT was disabled or reset since).";
        var nbd = await NbdEndpoint.GetAsync(run.Session, disk.Vdi.OpaqueRef, ct).ConfigureAwait(false);
        if (nbd.Count == 0) return "NBD is not enabled on any network of the pool (VDI.get_nbd_info is empty); run Enable-XenNbd.";
        return null;
    }

    public async Task BeforeSnapshotAsync(BackupRun run, BackupPlan plan, CancellationToken ct)
    {
        var unavailable = new Dictionary<string, string>();
        _cbtUnavailable[run] = unavailable;
        foreach (var disk in run.Disks.Where(d => !d.Vdi.CbtEnabled))
        {
            try
            {
                await run.Session.CallAsyncTaskAsync("VDI.enable_cbt", new object?[] { disk.Vdi.OpaqueRef }, null, ct).ConfigureAwait(false);
                run.Observer.OnVerbose($"Enabled CBT on disk {disk.Device} of '{run.Vm.NameLabel}'.");
            }
            catch (XapiException ex) when (ex.ErrorCode is "LICENCE_RESTRICTION" or "SR_OPERATION_NOT_SUPPORTED" or "VDI_INCOMPATIBLE_TYPE"
                                              or "VDI_ON_BOOT_MODE_INCOMPATIBLE_WITH_OPERATION" or "FEATURE_RESTRICTED")
            {
                string why = ex.ErrorCode == "LICENCE_RESTRICTION" ? "the pool's licence does not include CBT (LICENCE_RESTRICTION)"
                    : $"the host refused it ({ex.ErrorCode})";
                unavailable[disk.Key] = why;
                run.Observer.OnWarning($"CBT could not be enabled on disk {disk.Device} of '{run.Vm.NameLabel}': {why}. This full backup goes on; the next incremental will be a full.");
            }
        }
    }

    public async Task TransferAsync(BackupRun run, BackupPlan plan, SnapshotInfo snapshot, BackupWriter writer, CancellationToken ct)
    {
        _cbtUnavailable.TryRemove(run, out var unavailable);
        unavailable ??= new Dictionary<string, string>();
        var snapshotDisks = run.Disks.Select(d => (Disk: d, Snap: SnapshotVdi(snapshot, d))).ToList();

        // An incremental needs every disk's changed blocks before anything is written: if one cannot be had, the
        // whole backup becomes a full (a chain mixes no full and incremental disks), with the reason recorded.
        Dictionary<string, IReadOnlyList<Extent>>? changed = null;
        // An incremental reads over NBD, and each connect plugs the VDI into dom0 (the slow part): the first disk's
        // connect starts now, while the host lists the changed blocks. The others connect when their turn comes, so
        // a VM with many disks does not hold many connections at once.
        EarlyNbd? early = null;
        if (plan.Type == BackupType.Incremental && snapshotDisks.Count > 0)
        {
            var wanted = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
            early = new EarlyNbd(wanted, ConnectNbdAsync(run, snapshotDisks[0].Snap, wanted.Task, ct));
        }
        try
        {
            if (plan.Type == BackupType.Incremental)
            {
                changed = new();
                foreach (var (disk, snap) in snapshotDisks)
                {
                    var (extents, reason) = await ChangedExtentsAsync(run, plan.Base!, disk, snap, ct).ConfigureAwait(false);
                    if (reason is not null)
                    {
                        if (run.Options.NoFallback) throw new IncrementalNotPossibleException(run.Vm.NameLabel, reason);
                        run.Observer.OnWarning($"'{run.Vm.NameLabel}': taking a full backup instead of an incremental: {reason}");
                        writer.Manifest.Type = BackupType.Full;
                        writer.Manifest.BaseId = null;
                        writer.Manifest.FullReason = reason;
                        changed = null;
                        break;
                    }
                    changed[disk.Key] = extents!;
                }
            }
            // A full instead: the early NBD connection (and its dom0 VBD) goes before the export starts.
            if (changed is null && early is not null)
            {
                await early.DisposeUnusedAsync().ConfigureAwait(false);
                early = null;
            }

            foreach (var (disk, snap) in snapshotDisks)
            {
                ct.ThrowIfCancellationRequested();
                var manifest = new DiskManifest { Key = disk.Key, Device = disk.Device, Name = disk.Vdi.NameLabel, VirtualSize = snap.VirtualSize };
                manifest.Properties[SnapshotVdiProperty] = snap.Uuid;
                if (unavailable.TryGetValue(disk.Key, out var why)) manifest.Properties[CbtUnavailableProperty] = why;
                await using var diskWriter = writer.AddDisk(manifest);
                if (changed is not null)
                {
                    manifest.Properties[TransportProperty] = "nbd";
                    var pre = early; // the first disk's, if any: the read owns it from here
                    early = null;
                    if (!await TryReadOverNbdAsync(run, disk, snap, changed[disk.Key], diskWriter, pre, ct).ConfigureAwait(false))
                        throw new IOException($"Could not connect to NBD for disk {disk.Device} of '{run.Vm.NameLabel}' at any address VDI.get_nbd_info gave; an incremental needs NBD. Check the NBD network (Get-XenNbd) and retry.");
                }
                else
                {
                    var endpoints = FullsOverNbd ? await NbdEndpoint.GetAsync(run.Session, snap.OpaqueRef, ct).ConfigureAwait(false) : Array.Empty<NbdEndpoint>();
                    var whole = new[] { new Extent(0, snap.VirtualSize) };
                    if (endpoints.Count > 0 && await TryReadOverNbdAsync(run, disk, snap, whole, diskWriter, null, ct).ConfigureAwait(false))
                    {
                        manifest.Properties[TransportProperty] = "nbd";
                    }
                    else
                    {
                        manifest.Properties[TransportProperty] = "http-vhd";
                        await ReadOverHttpAsync(run, disk, snap, diskWriter, ct).ConfigureAwait(false);
                    }
                }
                await diskWriter.CompleteAsync(ct).ConfigureAwait(false);
            }
        }
        finally
        {
            // Not used (a failure before the first disk's read): close it.
            if (early is not null) await early.DisposeUnusedAsync().ConfigureAwait(false);
        }
    }

    /// <summary>A connect started before the changed blocks were known; <see cref="Wanted"/> gets the connection count.</summary>
    private sealed class EarlyNbd(TaskCompletionSource<int> wanted, Task<NbdConnect> connect)
    {
        public TaskCompletionSource<int> Wanted { get; } = wanted;
        public Task<NbdConnect> Connect { get; } = connect;

        public async Task DisposeUnusedAsync()
        {
            Wanted.TrySetCanceled();
            try
            {
                var c = await Connect.ConfigureAwait(false);
                if (c.Client is not null) await c.Client.DisposeAsync().ConfigureAwait(false);
            }
            catch (Exception) { /* the backup is already failing or falling back; this connection only has to go */ }
        }
    }

    private sealed record NbdConnect(NbdClient? Client, NbdEndpoint? Endpoint, IReadOnlyList<NbdEndpoint> Endpoints, Exception? Last);

    /// <summary>Connects to the first endpoint that accepts; the background connections wait for <paramref name="wanted"/>.</summary>
    private static async Task<NbdConnect> ConnectNbdAsync(BackupRun run, VdiRecord snap, Task<int> wanted, CancellationToken ct)
    {
        var endpoints = await NbdEndpoint.GetAsync(run.Session, snap.OpaqueRef, ct).ConfigureAwait(false);
        Exception? last = null;
        foreach (var endpoint in endpoints)
        {
            try { return new NbdConnect(await NbdClient.ConnectAsync(endpoint.ToClientOptions(run.Options.NbdConnections), wanted, ct).ConfigureAwait(false), endpoint, endpoints, null); }
            catch (Exception ex) when (ex is not OperationCanceledException && ex is IOException or NbdException or System.Net.Sockets.SocketException)
            {
                last = ex; // the next address of the host may work
            }
        }
        return new NbdConnect(null, null, endpoints, last);
    }

    private static VdiRecord SnapshotVdi(SnapshotInfo snapshot, BackupDisk disk) =>
        snapshot.VdisBySource.TryGetValue(disk.Vdi.OpaqueRef, out var vdi) ? vdi
        : throw new InvalidOperationException($"The snapshot {snapshot.Uuid} has no copy of disk {disk.Device} ({disk.Vdi.Uuid}); was it detached during the backup? Retry the backup.");

    /// <summary>The changed extents since the base backup, or the reason they cannot be had.</summary>
    private static async Task<(IReadOnlyList<Extent>? Extents, string? Reason)> ChangedExtentsAsync(
        BackupRun run, BackupManifest @base, BackupDisk disk, VdiRecord snap, CancellationToken ct)
    {
        var previous = @base.Disks.First(d => d.Key == disk.Key);
        string baseUuid = previous.Properties[SnapshotVdiProperty];
        string name = $"disk {disk.Device} ({disk.Vdi.Uuid})";
        // The plan saw the live disk before the snapshot; a resize in between (a pre-snapshot script, another admin)
        // shows only on the snapshot. A chain never mixes sizes.
        if (snap.VirtualSize != previous.VirtualSize)
            return (null, $"{name} was resized since the previous backup {@base.Id} ({previous.VirtualSize} -> {snap.VirtualSize} bytes).");
        try
        {
            var baseRef = await run.Session.GetByUuidAsync("VDI", baseUuid, ct).ConfigureAwait(false);
            var bitmap = XapiValue.AsString(await run.Session.CallAsyncTaskAsync("VDI.list_changed_blocks",
                new object?[] { baseRef, snap.OpaqueRef }, null, ct).ConfigureAwait(false));
            var extents = ChangedBlockBitmap.Decode(bitmap, snap.VirtualSize);
            run.Observer.OnVerbose($"{name}: {extents.Sum(e => e.Length)} bytes changed in {extents.Count} extents since {@base.Id}.");
            return (extents, null);
        }
        catch (XapiException ex) when (ex.ErrorCode == "SR_BACKEND_FAILURE_460")
        {
            return (null, $"the host cannot compare {name} with its base snapshot VDI {baseUuid}: they are unrelated (SR_BACKEND_FAILURE_460; CBT was reset).");
        }
        catch (XapiException ex) when (ex.ErrorCode is "VDI_NO_CBT_METADATA" or "UUID_INVALID" or "HANDLE_INVALID")
        {
            return (null, $"the base snapshot VDI {baseUuid} of {name} cannot be compared ({ex.ErrorCode}: CBT disabled, reset or the VDI is gone).");
        }
    }

    /// <summary>
    /// Reads the extents over NBD from the first endpoint that accepts a connection. False when none did (nothing
    /// was written); a failure after connecting throws, since part of the disk is already in the backup.
    /// </summary>
    private static async Task<bool> TryReadOverNbdAsync(BackupRun run, BackupDisk disk, VdiRecord snap, IReadOnlyList<Extent> extents,
        DiskWriter writer, EarlyNbd? early, CancellationToken ct)
    {
        long total = extents.Sum(e => e.Length);
        run.Report("Reading", disk.Device, 0, total);
        int connections = ConnectionsFor(total, run.Options.NbdConnections);
        NbdConnect connect;
        if (early is not null)
        {
            early.Wanted.TrySetResult(connections);
            connect = await early.Connect.ConfigureAwait(false);
        }
        else connect = await ConnectNbdAsync(run, snap, Task.FromResult(connections), ct).ConfigureAwait(false);
        if (connect.Client is not { } client)
        {
            run.Observer.OnVerbose($"NBD for disk {disk.Device} was not reachable at {string.Join(", ", connect.Endpoints.Select(e => e.Address + ":" + e.Port))}: {connect.Last?.Message}");
            return false;
        }
        await using (client.ConfigureAwait(false))
        {
            var endpoint = connect.Endpoint!;
            run.Observer.OnVerbose($"Disk {disk.Device}: reading {total} bytes in {extents.Count} extents over NBD from {endpoint.Address}:{endpoint.Port} ({connections} connection(s)).");
            var progress = new Progress(run, disk.Device, total);
            await client.ReadExtentsAsync(extents, (offset, data, token) => writer.WriteAsync(offset, data, token),
                progress, skipZeroes: false, ct).ConfigureAwait(false);
            run.Report("Reading", disk.Device, total, total);
            return true;
        }
    }

    /// <summary>Bytes to read that justify one more NBD connection (see <see cref="ConnectionsFor"/>).</summary>
    public const long BytesPerNbdConnection = 64L << 20;

    /// <summary>
    /// NBD connections for reading <paramref name="bytesToRead"/>: one per <see cref="BytesPerNbdConnection"/>, at least
    /// one, at most <paramref name="maxConnections"/> (BackupOptions.NbdConnections). Each xapi-nbd connection plugs the
    /// VDI into dom0 (VBD.create + VBD.plug, slow) and the client opens them one after the other, so a small
    /// incremental that opened all of them would spend more time connecting than reading (measured: 0.43 s of a 0.51 s
    /// incremental with 10 MiB changed went to four connects; docs/performance.cbt.md).
    /// </summary>
    public static int ConnectionsFor(long bytesToRead, int maxConnections)
    {
        long wanted = (bytesToRead + BytesPerNbdConnection - 1) / BytesPerNbdConnection;
        return (int)Math.Clamp(wanted, 1, Math.Max(1, maxConnections));
    }

    /// <summary>
    /// A full without NBD: /export_raw_vdi?format=vhd, so only the blocks the SR has allocated travel (a 100 GiB
    /// disk with 2 GiB written moves about 2 GiB); the VHD is applied into the backup as it arrives.
    /// </summary>
    private static async Task ReadOverHttpAsync(BackupRun run, BackupDisk disk, VdiRecord snap, DiskWriter writer, CancellationToken ct)
    {
        long size = snap.VirtualSize;
        run.Report("Reading", disk.Device, 0, size);
        await using var download = await run.Session.Http.ExportRawVdiAsync(snap.OpaqueRef, "vhd", null, -1, null, ct).ConfigureAwait(false);
        var target = new DiskWriterTarget(writer, size, bytes => run.Report("Reading", disk.Device, bytes, size));
        await Formats.Vhd.VhdStreamReader.ApplyAsync(download.Content, target, $"export of disk {disk.Device} ({snap.Uuid})", null, null, ct).ConfigureAwait(false);
        // Drain anything after the trailing footer so the task result can be checked.
        var scratch = new byte[4096];
        while (await download.Content.ReadAsync(scratch, ct).ConfigureAwait(false) > 0) { }
        await download.CompleteAsync(ct).ConfigureAwait(false);
        run.Report("Reading", disk.Device, size, size);
    }

    public IReadOnlyList<string> SnapshotsToRelease(BackupRun run, BackupPlan plan, BackupManifest committed)
    {
        // The new snapshot is the next base; the previous one is no longer needed, whatever type this run was.
        var previous = run.History.LastOrDefault()?.SnapshotUuid;
        return previous is null || previous == committed.SnapshotUuid ? Array.Empty<string>() : new[] { previous };
    }

    private sealed class Progress(BackupRun run, string device, long total) : IProgress<TransferProgress>
    {
        public void Report(TransferProgress value) => run.Report("Reading", device, value.BytesDone, total);
    }
}
