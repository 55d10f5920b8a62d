using VProtect.Core.Formats;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.Formats.Xva;
using VProtect.Core.IO;
using VProtect.Core.Repository;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;

namespace VProtect.Core.Backup.Xva;

/// <summary>
/// The strategy that works on every pool (no CBT licence, no NBD network): a full is the snapshot exported as one XVA
/// (<c>GET /export</c>), every chunk checksum verified while it streams into the repository; an incremental is
/// <b>cumulative</b>: per disk, a differencing VHD of the new snapshot against the full's snapshot
/// (<c>GET /export_raw_vdi?format=vhd&amp;base=</c>), so restoring any incremental needs only the full and that one file.
/// What later runs need is kept in the manifest's <see cref="BackupManifest.Properties"/> (see <see cref="XvaKeys"/>);
/// per-disk files carry the disk key, and no block data (DiskManifest) is written.
/// </summary>
public sealed class XvaStrategy : IBackupStrategy
{
    public const string XvaFileName = "export.xva";
    public const string XvaFileKind = "xva";
    public const string VhdFileKind = "vhd";

    public XvaStrategy() { }

    /// <summary>
    /// How many disks' VHD deltas an incremental streams at once (default 2). A full is one XVA stream whatever the
    /// number of disks.
    /// </summary>
    public int DiskConcurrency
    {
        get => _diskConcurrency;
        init => _diskConcurrency = value is >= 1 and <= 16 ? value : throw new ArgumentOutOfRangeException(nameof(DiskConcurrency), value, "Between 1 and 16 disks at once.");
    }
    private readonly int _diskConcurrency = 2;

    public BackupStrategy Kind => BackupStrategy.Xva;

    public static string DeltaFileName(string diskKey) => diskKey + ".vhd";

    public async Task<BackupPlan> PlanAsync(BackupRun run, CancellationToken ct)
    {
        if (run.Options.PurgeSnapshotData)
            throw new ArgumentException("The XVA strategy's incrementals are computed from the full's snapshot data, so it cannot be purged; -PurgeSnapshotData applies to the CBT strategy only.");
        if (run.Options.Type == BackupType.Full) return BackupPlan.Full();
        var full = run.History.LastOrDefault(b => b.Type == BackupType.Full);
        if (full is null) return BackupPlan.Full("there is no previous XVA full backup of this VM in the repository.");
        if (string.IsNullOrEmpty(full.SnapshotUuid) || !await ExistsAsync(run.Session, "VM", full.SnapshotUuid, ct).ConfigureAwait(false))
            return BackupPlan.Full($"the snapshot {full.SnapshotUuid} of the full backup {full.Id} is no longer on the host (cumulative incrementals are taken against it).");

        var fullDisks = XvaKeys.ReadDisks(full);
        foreach (var disk in run.Disks)
        {
            if (!fullDisks.TryGetValue(disk.Key, out var recorded))
                return BackupPlan.Full($"disk {disk.Device} ({disk.Key}) was added since the full backup {full.Id}.");
            if (recorded.VirtualSize != disk.Vdi.VirtualSize)
                return BackupPlan.Full($"disk {disk.Device} ({disk.Key}) was resized from {recorded.VirtualSize} to {disk.Vdi.VirtualSize} bytes since the full backup {full.Id}.");
            var baseVdi = await TryGetVdiAsync(run.Session, recorded.SnapshotVdiUuid, ct).ConfigureAwait(false);
            if (baseVdi is null)
                return BackupPlan.Full($"the snapshot disk {recorded.SnapshotVdiUuid} of the full backup {full.Id} (disk {disk.Device}) is no longer on the host.");
            if (baseVdi.Type == "cbt_metadata")
                return BackupPlan.Full($"the data of the snapshot disk {recorded.SnapshotVdiUuid} of the full backup {full.Id} was destroyed (-PurgeSnapshotData); a VHD delta needs it.");
        }
        var removed = fullDisks.Keys.Except(run.Disks.Select(d => d.Key)).ToList();
        if (removed.Count > 0)
            return BackupPlan.Full($"disk(s) {string.Join(", ", removed)} were removed since the full backup {full.Id}.");
        return BackupPlan.Incremental(full);
    }

    public Task BeforeSnapshotAsync(BackupRun run, BackupPlan plan, CancellationToken ct) => Task.CompletedTask;

