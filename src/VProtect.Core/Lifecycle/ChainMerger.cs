using System.Buffers;
using System.IO.Hashing;
using System.Security.Cryptography;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;
using VProtect.Core.Formats;
using VProtect.Core.Repository;
using ZstdSharp;

namespace VProtect.Core.Lifecycle;

/// <summary>How a merge writes a disk (see <see cref="CompactionPolicy"/>).</summary>
public enum CompactionKind
{
    /// <summary>Stack: the absorbed layers are linked below the target's; nothing is rewritten.</summary>
    None,
    /// <summary>Fold every layer above the bottom one (the full's) into one new layer; the bottom stays linked.</summary>
    FoldUpperLayers,
    /// <summary>Rewrite the disk as one plain layer (a plain full for a synthetic full), with no dead bytes.</summary>
    PlainFull,
}

/// <summary>
/// Keeps layer stacks short and dead bytes bounded. When a disk's stack would have more than <see cref="MaxLayers"/>
/// layers, the layers above the bottom one are folded into one (cost: the incrementals' data, not the full's). When
/// more than <see cref="MaxDeadFraction"/> of its data files' bytes are dead (overwritten by newer layers), or when
/// folding cannot meet the layer limit, the disk is rewritten as one plain layer (cost: a copy of the live data).
/// </summary>
public sealed record CompactionPolicy(int MaxLayers = CompactionPolicy.DefaultMaxLayers, double MaxDeadFraction = CompactionPolicy.DefaultMaxDeadFraction)
{
    public const int DefaultMaxLayers = 8;
    public const double DefaultMaxDeadFraction = 0.25;

    public static CompactionPolicy Default { get; } = new();
    /// <summary>Every merge writes plain, version-1 disks (the version-1 behaviour minus the dead bytes).</summary>
    public static CompactionPolicy Always { get; } = new(1, 0);

    public CompactionKind Decide(int layers, long deadBytes, long dataFileBytes)
    {
        bool tooDead = dataFileBytes > 0 && deadBytes > MaxDeadFraction * dataFileBytes;
        if (tooDead || (layers > MaxLayers && MaxLayers < 2)) return CompactionKind.PlainFull;
        return layers > MaxLayers ? CompactionKind.FoldUpperLayers : CompactionKind.None;
    }
}

/// <summary>
/// Folds expired backups of a CBT chain into the kept restore point that depends on them, in place and atomically:
/// per disk the target's folder gets hard links to the absorbed backups' data files and indexes, which become lower
/// layers of the disk (format version 2: <see cref="DiskManifest.BaseLayers"/>); the target's own files stay its top
/// layer. Then its backup.json is replaced with one rename. Before that rename the old manifest (and files) hold;
/// after it the new ones do. No record is decoded or copied: the cost is reading the indexes and making links.
/// When the stack gets too deep, the layers above the bottom one are folded into one new layer; when it gets too dead
/// (<see cref="CompactionPolicy"/>) the disk is rewritten as one plain data file. Either way whole records are copied
/// as stored and only the live pieces of cut records are re-encoded.
/// </summary>
public static class ChainMerger
{
    internal const string MergedProperty = "vprotect:merged";

    /// <summary>Merges <paramref name="absorbed"/> (oldest first, directly below <paramref name="target"/>) into it. Needs the chain lock.</summary>
    public static Task<BackupManifest> MergeAsync(BackupRepository repository, ChainLock chainLock, BackupManifest target,
        IReadOnlyList<BackupManifest> absorbed, Func<string, Task>? checkpoint, CancellationToken ct) =>
        MergeAsync(repository, chainLock, target, absorbed, CompactionPolicy.Default, checkpoint, ct);

