using VProtect.Core.Backup;
using VProtect.Core.Backup.Xva;
using VProtect.Core.Formats;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.Formats.Xva;
using VProtect.Core.Repository;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;

namespace VProtect.Core.Restore.Xva;

/// <summary>
/// Restores an XVA-strategy backup: verifies every stored file (SHA-256, XVA chunk checksums, VHD structure) before the
/// pool is touched, imports the full's XVA (<c>PUT /import</c>; it arrives as a template, since an exported snapshot
/// keeps is_a_template), turns it back into a VM with the right name, then applies the chosen incremental alone
/// (cumulative: it holds every change since the full) with <c>PUT /import_raw_vdi?format=vhd</c> per disk.
/// On any failure the imported VM and its disks are destroyed.
/// </summary>
public sealed class XvaRestore : IRestoreStrategy
{
    public XvaRestore() { }

    public BackupStrategy Kind => BackupStrategy.Xva;

    public async Task<RestoreResult> RestoreAsync(RestoreRun run, CancellationToken ct)
    {
        if (run.Options.Disks is { Count: > 0 })
            throw new NotSupportedException("An XVA-strategy backup restores the whole VM; restoring single disks needs a CBT-strategy backup. Drop -Disk, or restore the VM and detach the disks you need.");
        var full = run.Chain.FirstOrDefault(b => b.Type == BackupType.Full)
            ?? throw new RepositoryException($"The chain of backup {run.Point.Id} has no full backup; it cannot be restored.");
        var deltas = run.Point.Type == BackupType.Incremental ? DeltaFiles(run.Point) : new List<FileManifest>();

        // Everything is checked before anything is imported, so a damaged repository never leaves a half-restored VM.
        var xvaFile = full.Files.FirstOrDefault(f => f.Kind == XvaStrategy.XvaFileKind)
            ?? throw new RepositoryException($"Backup {full.Id} holds no XVA file; it is not a full XVA-strategy backup.");
        string xvaPath = run.Repository.GetFilePath(full, xvaFile);
        run.Observer.OnProgress(new BackupProgress(full.VmUuid, full.VmName, "Verifying XVA", null, 0, xvaFile.Length));
        await XvaBackupVerifier.VerifyXvaAsync(xvaPath, xvaFile, ct).ConfigureAwait(false);
        var fullDisks = XvaKeys.ReadDisks(full);
        foreach (var delta in deltas)
        {
            if (delta.DiskKey is null || !fullDisks.ContainsKey(delta.DiskKey))
                throw new RepositoryException($"The delta {delta.Name} of backup {run.Point.Id} names no disk of the full backup {full.Id}; the backup is inconsistent.");
            await XvaBackupVerifier.VerifyVhdAsync(run.Repository.GetFilePath(run.Point, delta), delta, fullDisks[delta.DiskKey].VirtualSize, ct).ConfigureAwait(false);
        }

        var session = run.Session;
        string? srRef = await ResolveSrAsync(session, run.Options.StorageRepository, ct).ConfigureAwait(false);
        var transfer = new XapiHttpTransfer(session);
        string? vmRef = null;
        try
        {
            run.Observer.OnProgress(new BackupProgress(full.VmUuid, full.VmName, "Importing XVA", null, 0, xvaFile.Length));
            IReadOnlyList<string> imported;
            await using (var xva = new FileStream(xvaPath, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan))
                imported = await transfer.ImportVmAsync(xva, xvaFile.Length, srRef, ct: ct).ConfigureAwait(false);
            if (imported.Count != 1)
            {
                foreach (var extra in imported) await DestroyVmQuietlyAsync(session, extra, run.Observer).ConfigureAwait(false);
                throw new InvalidOperationException($"The import of {xvaFile.Name} created {imported.Count} VMs instead of one; they were removed. Check the XVA with Test-VMBackup.");
            }
            vmRef = imported[0];

            string name = string.IsNullOrEmpty(run.Options.Name) ? run.Point.VmName : run.Options.Name;
            await session.CallAsync("VM.set_is_a_template", new object?[] { vmRef, false }, ct).ConfigureAwait(false);
            await session.CallAsync("VM.set_name_label", new object?[] { vmRef, name }, ct).ConfigureAwait(false);

            var vdisByUserDevice = await DiskVdisAsync(session, vmRef, ct).ConfigureAwait(false);
            var restored = new List<RestoredDisk>();
            var bytesByKey = new Dictionary<string, long>();
            foreach (var delta in deltas)
            {
                var info = fullDisks[delta.DiskKey!];
                if (!vdisByUserDevice.TryGetValue(info.UserDevice, out var target))
                    throw new RepositoryException($"The imported VM has no disk at position {info.UserDevice} (disk {info.Device}); the XVA does not match its manifest.");
                run.Observer.OnProgress(new BackupProgress(full.VmUuid, full.VmName, "Applying VHD delta", info.Device, 0, delta.Length));
                await using var vhd = new FileStream(run.Repository.GetFilePath(run.Point, delta), FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);
                await transfer.ImportRawVdiAsync(target.Vdi.OpaqueRef, vhd, delta.Length, "vhd", null, ct).ConfigureAwait(false);
                bytesByKey[info.Key] = delta.Length;
            }
            foreach (var info in fullDisks.Values.OrderBy(d => d.UserDevice, StringComparer.Ordinal))
                if (vdisByUserDevice.TryGetValue(info.UserDevice, out var d))
                    restored.Add(new RestoredDisk(info.Key, info.Device, d.Vdi.Uuid, bytesByKey.GetValueOrDefault(info.Key, d.Vdi.VirtualSize)));

            if (run.Options.PowerOn)
            {
                run.Observer.OnProgress(new BackupProgress(full.VmUuid, full.VmName, "Starting VM", null, 0, 0));
                await session.CallAsyncTaskAsync("Async.VM.start", new object?[] { vmRef, false, false }, null, ct).ConfigureAwait(false);
            }
            var vm = await session.GetRecordAsync<VmRecord>(vmRef, ct).ConfigureAwait(false);
            return new RestoreResult(vm.Uuid, vm.NameLabel, restored, NewMacAddresses: false, TimeSpan.Zero);
        }
        catch
        {
            if (vmRef is not null) await DestroyVmQuietlyAsync(session, vmRef, run.Observer).ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>The per-disk VHD files of a cumulative incremental.</summary>
    private static List<FileManifest> DeltaFiles(BackupManifest point)
    {
        var files = point.Files.Where(f => f.Kind == XvaStrategy.VhdFileKind).ToList();
        if (files.Count == 0) throw new RepositoryException($"The incremental backup {point.Id} holds no VHD delta; it cannot be restored.");
        return files;
    }

    private static async Task<Dictionary<string, (VbdRecord Vbd, VdiRecord Vdi)>> DiskVdisAsync(XapiSession session, string vmRef, CancellationToken ct)
    {
        var vm = await session.GetRecordAsync<VmRecord>(vmRef, ct).ConfigureAwait(false);
        var result = new Dictionary<string, (VbdRecord, VdiRecord)>(StringComparer.Ordinal);
        foreach (var vbdRef in vm.VBDs)
        {
            var vbd = await session.GetRecordAsync<VbdRecord>(vbdRef, ct).ConfigureAwait(false);
            if (vbd.Type != "Disk" || XapiValue.IsNullRef(vbd.VDI)) continue;
            result[vbd.UserDevice] = (vbd, await session.GetRecordAsync<VdiRecord>(vbd.VDI, ct).ConfigureAwait(false));
        }
        return result;
    }

    /// <summary>The SR ref for the import (by uuid, then by name), or null to let the host use the pool's default SR.</summary>
    internal static async Task<string?> ResolveSrAsync(XapiSession session, string? sr, CancellationToken ct)
    {
        if (string.IsNullOrEmpty(sr)) return null;
        if (Guid.TryParse(sr, out _))
        {
            try { return await session.GetByUuidAsync("SR", sr, ct).ConfigureAwait(false); }
            catch (XapiException ex) when (ex.ErrorCode is "UUID_INVALID" or "HANDLE_INVALID") { }
        }
        var byName = await session.GetByNameLabelAsync("SR", sr, ct).ConfigureAwait(false);
        return byName.Count switch
        {
            1 => byName[0],
            0 => throw new ArgumentException($"There is no SR '{sr}' in the pool; give an SR uuid or name (Get-XenPoolSR lists them)."),
            _ => throw new ArgumentException($"{byName.Count} SRs are named '{sr}'; give the SR's uuid instead."),
        };
    }

    private static async Task DestroyVmQuietlyAsync(XapiSession session, string vmRef, IBackupObserver observer)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        try
        {
            var vm = await session.GetRecordAsync<VmRecord>(vmRef, cts.Token).ConfigureAwait(false);
            foreach (var vbdRef in vm.VBDs)
            {
                var vbd = await session.GetRecordAsync<VbdRecord>(vbdRef, cts.Token).ConfigureAwait(false);
                if (vbd.Type != "Disk" || XapiValue.IsNullRef(vbd.VDI)) continue;
                try { await session.CallAsync("VDI.destroy", new object?[] { vbd.VDI }, cts.Token).ConfigureAwait(false); }
                catch (XapiException ex) { observer.OnWarning($"Could not remove the disk {vbd.VDI} of the half-restored VM: {ex.Message}. Remove it by hand."); }
            }
            await session.CallAsync("VM.destroy", new object?[] { vmRef }, cts.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is XapiException or XapiConnectionException or OperationCanceledException)
        {
            observer.OnWarning($"Could not remove the half-restored VM {vmRef}: {ex.Message}. Remove it by hand (its name is the restore name).");
        }
    }
}

/// <summary>Checks stored XVA-strategy files without the host: length, SHA-256, and the format (chunk checksums, VHD structure).</summary>
public static class XvaBackupVerifier
{
    /// <summary>Reads the XVA once: SHA-256 against the manifest and every chunk checksum. Throws <see cref="BackupFormatException"/>.</summary>
    public static async Task<XvaReadResult> VerifyXvaAsync(string path, FileManifest entry, CancellationToken ct)
    {
        CheckLength(path, entry);
        await using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);
        using var tee = new TeeReadStream(file, null, computeSha256: true);
        var result = await XvaReader.VerifyAsync(tee, path, ct).ConfigureAwait(false);
        await tee.DrainAsync(ct).ConfigureAwait(false);
        CheckHash(path, entry, tee.FinishSha256());
        return result;
    }

    /// <summary>Reads a VHD delta once: SHA-256 against the manifest and its structure (footer, header, BAT, blocks).</summary>
    public static async Task VerifyVhdAsync(string path, FileManifest entry, long diskSize, CancellationToken ct)
    {
        CheckLength(path, entry);
        await using var file = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 16, FileOptions.Asynchronous | FileOptions.SequentialScan);
        using var tee = new TeeReadStream(file, null, computeSha256: true);
        await VhdStreamReader.ApplyAsync(tee, new DiscardBlockTarget(diskSize), path, null, null, ct).ConfigureAwait(false);
        await tee.DrainAsync(ct).ConfigureAwait(false);
        CheckHash(path, entry, tee.FinishSha256());
    }

    private static void CheckLength(string path, FileManifest entry)
    {
        var info = new FileInfo(path);
        if (!info.Exists) throw new BackupFormatException(path, 0, "the file is missing from the repository; the backup cannot be restored.");
        if (info.Length != entry.Length)
            throw new BackupFormatException(path, Math.Min(info.Length, entry.Length), $"the file has {info.Length} bytes but the manifest recorded {entry.Length}; it was truncated or replaced.");
    }

    private static void CheckHash(string path, FileManifest entry, string actual)
    {
        if (!string.Equals(actual, entry.Sha256, StringComparison.OrdinalIgnoreCase))
            throw new BackupFormatException(path, 0, $"SHA-256 {actual} differs from the {entry.Sha256} recorded at backup time; the file is damaged. Restore another backup.");
    }
}