    public async Task TransferAsync(BackupRun run, BackupPlan plan, SnapshotInfo snapshot, BackupWriter writer, CancellationToken ct)
    {
        var manifest = writer.Manifest;
        var fullDisks = plan.Type == BackupType.Incremental ? XvaKeys.ReadDisks(plan.Base!) : null;
        string? resized = null;
        foreach (var disk in run.Disks)
        {
            if (!snapshot.VdisBySource.TryGetValue(disk.Vdi.OpaqueRef, out var snapVdi))
                throw new InvalidOperationException($"The snapshot {snapshot.Uuid} has no copy of disk {disk.Device} ({disk.Key}); take a new backup.");
            // The snapshot's size is what was exported; the plan saw the live disk before the snapshot, so a resize in
            // between (a pre-snapshot script, another admin) shows only here.
            XvaKeys.WriteDisk(manifest, new XvaDiskInfo(disk.Key, disk.Device, disk.Vbd.UserDevice, snapVdi.VirtualSize, snapVdi.Uuid));
            if (fullDisks is not null && resized is null && fullDisks.TryGetValue(disk.Key, out var recorded) && recorded.VirtualSize != snapVdi.VirtualSize)
                resized = $"disk {disk.Device} ({disk.Key}) was resized from {recorded.VirtualSize} to {snapVdi.VirtualSize} bytes since the full backup {plan.Base!.Id}.";
        }
        if (resized is not null)
        {
            if (run.Options.NoFallback) throw new IncrementalNotPossibleException(run.Vm.NameLabel, resized);
            run.Observer.OnWarning($"'{run.Vm.NameLabel}': taking a full backup instead of an incremental: {resized}");
            manifest.Type = BackupType.Full;
            manifest.BaseId = null;
            manifest.FullReason = resized;
            plan = BackupPlan.Full(resized);
        }
        var transfer = new XapiHttpTransfer(run.Session);
        if (plan.Type == BackupType.Full) await TransferFullAsync(run, snapshot, writer, transfer, ct).ConfigureAwait(false);
        else await TransferIncrementalAsync(run, plan.Base!, snapshot, writer, transfer, ct).ConfigureAwait(false);
    }

    private static async Task TransferFullAsync(BackupRun run, SnapshotInfo snapshot, BackupWriter writer, XapiHttpTransfer transfer, CancellationToken ct)
    {
        string? compression = run.Options.UseCompression ? "zstd" : null;
        long total = run.Disks.Sum(d => d.Vdi.VirtualSize);
        run.Report("Requesting the XVA export", null, 0, total);
        await using var download = await transfer.ExportVmAsync(snapshot.Ref, compression, null, ct).ConfigureAwait(false);
        await using (var file = writer.CreateFile(XvaFileName, XvaFileKind))
        {
            var tee = new TeeReadStream(download.Content, file);
            XvaReadResult read;
            try
            {
                read = await XvaReader.ReadAsync(tee, $"the XVA export of snapshot {snapshot.Uuid}",
                    new XvaReadOptions { Progress = new SyncProgress(p => run.Report("Exporting XVA", null, p.BytesDone, total)) }, ct).ConfigureAwait(false);
            }
            catch (BackupFormatException ex)
            {
                throw new XvaBackupException($"The XVA export of '{run.Vm.NameLabel}' is damaged ({ex.Message}); nothing was committed. Run the backup again; if it repeats, check the host's storage.", ex);
            }
            await tee.DrainAsync(ct).ConfigureAwait(false);
            writer.Manifest.Properties[XvaKeys.Compression] = read.Compression.ToString().ToLowerInvariant();
            writer.Manifest.Properties[XvaKeys.XvaDisks] = read.Disks.Count.ToString(System.Globalization.CultureInfo.InvariantCulture);
            run.Report("Flushing the XVA", null, total, total);
        }
        run.Report("Completing the export", null, total, total);
        await download.CompleteAsync(ct).ConfigureAwait(false);
    }

    private async Task TransferIncrementalAsync(BackupRun run, BackupManifest full, SnapshotInfo snapshot, BackupWriter writer,
        XapiHttpTransfer transfer, CancellationToken ct)
    {
        var fullDisks = XvaKeys.ReadDisks(full);
        writer.Manifest.Properties[XvaKeys.Cumulative] = "true";
        // The files are created up front, in disk order, so the manifest lists them the same way whatever finishes first.
        // After a failure, files a transfer did not reach are closed and dropped with the writer's partial folder.
        var deltas = run.Disks.Select(disk => (Disk: disk, File: writer.CreateFile(DeltaFileName(disk.Key), VhdFileKind, disk.Key))).ToList();
        // Each disk's delta is its own export_raw_vdi request (xapi serves each from its own vhd-tool process), so up to
        // DiskConcurrency of them stream at once. The first failure cancels the others and is the one thrown.
        await Parallel.ForEachAsync(deltas, new ParallelOptions { MaxDegreeOfParallelism = DiskConcurrency, CancellationToken = ct },
            (d, token) => new ValueTask(TransferDeltaAsync(run, fullDisks[d.Disk.Key], d.Disk, snapshot, d.File, transfer, token))).ConfigureAwait(false);
    }

