using System.Buffers;
using System.Security.Cryptography;
using VProtect.Core.Backup;
using VProtect.Core.IO;
using VProtect.Core.Repository;
using VProtect.Core.Restore;
using VProtect.Core.Restore.Cbt;
using VProtect.Core.Restore.Xva;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;

namespace VProtect.Core.Lifecycle;

/// <summary>
/// The health check: restores a restore point into the pool as a new VM (the restore engine), reads every restored
/// disk back over /export_raw_vdi and compares its SHA-256 with the restore point read from the repository (CBT: the
/// block chain; XVA: the full's XVA overlaid with the incremental's VHD delta, <see cref="XvaRestorePointSource"/>),
/// then removes the test VM and its disks whatever happened.
/// </summary>
public static class TestRestore
{
    public static async Task<IReadOnlyList<VerificationProblem>> RunAsync(XapiSession session, BackupRepository repository, BackupManifest point,
        IBackupObserver observer, CancellationToken ct)
    {
        var problems = new List<VerificationProblem>();
        var engine = new RestoreEngine(new CbtRestore(), new XvaRestore());
        RestoreResult? result = null;
        try
        {
            result = await engine.RestoreAsync(session, repository, point,
                new RestoreOptions { Name = $"vprotect-test-restore {point.VmName} {point.Id}", PowerOn = false }, observer, ct).ConfigureAwait(false);
            var transfer = new XapiHttpTransfer(session);
            IReadOnlyDictionary<string, XvaRestorePointSource>? xvaDisks = null;
            try
            {
                if (point.Strategy == BackupStrategy.Xva)
                {
                    // One pass over the stored XVA indexes every restored disk (and checks its chunks once more).
                    xvaDisks = await XvaRestorePointSource.OpenAsync(repository, point, result.Disks.Select(d => d.SourceKey).ToList(), null, ct).ConfigureAwait(false);
                }
                foreach (var disk in result.Disks)
                {
                    string expected;
                    if (xvaDisks is not null) expected = await HashAsync(xvaDisks[disk.SourceKey], ct).ConfigureAwait(false);
                    else
                        using (var source = repository.OpenDisk(point, disk.SourceKey))
                            expected = await HashAsync(source, ct).ConfigureAwait(false);
                    string vdiRef = await session.GetByUuidAsync("VDI", disk.VdiUuid, ct).ConfigureAwait(false);
                    string actual;
                    await using (var download = await transfer.ExportRawVdiAsync(vdiRef, "raw", ct: ct).ConfigureAwait(false))
                    {
                        actual = Convert.ToHexString(await SHA256.HashDataAsync(download.Content, ct).ConfigureAwait(false)).ToLowerInvariant();
                        await download.CompleteAsync(ct).ConfigureAwait(false);
                    }
                    if (actual != expected)
                        problems.Add(new VerificationProblem(point.Id, $"VDI {disk.VdiUuid}", 0,
                            $"test restore: disk {disk.SourceKey} reads back with SHA-256 {actual}, the backup holds {expected}."));
                    else
                        observer.OnVerbose($"Disk {disk.SourceKey} restored and read back equal to the backup (SHA-256 {expected}).");
                }
            }
            finally
            {
                if (xvaDisks is not null) foreach (var d in xvaDisks.Values) d.Dispose();
            }
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            problems.Add(new VerificationProblem(point.Id, repository.GetBackupFolder(point), 0, $"test restore failed: {ex.Message}"));
        }
        finally
        {
            if (result is not null) await RemoveQuietlyAsync(session, result, observer).ConfigureAwait(false);
        }
        return problems;
    }

    private static async Task<string> HashAsync(IBlockSource source, CancellationToken ct)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(4 << 20);
        try
        {
            for (long at = 0; at < source.Length;)
            {
                int n = (int)Math.Min(4 << 20, source.Length - at);
                await source.ReadAsync(at, buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                sha.AppendData(buffer, 0, n);
                at += n;
            }
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
        return Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant();
    }

    /// <summary>Removes the test VM and every disk the restore created; never throws, warns about what stays.</summary>
    private static async Task RemoveQuietlyAsync(XapiSession session, RestoreResult result, IBackupObserver observer)
    {
        using var cts = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        var ct = cts.Token;
        try
        {
            if (result.VmUuid is not null)
            {
                string vmRef = await session.GetByUuidAsync("VM", result.VmUuid, ct).ConfigureAwait(false);
                await session.CallAsyncTaskAsync("VM.destroy", new object?[] { vmRef }, null, ct).ConfigureAwait(false);
            }
            foreach (var d in result.Disks)
            {
                try
                {
                    string vdiRef = await session.GetByUuidAsync("VDI", d.VdiUuid, ct).ConfigureAwait(false);
                    await session.CallAsyncTaskAsync("VDI.destroy", new object?[] { vdiRef }, null, ct).ConfigureAwait(false);
                }
                catch (XapiException ex) when (ex.ErrorCode is "UUID_INVALID" or "HANDLE_INVALID") { }
            }
            observer.OnVerbose($"Test VM {result.VmUuid} and its disks removed.");
        }
        catch (Exception ex)
        {
            observer.OnWarning($"Could not remove the test-restore VM {result.VmUuid} ({ex.Message}); remove it and its disks by hand.");
        }
    }
}
