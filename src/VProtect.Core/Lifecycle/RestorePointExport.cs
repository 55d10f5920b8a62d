using System.Buffers;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.IO;
using VProtect.Core.Repository;
using VProtect.Core.Restore.Xva;

namespace VProtect.Core.Lifecycle;

public enum ExportFormat { Raw, Vhd, Xva }

/// <summary>One file written by <see cref="RestorePointExport"/>.</summary>
public sealed record ExportedFile(string DiskKey, string Path, ExportFormat Format, long VirtualSize, long FileLength);

/// <summary>
/// Writes a restore point as standalone files that need no repository: a sparse raw image or a dynamic VHD per
/// disk (qemu-img converts either onward), or for an XVA-strategy full the XVA as exported. The disks of an
/// XVA-strategy point (full or cumulative incremental) are read through <see cref="XvaRestorePointSource"/>.
/// </summary>
public static class RestorePointExport
{
    private const int CopyChunk = 4 << 20;

    public static async Task<IReadOnlyList<ExportedFile>> ExportAsync(BackupRepository repository, BackupManifest point, string destination,
        ExportFormat format, IReadOnlyCollection<string>? diskKeys, IProgress<TransferProgress>? progress, CancellationToken ct)
    {
        Directory.CreateDirectory(destination);
        var result = new List<ExportedFile>();
        if (point.Strategy == BackupStrategy.Xva && format == ExportFormat.Xva)
        {
            if (point.Type != BackupType.Full)
                throw new RepositoryException($"Backup {point.Id} is an XVA-strategy incremental; only a full is stored as an XVA. Export it as Raw or Vhd (its disks as they were at that point), or restore it with Restore-VMBackup.");
            var xva = point.Files.Single(f => f.Kind == "xva");
            string target = Path.Combine(destination, $"{point.VmName}-{point.Id}.xva".Replace(Path.DirectorySeparatorChar, '_'));
            await CopyFileAsync(repository.GetFilePath(point, xva), target, progress, ct).ConfigureAwait(false);
            result.Add(new ExportedFile("", target, ExportFormat.Xva, 0, new FileInfo(target).Length));
            return result;
        }
        if (format == ExportFormat.Xva)
            throw new RepositoryException($"Backup {point.Id} is a block (CBT-strategy) backup; export it as Raw or Vhd (qemu-img converts those onward).");
        if (point.Strategy == BackupStrategy.Xva)
        {
            // One pass over the full's XVA indexes every wanted disk; each is then written like a block backup's disk.
            var sources = await XvaRestorePointSource.OpenAsync(repository, point, diskKeys, null, ct).ConfigureAwait(false);
            try
            {
                foreach (var (key, source) in sources)
                    result.Add(await WriteDiskAsync(source, key, destination, format, progress, ct).ConfigureAwait(false));
            }
            finally
            {
                foreach (var source in sources.Values) source.Dispose();
            }
            return result;
        }
        var disks = diskKeys is { Count: > 0 } ? point.Disks.Where(d => diskKeys.Contains(d.Key)).ToList() : point.Disks;
        foreach (var disk in disks)
        {
            using var source = repository.OpenDisk(point, disk.Key);
            result.Add(await WriteDiskAsync(source, disk.Key, destination, format, progress, ct).ConfigureAwait(false));
        }
        return result;
    }

    private static async Task<ExportedFile> WriteDiskAsync(IBlockSource source, string diskKey, string destination, ExportFormat format,
        IProgress<TransferProgress>? progress, CancellationToken ct)
    {
        string name = $"{diskKey}.{(format == ExportFormat.Raw ? "raw" : "vhd")}";
        string target = Path.Combine(destination, name);
        string temp = target + ".partial";
        using (var handle = File.OpenHandle(temp, FileMode.CreateNew, FileAccess.ReadWrite, FileShare.None, FileOptions.Asynchronous))
        {
            if (format == ExportFormat.Raw) await WriteRawAsync(source, handle, progress, ct).ConfigureAwait(false);
            else
            {
                var plan = await VhdBlockPlan.FromSourceAsync(source, cancellationToken: ct).ConfigureAwait(false);
                await VhdStreamWriter.WriteFileAsync(source, plan, handle, null, 2, progress, ct).ConfigureAwait(false);
            }
            RandomAccess.FlushToDisk(handle);
        }
        File.Move(temp, target, overwrite: false);
        return new ExportedFile(diskKey, target, format, source.Length, new FileInfo(target).Length);
    }

    /// <summary>A sparse raw image: the file gets the disk's length and only allocated ranges are written.</summary>
    public static async Task WriteRawAsync(IBlockSource source, Microsoft.Win32.SafeHandles.SafeFileHandle handle, IProgress<TransferProgress>? progress, CancellationToken ct)
    {
        RandomAccess.SetLength(handle, source.Length);
        byte[] buffer = ArrayPool<byte>.Shared.Rent(CopyChunk);
        long done = 0;
        try
        {
            await foreach (var extent in source.GetAllocatedExtentsAsync(0, source.Length, ct).ConfigureAwait(false))
            {
                for (long at = extent.Offset; at < extent.End;)
                {
                    int n = (int)Math.Min(CopyChunk, extent.End - at);
                    await source.ReadAsync(at, buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                    await RandomAccess.WriteAsync(handle, buffer.AsMemory(0, n), at, ct).ConfigureAwait(false);
                    at += n; done += n;
                    progress?.Report(new TransferProgress(done, source.Length));
                }
            }
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }

    private static async Task CopyFileAsync(string from, string to, IProgress<TransferProgress>? progress, CancellationToken ct)
    {
        string temp = to + ".partial";
        long total = new FileInfo(from).Length, done = 0;
        await using (var input = new FileStream(from, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.Asynchronous | FileOptions.SequentialScan))
        await using (var output = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20, FileOptions.Asynchronous))
        {
            byte[] buffer = ArrayPool<byte>.Shared.Rent(CopyChunk);
            try
            {
                int n;
                while ((n = await input.ReadAsync(buffer.AsMemory(0, CopyChunk), ct).ConfigureAwait(false)) > 0)
                {
                    await output.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                    done += n;
                    progress?.Report(new TransferProgress(done, total));
                }
            }
            finally { ArrayPool<byte>.Shared.Return(buffer); }
            output.Flush(flushToDisk: true);
        }
        File.Move(temp, to, overwrite: false);
    }
}
