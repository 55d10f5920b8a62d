using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.IO.Hashing;
using Microsoft.Win32.SafeHandles;
using VProtect.Core.Backup;
using VProtect.Core.Formats;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.Formats.Xva;
using VProtect.Core.IO;
using VProtect.Core.Repository;
using ZstdSharp;

namespace VProtect.Core.Lifecycle;

/// <summary>
/// Checks backups without the hypervisor: the chain is complete, every manifest and vm.json parses, every block
/// record of every layer (format version 2 keeps lower layers, including records newer layers overwrite)
/// decompresses to its XXH128, every whole file has its length and SHA-256, XVA files pass the reader's
/// checksum verification and VHD files their structure checks. A backup shared by several restore points is read
/// once per verifier instance.
/// </summary>
public sealed class BackupVerifier
{
    internal const string BrokenChainPrefix = "broken chain: ";
    private const int MaxProblemsPerFile = 20; // a wrecked file should not bury the others in messages

    private readonly BackupRepository _repository;
    private readonly int _parallelism;
    private readonly ConcurrentDictionary<string, Lazy<Task<OwnVerification>>> _checked = new();
    private long _bytesDone;

    public BackupVerifier(BackupRepository repository, int? parallelism = null)
    {
        _repository = repository;
        _parallelism = Math.Max(1, parallelism ?? Environment.ProcessorCount);
    }

    /// <summary>Reported as stored bytes are verified (BytesTotal is the restore point's chain size).</summary>
    public IProgress<TransferProgress>? Progress { get; init; }

    /// <summary>Checks <paramref name="backup"/> and everything it depends on.</summary>
    public async Task<BackupVerification> VerifyAsync(BackupManifest backup, CancellationToken cancellationToken)
    {
        var clock = Stopwatch.StartNew();
        var problems = new List<VerificationProblem>();
        var chain = ResolveChain(backup, problems);
        long total = chain.Sum(b => b.StoredBytes);
        Interlocked.Exchange(ref _bytesDone, 0);
        Progress?.Report(new TransferProgress(0, total));
        long blocks = 0, bytes = 0;
        foreach (var b in chain)
        {
            var own = await _checked.GetOrAdd(b.Id, _ => new Lazy<Task<OwnVerification>>(() => VerifyOwnAsync(b, total, cancellationToken))).Value.ConfigureAwait(false);
            blocks += own.Blocks;
            bytes += own.Bytes;
            problems.AddRange(own.Problems);
        }
        return new BackupVerification
        {
            Backup = backup,
            ChainIds = chain.Select(b => b.Id).ToList(),
            BlocksChecked = blocks,
            BytesChecked = bytes,
            Problems = problems,
            Duration = clock.Elapsed,
        };
    }

    /// <summary>Follows baseId to the full, naming a missing or unreadable link instead of throwing.</summary>
    private List<BackupManifest> ResolveChain(BackupManifest point, List<VerificationProblem> problems)
    {
        var chain = new List<BackupManifest> { point };
        var current = point;
        while (current.BaseId is not null)
        {
            string missingFolder = Path.Combine(_repository.RootPath, "vms", current.VmUuid, current.BaseId);
            BackupManifest? parent;
            try { parent = _repository.GetBackup(current.VmUuid, current.BaseId); }
            catch (BackupFormatException ex)
            {
                problems.Add(new VerificationProblem(current.BaseId, ex.Source, ex.Offset, BrokenChainPrefix + $"backup {current.Id} depends on {current.BaseId}, whose manifest cannot be read: {ex.Reason}"));
                break;
            }
            if (parent is null)
            {
                problems.Add(new VerificationProblem(current.BaseId, missingFolder, 0,
                    BrokenChainPrefix + $"backup {current.Id} depends on {current.BaseId}, which is missing from the repository; {point.Id} cannot be restored. Take a new full backup."));
                break;
            }
            if (chain.Any(b => b.Id == parent.Id) || chain.Count > 10_000)
            {
                problems.Add(new VerificationProblem(current.Id, missingFolder, 0, BrokenChainPrefix + $"the chain of {point.Id} loops."));
                break;
            }
            chain.Add(parent);
            current = parent;
        }
        if (current.BaseId is null && current.Type != BackupType.Full)
            problems.Add(new VerificationProblem(current.Id, Path.Combine(_repository.GetBackupFolder(current), BackupRepository.ManifestFile), 0,
                BrokenChainPrefix + $"the chain of {point.Id} does not start with a full backup."));
        chain.Reverse();
        return chain;
    }

    private async Task<OwnVerification> VerifyOwnAsync(BackupManifest backup, long progressTotal, CancellationToken ct)
    {
        var problems = new ConcurrentQueue<VerificationProblem>();
        string folder = _repository.GetBackupFolder(backup);
        long blocks = 0, bytes = 0;
        foreach (var disk in backup.Disks)
        {
            var (b, n) = await VerifyDiskAsync(backup, folder, disk, problems, progressTotal, ct).ConfigureAwait(false);
            blocks += b; bytes += n;
        }
        foreach (var file in backup.Files)
        {
            var (b, n) = await VerifyFileAsync(backup, folder, file, problems, progressTotal, ct).ConfigureAwait(false);
            blocks += b; bytes += n;
        }
        return new OwnVerification(blocks, bytes, problems.ToList());
    }

