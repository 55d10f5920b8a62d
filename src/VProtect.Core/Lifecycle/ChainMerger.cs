using System.Buffers;
using System.IO.Hashing;
using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;
using VProtect.Core.Formats;
using VProtect.Core.Repository;
using ZstdSharp;

namespace VProtect.Core.Lifecycle;

/// <summary>
/// Folds expired backups of a CBT chain into the kept restore point that depends on them, in place and atomically:
/// the target's folder gets a new data file and index per disk, then its backup.json is replaced with one rename.
/// Before that rename the old manifest (and files) hold; after it the new ones do. Nothing is rewritten that need not
/// be: the oldest absorbed backup's data file (usually the full's) is hard-linked, its surviving records are
/// referenced where they are, and only the surviving records of the other layers are appended (compressed bytes
/// copied as they are; a record cut by a newer one is re-encoded). Dead bytes stay in the linked file.
/// </summary>
public static class ChainMerger
{
    internal const string MergedProperty = "vprotect:merged";

    /// <summary>Merges <paramref name="absorbed"/> (oldest first, directly below <paramref name="target"/>) into it. Needs the chain lock.</summary>
    public static async Task<BackupManifest> MergeAsync(BackupRepository repository, ChainLock chainLock, BackupManifest target,
        IReadOnlyList<BackupManifest> absorbed, Func<string, Task>? checkpoint, CancellationToken ct)
    {
        if (absorbed.Count == 0) return target;
        if (target.Strategy != BackupStrategy.Cbt) throw new ArgumentException("Only block (CBT) backups are merged.", nameof(target));
        if (target.BaseId != absorbed[^1].Id) throw new ArgumentException($"Backup {target.Id} does not depend on {absorbed[^1].Id}.", nameof(absorbed));
        for (int i = 1; i < absorbed.Count; i++)
            if (absorbed[i].BaseId != absorbed[i - 1].Id) throw new ArgumentException("The absorbed backups are not a contiguous run of the chain.", nameof(absorbed));
        if (target.VmUuid != chainLock.VmUuid) throw new ArgumentException("The chain lock is for another VM.", nameof(chainLock));

        string folder = repository.GetBackupFolder(target);
        string generation = Convert.ToHexString(RandomNumberGenerator.GetBytes(4)).ToLowerInvariant();
        var layers = absorbed.Append(target).ToList();
        var merged = Clone(target);
        merged.BaseId = absorbed[0].BaseId;
        merged.Type = merged.BaseId is null ? BackupType.Full : BackupType.Incremental;
        if (merged.Type == BackupType.Full)
            merged.FullReason = $"synthetic full: {string.Join(", ", absorbed.Select(a => a.Id))} rolled forward into {target.Id} by retention.";
        merged.Properties[MergedProperty] = string.Join(",", (target.Properties.GetValueOrDefault(MergedProperty) is { Length: > 0 } m ? m.Split(',') : Array.Empty<string>()).Concat(absorbed.Select(a => a.Id)));
        merged.Disks = new List<DiskManifest>();
        foreach (var disk in target.Disks)
        {
            ct.ThrowIfCancellationRequested();
            merged.Disks.Add(await MergeDiskAsync(repository, folder, generation, layers, disk, ct).ConfigureAwait(false));
            if (checkpoint is not null) await checkpoint($"disk {disk.Key} written").ConfigureAwait(false);
        }
        // The commit point: one rename replaces the manifest.
        string manifestPath = Path.Combine(folder, BackupRepository.ManifestFile);
        string temp = manifestPath + ".merge-" + generation;
        await using (var fs = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None))
        {
            await JsonSerializer.SerializeAsync(fs, merged, BackupManifest.Json, ct).ConfigureAwait(false);
            fs.Flush(flushToDisk: true);
        }
        if (checkpoint is not null) await checkpoint("manifest written").ConfigureAwait(false);
        ct.ThrowIfCancellationRequested();
        File.Move(temp, manifestPath, overwrite: true);
        RemoveUnreferencedFiles(folder, merged);
        return merged;
    }

    /// <summary>
    /// Deletes what an interrupted merge left in a backup folder: files under disks/ the manifest does not name and
    /// manifest temporaries. Safe at any time under the chain lock.
    /// </summary>
    public static void RemoveUnreferencedFiles(string folder, BackupManifest manifest)
    {
        var referenced = new HashSet<string>(manifest.Disks.SelectMany(d => new[] { d.DataFile, d.IndexFile })
            .Select(f => Path.GetFullPath(Path.Combine(folder, f))), StringComparer.Ordinal);
        string disks = Path.Combine(folder, "disks");
        if (Directory.Exists(disks))
            foreach (var f in Directory.EnumerateFiles(disks))
                if (!referenced.Contains(Path.GetFullPath(f))) File.Delete(f);
        foreach (var f in Directory.EnumerateFiles(folder, BackupRepository.ManifestFile + ".merge-*")) File.Delete(f);
    }

    private static BackupManifest Clone(BackupManifest m) =>
        JsonSerializer.Deserialize<BackupManifest>(JsonSerializer.Serialize(m, BackupManifest.Json), BackupManifest.Json)!;

    private sealed record LayerFiles(string DataPath, BlockRecord[] Records);

    private static async Task<DiskManifest> MergeDiskAsync(BackupRepository repository, string folder, string generation,
        List<BackupManifest> layers, DiskManifest targetDisk, CancellationToken ct)
    {
        var files = new List<LayerFiles?>();
        foreach (var b in layers)
        {
            var d = b.Disks.FirstOrDefault(x => x.Key == targetDisk.Key);
            if (d is null) { files.Add(null); continue; }
            string bf = repository.GetBackupFolder(b);
            string data = Path.Combine(bf, d.DataFile);
            long dataLength = File.Exists(data) ? new FileInfo(data).Length : throw new BackupFormatException(data, 0, "the data file is missing; the merge cannot go on. Run Test-VMBackup.");
            files.Add(new LayerFiles(data, BlockIndex.Read(Path.Combine(bf, d.IndexFile), d.VirtualSize, dataLength)));
        }
        int baseLayer = files.FindIndex(f => f is not null);
        var result = new DiskManifest
        {
            Key = targetDisk.Key, Device = targetDisk.Device, Name = targetDisk.Name, VirtualSize = targetDisk.VirtualSize,
            DataFile = $"disks/{targetDisk.Key}.{generation}.data", IndexFile = $"disks/{targetDisk.Key}.{generation}.index",
            Properties = new Dictionary<string, string>(targetDisk.Properties),
        };
        string newData = Path.Combine(folder, result.DataFile), newIndex = Path.Combine(folder, result.IndexFile);
        Directory.CreateDirectory(Path.GetDirectoryName(newData)!);
        // The oldest layer's data stays where it is: link it (or copy it where links are not possible).
        if (!HardLink.TryCreate(files[baseLayer]!.DataPath, newData))
            File.Copy(files[baseLayer]!.DataPath, newData);

        var entries = new List<BlockRecord>();
        long dataBytes = 0;
        var covered = new List<(long Start, long End)>(); // disk ranges newer layers already provide, sorted, disjoint
        using (var output = File.OpenHandle(newData, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, FileOptions.Asynchronous)) // the oldest layer reads the same inode
        {
            long appendAt = RandomAccess.GetLength(output);
            using var compressor = new Compressor(1);
            using var decompressor = new Decompressor();
            for (int l = files.Count - 1; l >= 0; l--)
            {
                var layer = files[l];
                if (layer is null) continue;
                using var input = File.OpenHandle(layer.DataPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, FileOptions.Asynchronous);
                var added = new List<(long, long)>();
                foreach (var r in layer.Records)
                {
                    ct.ThrowIfCancellationRequested();
                    var pieces = Uncovered(covered, r.DiskOffset, r.DiskEnd);
                    added.Add((r.DiskOffset, r.DiskEnd));
                    if (pieces.Count == 0) continue;
                    if (r.IsZero)
                    {
                        foreach (var (s, e) in pieces) entries.Add(new BlockRecord(s, (int)(e - s), BlockRecordFlags.Zero, 0, 0, default));
                        continue;
                    }
                    if (pieces.Count == 1 && pieces[0].Start == r.DiskOffset && pieces[0].End == r.DiskEnd)
                    {
                        dataBytes += r.Length;
                        if (l == baseLayer) { entries.Add(r); continue; } // already in the linked file, same offset
                        byte[] stored = ArrayPool<byte>.Shared.Rent(r.StoredLength);
                        try
                        {
                            await ReadExactAsync(input, layer.DataPath, stored.AsMemory(0, r.StoredLength), r.FileOffset, ct).ConfigureAwait(false);
                            await RandomAccess.WriteAsync(output, stored.AsMemory(0, r.StoredLength), appendAt, ct).ConfigureAwait(false);
                        }
                        finally { ArrayPool<byte>.Shared.Return(stored); }
                        entries.Add(r with { FileOffset = appendAt });
                        appendAt += r.StoredLength;
                        continue;
                    }
                    // Partly overwritten by a newer layer: decode once, verify, and store the surviving pieces anew.
                    byte[] plain = await DecodeAsync(input, layer.DataPath, r, decompressor, ct).ConfigureAwait(false);
                    foreach (var (s, e) in pieces)
                    {
                        var slice = plain.AsMemory((int)(s - r.DiskOffset), (int)(e - s));
                        dataBytes += slice.Length;
                        byte[] buffer = ArrayPool<byte>.Shared.Rent(Compressor.GetCompressBound(slice.Length));
                        try
                        {
                            int n = compressor.Wrap(slice.Span, buffer);
                            var (flags, bytes) = n < slice.Length ? (BlockRecordFlags.None, buffer.AsMemory(0, n)) : (BlockRecordFlags.Raw, slice);
                            await RandomAccess.WriteAsync(output, bytes, appendAt, ct).ConfigureAwait(false);
                            entries.Add(new BlockRecord(s, slice.Length, flags, appendAt, bytes.Length, XxHash128.HashToUInt128(slice.Span)));
                            appendAt += bytes.Length;
                        }
                        finally { ArrayPool<byte>.Shared.Return(buffer); }
                    }
                }
                covered = Union(covered, added);
            }
            RandomAccess.FlushToDisk(output);
            result.StoredBytes = appendAt;
        }
        entries.Sort((a, b) => a.DiskOffset.CompareTo(b.DiskOffset));
        await WriteIndexAsync(newIndex, entries, ct).ConfigureAwait(false);
        result.RecordCount = entries.Count;
        result.DataBytes = dataBytes;
        result.StoredBytes += new FileInfo(newIndex).Length;
        return result;
    }

    private static async Task WriteIndexAsync(string path, List<BlockRecord> entries, CancellationToken ct)
    {
        var hash = new XxHash64();
        await using var fs = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous);
        var header = new byte[BlockIndex.HeaderSize];
        BlockIndex.WriteHeader(header);
        hash.Append(header);
        await fs.WriteAsync(header, ct).ConfigureAwait(false);
        var entry = new byte[BlockIndex.EntrySize];
        foreach (var e in entries)
        {
            BlockIndex.WriteEntry(entry, e);
            hash.Append(entry);
            await fs.WriteAsync(entry, ct).ConfigureAwait(false);
        }
        var trailer = new byte[BlockIndex.TrailerSize];
        BlockIndex.WriteTrailer(trailer, entries.Count, hash.GetCurrentHashAsUInt64());
        await fs.WriteAsync(trailer, ct).ConfigureAwait(false);
        await fs.FlushAsync(ct).ConfigureAwait(false);
        fs.Flush(flushToDisk: true);
    }

    private static async Task<byte[]> DecodeAsync(SafeFileHandle input, string path, BlockRecord r, Decompressor decompressor, CancellationToken ct)
    {
        byte[] stored = ArrayPool<byte>.Shared.Rent(r.StoredLength);
        try
        {
            await ReadExactAsync(input, path, stored.AsMemory(0, r.StoredLength), r.FileOffset, ct).ConfigureAwait(false);
            var plain = new byte[r.Length];
            if ((r.Flags & BlockRecordFlags.Raw) != 0) stored.AsSpan(0, r.Length).CopyTo(plain);
            else if (decompressor.Unwrap(stored.AsSpan(0, r.StoredLength), plain) != r.Length)
                throw new BackupFormatException(path, r.FileOffset, $"the record for disk range {r.DiskOffset}+{r.Length} does not decompress to its length.");
            if (XxHash128.HashToUInt128(plain) != r.Hash)
                throw new BackupFormatException(path, r.FileOffset, $"the record for disk range {r.DiskOffset}+{r.Length} fails its hash check; the merge stops so the damage is not spread. Run Test-VMBackup.");
            return plain;
        }
        finally { ArrayPool<byte>.Shared.Return(stored); }
    }

    private static async Task ReadExactAsync(SafeFileHandle h, string path, Memory<byte> buffer, long offset, CancellationToken ct)
    {
        int read = 0;
        while (read < buffer.Length)
        {
            int n = await RandomAccess.ReadAsync(h, buffer[read..], offset + read, ct).ConfigureAwait(false);
            if (n == 0) throw new BackupFormatException(path, offset + read, "the data file ends inside a record.");
            read += n;
        }
    }

    /// <summary>The parts of [start, end) not in <paramref name="covered"/> (sorted, disjoint).</summary>
    internal static List<(long Start, long End)> Uncovered(List<(long Start, long End)> covered, long start, long end)
    {
        var result = new List<(long, long)>();
        int lo = 0, hi = covered.Count;
        while (lo < hi) { int mid = (lo + hi) >>> 1; if (covered[mid].End <= start) lo = mid + 1; else hi = mid; }
        long pos = start;
        for (int i = lo; i < covered.Count && covered[i].Start < end; i++)
        {
            if (covered[i].Start > pos) result.Add((pos, covered[i].Start));
            pos = Math.Max(pos, covered[i].End);
        }
        if (pos < end) result.Add((pos, end));
        return result;
    }

    private static List<(long Start, long End)> Union(List<(long Start, long End)> a, List<(long Start, long End)> b)
    {
        var all = a.Concat(b).OrderBy(x => x.Start).ToList();
        var result = new List<(long, long)>();
        foreach (var x in all)
        {
            if (result.Count > 0 && x.Start <= result[^1].Item2) result[^1] = (result[^1].Item1, Math.Max(result[^1].Item2, x.End));
            else result.Add(x);
        }
        return result;
    }
}