    /// <summary>As above, with the rule that decides when a disk is compacted instead of stacked.</summary>
    public static async Task<BackupManifest> MergeAsync(BackupRepository repository, ChainLock chainLock, BackupManifest target,
        IReadOnlyList<BackupManifest> absorbed, CompactionPolicy compaction, Func<string, Task>? checkpoint, CancellationToken ct)
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
            merged.Disks.Add(await MergeDiskAsync(repository, folder, generation, layers, disk, compaction, ct).ConfigureAwait(false));
            if (checkpoint is not null) await checkpoint($"disk {disk.Key} written").ConfigureAwait(false);
        }
        merged.FormatVersion = merged.Disks.Any(d => d.BaseLayers is not null) ? BackupManifest.LayeredFormatVersion : BackupManifest.PlainFormatVersion;
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
        var referenced = new HashSet<string>(manifest.Disks.SelectMany(d => d.Layers()).SelectMany(l => new[] { l.DataFile, l.IndexFile })
            .Select(f => Path.GetFullPath(Path.Combine(folder, f))), StringComparer.Ordinal);
        string disks = Path.Combine(folder, "disks");
        if (Directory.Exists(disks))
            foreach (var f in Directory.EnumerateFiles(disks))
                if (!referenced.Contains(Path.GetFullPath(f))) File.Delete(f);
        foreach (var f in Directory.EnumerateFiles(folder, BackupRepository.ManifestFile + ".merge-*")) File.Delete(f);
    }

    private static BackupManifest Clone(BackupManifest m) =>
        JsonSerializer.Deserialize<BackupManifest>(JsonSerializer.Serialize(m, BackupManifest.Json), BackupManifest.Json)!;

    /// <summary>One layer of the stack a merge builds: its files, where they are, and its records.</summary>
    private sealed record StackLayer(string BackupId, LayerManifest Layer, string DataPath, string IndexPath, BlockRecord[] Records, long DataLength)
    {
        public long IndexLength => BlockIndex.HeaderSize + (long)Records.Length * BlockIndex.EntrySize + BlockIndex.TrailerSize;
    }

    private static async Task<DiskManifest> MergeDiskAsync(BackupRepository repository, string folder, string generation,
        List<BackupManifest> layers, DiskManifest targetDisk, CompactionPolicy compaction, CancellationToken ct)
    {
        // The stack: every layer of every backup, oldest first; the target's own top layer last.
        var stack = new List<StackLayer>();
        foreach (var b in layers)
        {
            var d = b.Disks.FirstOrDefault(x => x.Key == targetDisk.Key);
            if (d is null) continue;
            string bf = repository.GetBackupFolder(b);
            foreach (var layer in d.Layers())
            {
                ct.ThrowIfCancellationRequested();
                string data = Path.Combine(bf, layer.DataFile), index = Path.Combine(bf, layer.IndexFile);
                long dataLength = File.Exists(data) ? new FileInfo(data).Length : throw new BackupFormatException(data, 0, "the data file is missing; the merge cannot go on. Run Test-VMBackup.");
                var records = BlockIndex.Read(index, layer.VirtualSize, dataLength);
                stack.Add(new StackLayer(b.Id, layer, data, index, records, dataLength));
            }
        }
        var recordsByLayer = stack.Select(l => l.Records).ToList();
        var segments = BlockOverlay.Compute(recordsByLayer, targetDisk.VirtualSize);
        var usage = BlockOverlay.Analyze(recordsByLayer, segments, stack.Select(l => l.DataLength).ToList());
        // Layers nothing reads any more are dropped (never the target's own top layer).
        var kept = Enumerable.Range(0, stack.Count).Where(i => usage.LiveRecords[i] > 0 || i == stack.Count - 1).ToList();
        long dead = kept.Sum(i => usage.DeadBytes[i]), dataFiles = kept.Sum(i => stack[i].DataLength);
        var result = new DiskManifest
        {
            Key = targetDisk.Key, Device = targetDisk.Device, Name = targetDisk.Name, VirtualSize = targetDisk.VirtualSize,
            Properties = new Dictionary<string, string>(targetDisk.Properties),
            DataBytes = usage.VisibleDataBytes,
        };
        var kind = compaction.Decide(kept.Count, dead, dataFiles);
        if (kind == CompactionKind.PlainFull)
        {
            await CompactDiskAsync(folder, generation, stack, segments, result, ct).ConfigureAwait(false);
            return result;
        }
        if (kind == CompactionKind.FoldUpperLayers)
        {
            // The bottom layer stays (linked); the layers above it become one: the newest version of every range
            // they cover, which is exactly what they provided above the bottom layer.
            var upper = kept.Skip(1).Select(i => stack[i]).ToList();
            var upperSegments = BlockOverlay.Compute(upper.Select(l => l.Records).ToList(), targetDisk.VirtualSize);
            await CompactDiskAsync(folder, generation, upper, upperSegments, result, ct).ConfigureAwait(false);
            var bottom = stack[kept[0]];
            result.BaseLayers = new List<LayerManifest> { BaseLayer(folder, generation, targetDisk.Key, 0, bottom) };
            result.DeadBytes = usage.DeadBytes[kept[0]];
            result.StoredBytes += bottom.DataLength + bottom.IndexLength;
            return result;
        }
        // Stack: link the absorbed layers into the target's folder; the target's own files keep their names.
        var top = stack[kept[^1]];
        var baseLayers = new List<LayerManifest>();
        for (int k = 0; k < kept.Count - 1; k++)
        {
            ct.ThrowIfCancellationRequested();
            baseLayers.Add(BaseLayer(folder, generation, targetDisk.Key, k, stack[kept[k]]));
        }
        result.BaseLayers = baseLayers.Count > 0 ? baseLayers : null;
        result.DataFile = top.Layer.DataFile;
        result.IndexFile = top.Layer.IndexFile;
        result.RecordCount = top.Records.Length;
        result.DeadBytes = dead;
        result.StoredBytes = kept.Sum(i => stack[i].DataLength + stack[i].IndexLength);
        return result;
    }

    /// <summary>A lower layer of the target: its own files as they are, an absorbed backup's hard-linked in under new names.</summary>
    private static LayerManifest BaseLayer(string folder, string generation, string diskKey, int n, StackLayer l)
    {
        var entry = new LayerManifest
        {
            DataFile = l.Layer.DataFile, IndexFile = l.Layer.IndexFile, VirtualSize = l.Layer.VirtualSize,
            RecordCount = l.Records.Length, Origin = l.Layer.Origin ?? l.BackupId,
        };
        if (!string.Equals(Path.GetFullPath(Path.GetDirectoryName(l.DataPath)!), Path.GetFullPath(Path.Combine(folder, "disks")), StringComparison.Ordinal))
        {
            entry.DataFile = $"disks/{diskKey}.{generation}.{n}.data";
            entry.IndexFile = $"disks/{diskKey}.{generation}.{n}.index";
            LinkOrCopy(l.DataPath, Path.Combine(folder, entry.DataFile));
            LinkOrCopy(l.IndexPath, Path.Combine(folder, entry.IndexFile));
        }
        return entry;
    }

    /// <summary>A hard link (no data copied); a copy, flushed, where the file system has no links.</summary>
    private static void LinkOrCopy(string existing, string link)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(link)!);
        if (HardLink.TryCreate(existing, link)) return;
        File.Copy(existing, link);
        using var fs = new FileStream(link, FileMode.Open, FileAccess.ReadWrite, FileShare.Read);
        fs.Flush(flushToDisk: true);
    }

    /// <summary>
    /// Writes the disk as one plain layer in disk order: records read whole are copied as stored (no decoding), the
    /// live pieces of cut records are decoded (hash-checked) and re-encoded, zero ranges stay zero entries.
    /// </summary>
    private static async Task CompactDiskAsync(string folder, string generation, List<StackLayer> stack, OverlaySegment[] segments,
        DiskManifest result, CancellationToken ct)
    {
        result.DataFile = $"disks/{result.Key}.{generation}.data";
        result.IndexFile = $"disks/{result.Key}.{generation}.index";
        string newData = Path.Combine(folder, result.DataFile), newIndex = Path.Combine(folder, result.IndexFile);
        Directory.CreateDirectory(Path.GetDirectoryName(newData)!);
        var handles = new SafeFileHandle?[stack.Count];
        var decoded = new (int Record, byte[] Plain)?[stack.Count]; // the last decoded record per layer: pieces come in disk order
        var entries = new List<BlockRecord>(segments.Length);
        byte[] stored = ArrayPool<byte>.Shared.Rent(Compressor.GetCompressBound(DiskWriter.MaxRecordSize));
        try
        {
            await using (var output = new FileStream(newData, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20, FileOptions.Asynchronous))
            {
                using var compressor = new Compressor(1);
                using var decompressor = new Decompressor();
                foreach (var seg in segments)
                {
                    ct.ThrowIfCancellationRequested();
                    var layer = stack[seg.Layer];
                    var r = layer.Records[seg.Record];
                    if (r.IsZero)
                    {
                        entries.Add(new BlockRecord(seg.Start, (int)seg.Length, BlockRecordFlags.Zero, 0, 0, default));
                        continue;
                    }
                    var input = handles[seg.Layer] ??= File.OpenHandle(layer.DataPath, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, FileOptions.Asynchronous);
                    if (seg.Start == r.DiskOffset && seg.End == r.DiskEnd)
                    {
                        if (r.StoredLength > stored.Length)
                            throw new BackupFormatException(layer.IndexPath, 0, $"the record for disk range {r.DiskOffset}+{r.Length} has an impossible stored length {r.StoredLength}.");
                        await ReadExactAsync(input, layer.DataPath, stored.AsMemory(0, r.StoredLength), r.FileOffset, ct).ConfigureAwait(false);
                        entries.Add(r with { FileOffset = output.Position });
                        await output.WriteAsync(stored.AsMemory(0, r.StoredLength), ct).ConfigureAwait(false);
                        continue;
                    }
                    // A piece of a record that newer layers cut: decode once (hash-checked) and store the piece anew.
                    if (decoded[seg.Layer] is not { } d || d.Record != seg.Record)
                        decoded[seg.Layer] = d = (seg.Record, await DecodeAsync(input, layer.DataPath, r, decompressor, ct).ConfigureAwait(false));
                    ReadOnlyMemory<byte> slice = d.Plain.AsMemory((int)(seg.Start - r.DiskOffset), (int)seg.Length);
                    int n = compressor.Wrap(slice.Span, stored);
                    var (flags, bytes) = n < slice.Length ? (BlockRecordFlags.None, (ReadOnlyMemory<byte>)stored.AsMemory(0, n)) : (BlockRecordFlags.Raw, slice);
                    entries.Add(new BlockRecord(seg.Start, slice.Length, flags, output.Position, bytes.Length, XxHash128.HashToUInt128(slice.Span)));
                    await output.WriteAsync(bytes, ct).ConfigureAwait(false);
                }
                await output.FlushAsync(ct).ConfigureAwait(false);
                output.Flush(flushToDisk: true);
                result.StoredBytes = output.Length;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(stored);
            foreach (var h in handles) h?.Dispose();
        }
        await WriteIndexAsync(newIndex, entries, ct).ConfigureAwait(false);
        result.RecordCount = entries.Count;
        result.DeadBytes = 0;
        result.BaseLayers = null;
        result.StoredBytes += new FileInfo(newIndex).Length;
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
}