    private void Advance(long n, long total) => Progress?.Report(new TransferProgress(Interlocked.Add(ref _bytesDone, n), total));

    /// <summary>Every layer of the disk (format version 2 keeps lower layers), every record of each, live or overwritten.</summary>
    private async Task<(long Blocks, long Bytes)> VerifyDiskAsync(BackupManifest backup, string folder, DiskManifest disk,
        ConcurrentQueue<VerificationProblem> problems, long progressTotal, CancellationToken ct)
    {
        long blocks = 0, bytes = 0;
        foreach (var layer in disk.Layers())
        {
            var (b, n) = await VerifyLayerAsync(backup, folder, disk.Key, layer, problems, progressTotal, ct).ConfigureAwait(false);
            blocks += b; bytes += n;
        }
        return (blocks, bytes);
    }

    private async Task<(long Blocks, long Bytes)> VerifyLayerAsync(BackupManifest backup, string folder, string diskKey, LayerManifest layer,
        ConcurrentQueue<VerificationProblem> problems, long progressTotal, CancellationToken ct)
    {
        string dataPath = Path.Combine(folder, layer.DataFile), indexPath = Path.Combine(folder, layer.IndexFile);
        if (!File.Exists(dataPath))
        {
            problems.Enqueue(new VerificationProblem(backup.Id, dataPath, 0, $"the data file of disk {diskKey} is missing."));
            return (0, 0);
        }
        BlockRecord[] records;
        try { records = BlockIndex.Read(indexPath, layer.VirtualSize, long.MaxValue); }
        catch (BackupFormatException ex)
        {
            problems.Enqueue(new VerificationProblem(backup.Id, ex.Source, ex.Offset, ex.Reason));
            return (0, 0);
        }
        if (records.Length != layer.RecordCount)
            problems.Enqueue(new VerificationProblem(backup.Id, indexPath, 0, $"the index holds {records.Length} records; backup.json says {layer.RecordCount}."));
        long indexLength = new FileInfo(indexPath).Length;
        using var handle = File.OpenHandle(dataPath, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.Asynchronous);
        long dataLength = RandomAccess.GetLength(handle);
        int fileProblems = 0;
        long blocks = 0, bytes = indexLength;

        // Contiguous slices per worker: each reads its part of the data file in order.
        int workers = Math.Min(_parallelism, Math.Max(1, records.Length));
        var tasks = new Task[workers];
        for (int w = 0; w < workers; w++)
        {
            int from = (int)((long)records.Length * w / workers), to = (int)((long)records.Length * (w + 1) / workers);
            tasks[w] = Task.Run(async () =>
            {
                using var decompressor = new Decompressor();
                byte[] stored = ArrayPool<byte>.Shared.Rent(DiskWriter.MaxRecordSize + 4096);
                byte[] plain = ArrayPool<byte>.Shared.Rent(DiskWriter.MaxRecordSize);
                try
                {
                    for (int i = from; i < to; i++)
                    {
                        ct.ThrowIfCancellationRequested();
                        var r = records[i];
                        if (r.IsZero) { Interlocked.Increment(ref blocks); continue; }
                        string? error = await CheckRecordAsync(handle, dataLength, r, stored, plain, decompressor, ct).ConfigureAwait(false);
                        if (error is not null && Interlocked.Increment(ref fileProblems) <= MaxProblemsPerFile)
                            problems.Enqueue(new VerificationProblem(backup.Id, dataPath, r.FileOffset, $"record for disk {diskKey} range {r.DiskOffset}+{r.Length}: {error}"));
                        Interlocked.Increment(ref blocks);
                        Interlocked.Add(ref bytes, Math.Max(0, Math.Min(r.StoredLength, dataLength - r.FileOffset)));
                        Advance(r.StoredLength, progressTotal);
                    }
                }
                finally
                {
                    ArrayPool<byte>.Shared.Return(stored);
                    ArrayPool<byte>.Shared.Return(plain);
                }
            }, ct);
        }
        await Task.WhenAll(tasks).ConfigureAwait(false);
        if (fileProblems > MaxProblemsPerFile)
            problems.Enqueue(new VerificationProblem(backup.Id, dataPath, 0, $"{fileProblems - MaxProblemsPerFile} more damaged records in this file are not listed."));
        return (blocks, bytes);
    }