    private static async Task TransferDeltaAsync(BackupRun run, XvaDiskInfo baseDisk, BackupDisk disk, SnapshotInfo snapshot, Stream file,
        XapiHttpTransfer transfer, CancellationToken ct)
    {
        var snapVdi = snapshot.VdisBySource[disk.Vdi.OpaqueRef];
        run.Report($"Requesting the VHD delta of {disk.Device}", null, 0, 0);
        var baseVdiRef = await run.Session.GetByUuidAsync("VDI", baseDisk.SnapshotVdiUuid, ct).ConfigureAwait(false);
        await using var download = await transfer.ExportRawVdiAsync(snapVdi.OpaqueRef, "vhd", baseVdiRef, -1, null, ct).ConfigureAwait(false);
        await using (file)
        {
            var tee = new TeeReadStream(download.Content, file);
            try
            {
                await VhdStreamReader.ApplyAsync(tee, new DiscardBlockTarget(snapVdi.VirtualSize), $"the VHD delta of disk {disk.Device}",
                    null, new SyncProgress(p => run.Report("Exporting VHD delta", disk.Device, p.BytesDone, p.BytesTotal)), ct).ConfigureAwait(false);
            }
            catch (BackupFormatException ex)
            {
                throw new XvaBackupException($"The VHD delta of disk {disk.Device} of '{run.Vm.NameLabel}' is damaged ({ex.Message}); nothing was committed. Run the backup again.", ex);
            }
            await tee.DrainAsync(ct).ConfigureAwait(false);
            run.Report($"Flushing the VHD delta of {disk.Device}", null, 0, 0);
        }
        run.Report($"Completing the export of {disk.Device}", null, 0, 0);
        await download.CompleteAsync(ct).ConfigureAwait(false);
    }

    public IReadOnlyList<string> SnapshotsToRelease(BackupRun run, BackupPlan plan, BackupManifest committed)
    {
        var release = new List<string>();
        var last = run.History.LastOrDefault();
        // What was committed, not what was planned: a planned incremental may have become a full during the transfer.
        if (committed.Type == BackupType.Incremental)
        {
            // Cumulative: the next incremental is taken against the full again, so only the previous incremental's snapshot goes.
            if (last is { Type: BackupType.Incremental, SnapshotUuid: { } s }) release.Add(s);
        }
        else
        {
            // A new full replaces the base: the previous full's snapshot and the last incremental's are no longer needed.
            var previousFull = run.History.LastOrDefault(b => b.Type == BackupType.Full);
            if (previousFull?.SnapshotUuid is { } f) release.Add(f);
            if (last is { Type: BackupType.Incremental, SnapshotUuid: { } s }) release.Add(s);
        }
        return release.Where(s => s != committed.SnapshotUuid).Distinct().ToList();
    }

    private static async Task<bool> ExistsAsync(XapiSession session, string cls, string uuid, CancellationToken ct)
    {
        try
        {
            await session.GetByUuidAsync(cls, uuid, ct).ConfigureAwait(false);
            return true;
        }
        catch (XapiException ex) when (ex.ErrorCode is "UUID_INVALID" or "HANDLE_INVALID") { return false; }
    }

    private static async Task<VdiRecord?> TryGetVdiAsync(XapiSession session, string uuid, CancellationToken ct)
    {
        try { return await session.GetRecordByUuidAsync<VdiRecord>(uuid, ct).ConfigureAwait(false); }
        catch (XapiException ex) when (ex.ErrorCode is "UUID_INVALID" or "HANDLE_INVALID") { return null; }
    }

    /// <summary>Reports on the calling thread (Progress&lt;T&gt; would post to a captured context).</summary>
    private sealed class SyncProgress(Action<TransferProgress> report) : IProgress<TransferProgress>
    {
        public void Report(TransferProgress value) => report(value);
    }
}

/// <summary>The XVA export or a VHD delta failed validation while it streamed; the backup was not committed.</summary>
public sealed class XvaBackupException(string message, Exception inner) : Exception(message, inner);