    /// <summary>Null when the record is good, else what is wrong with it.</summary>
    private static async ValueTask<string?> CheckRecordAsync(SafeFileHandle handle, long dataLength, BlockRecord r,
        byte[] stored, byte[] plain, Decompressor decompressor, CancellationToken ct)
    {
        if (r.StoredLength <= 0 || r.StoredLength > stored.Length || r.Length > plain.Length)
            return $"the index gives an impossible stored length {r.StoredLength}.";
        if (r.FileOffset + r.StoredLength > dataLength)
            return $"the data file is truncated: it ends at {dataLength}, the record needs bytes up to {r.FileOffset + r.StoredLength}.";
        int read = 0;
        while (read < r.StoredLength)
        {
            int n = await RandomAccess.ReadAsync(handle, stored.AsMemory(read, r.StoredLength - read), r.FileOffset + read, ct).ConfigureAwait(false);
            if (n == 0) return "the data file ends inside the record.";
            read += n;
        }
        ReadOnlySpan<byte> content;
        if ((r.Flags & BlockRecordFlags.Raw) != 0)
        {
            if (r.StoredLength != r.Length) return "a raw record's stored length differs from its length.";
            content = stored.AsSpan(0, r.Length);
        }
        else
        {
            int produced;
            try { produced = decompressor.Unwrap(stored.AsSpan(0, r.StoredLength), plain.AsSpan(0, r.Length)); }
            catch (Exception ex) when (ex is ZstdException or ArgumentException or InvalidOperationException)
            {
                return $"does not decompress ({ex.Message}).";
            }
            if (produced != r.Length) return $"decompresses to {produced} bytes instead of {r.Length}.";
            content = plain.AsSpan(0, r.Length);
        }
        return XxHash128.HashToUInt128(content) == r.Hash ? null : "fails its XXH128 hash check: the stored data is damaged.";
    }

    private async Task<(long Blocks, long Bytes)> VerifyFileAsync(BackupManifest backup, string folder, FileManifest file,
        ConcurrentQueue<VerificationProblem> problems, long progressTotal, CancellationToken ct)
    {
        string path = Path.Combine(folder, file.Name);
        if (!File.Exists(path))
        {
            problems.Enqueue(new VerificationProblem(backup.Id, path, 0, $"the {file.Kind} file is missing."));
            return (0, 0);
        }
        long length = new FileInfo(path).Length;
        if (length != file.Length)
            problems.Enqueue(new VerificationProblem(backup.Id, path, Math.Min(length, file.Length),
                length < file.Length ? $"the file is truncated: {length} bytes, the manifest says {file.Length}." : $"the file has {length} bytes, the manifest says {file.Length}."));
        long blocks = 0;
        var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.Asynchronous | FileOptions.SequentialScan);
        await using (fs.ConfigureAwait(false))
        using (var hashing = new HashingReadStream(fs))
        {
            var progressing = new ProgressReadStream(hashing, n => Advance(n, progressTotal));
            try
            {
                if (file.Kind == "xva")
                {
                    var result = await XvaReader.VerifyAsync(progressing, path, ct).ConfigureAwait(false);
                    blocks = result.Disks.Sum(d => d.ChunksPresent);
                }
            }
            catch (BackupFormatException ex)
            {
                problems.Enqueue(new VerificationProblem(backup.Id, path, ex.Offset, $"the XVA does not verify: {ex.Reason}"));
            }
            await progressing.DrainAsync(ct).ConfigureAwait(false);
            string sha = hashing.HashHex();
            if (!string.Equals(sha, file.Sha256, StringComparison.OrdinalIgnoreCase) && length == file.Length)
                problems.Enqueue(new VerificationProblem(backup.Id, path, 0, $"the SHA-256 is {sha}, the manifest says {file.Sha256}: the file was altered."));
        }
        if (file.Kind == "vhd")
        {
            try
            {
                using var vhd = await VhdFile.OpenAsync(path, ct).ConfigureAwait(false);
                blocks = vhd.AllocatedBlockCount;
            }
            catch (BackupFormatException ex)
            {
                problems.Enqueue(new VerificationProblem(backup.Id, path, ex.Offset, $"the VHD structure is invalid: {ex.Reason}"));
            }
        }
        else if (file.Kind == "vm-metadata")
        {
            try { VmMetadata.Read(path); }
            catch (Exception ex) when (ex is BackupFormatException or System.Text.Json.JsonException)
            {
                problems.Enqueue(new VerificationProblem(backup.Id, path, 0, $"vm.json does not parse: {ex.Message}"));
            }
        }
        return (blocks, length);
    }

    /// <summary>Reports bytes read as progress and can read a stream to its end.</summary>
    private sealed class ProgressReadStream(Stream inner, Action<long> onRead) : Stream
    {
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => inner.Length;
        public override long Position { get => inner.Position; set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override int Read(byte[] buffer, int offset, int count) { int n = inner.Read(buffer, offset, count); onRead(n); return n; }
        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
            => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            int n = await inner.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
            onRead(n);
            return n;
        }
        public async Task DrainAsync(CancellationToken ct)
        {
            byte[] buffer = ArrayPool<byte>.Shared.Rent(1 << 20);
            try { while (await ReadAsync(buffer, ct).ConfigureAwait(false) > 0) { } }
            finally { ArrayPool<byte>.Shared.Return(buffer); }
        }
    }
}
