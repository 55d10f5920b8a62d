using System.Buffers;
using System.Security.Cryptography;
using System.Threading.Channels;
using System.Text.Json;
using VProtect.Core.IO;

namespace VProtect.Core.Repository;

/// <summary>
/// Builds one backup under a hidden partial folder and commits it with a single rename, so a crash or Ctrl+C at any
/// moment leaves either the previous state or the whole new backup. Disposing without <see cref="CommitAsync"/>
/// deletes the partial folder.
/// </summary>
public sealed class BackupWriter : IAsyncDisposable
{
    private readonly BackupRepository _repository;
    private readonly ChainLock _lock;
    private readonly List<DiskWriter> _disks = new();
    private readonly List<HashingFileStream> _files = new();
    private bool _committed;

    internal BackupWriter(BackupRepository repository, ChainLock chainLock, BackupManifest manifest, string partialFolder)
    {
        _repository = repository;
        _lock = chainLock;
        Manifest = manifest;
        PartialFolder = partialFolder;
    }

    public BackupManifest Manifest { get; }
    public string PartialFolder { get; }

    /// <summary>Starts a disk stored as blocks (CBT strategy).</summary>
    public DiskWriter AddDisk(DiskManifest disk)
    {
        ThrowIfDone();
        if (Manifest.Disks.Any(d => d.Key == disk.Key)) throw new ArgumentException($"Disk {disk.Key} is already in this backup.", nameof(disk));
        if (!RepositoryPaths.IsSafeName(disk.Key)) throw new ArgumentException($"Disk key '{disk.Key}' is not a safe file name.", nameof(disk));
        var w = new DiskWriter(PartialFolder, disk);
        Manifest.Disks.Add(disk);
        _disks.Add(w);
        return w;
    }

    /// <summary>Creates a whole file (an XVA, a VHD delta); its length and SHA-256 are recorded when it is disposed.</summary>
    public Stream CreateFile(string name, string kind, string? diskKey = null)
    {
        ThrowIfDone();
        if (!RepositoryPaths.IsSafeName(name)) throw new ArgumentException($"'{name}' is not a safe file name.", nameof(name));
        var entry = new FileManifest { Name = name, Kind = kind, DiskKey = diskKey };
        var stream = new HashingFileStream(Path.Combine(PartialFolder, name), entry);
        Manifest.Files.Add(entry);
        _files.Add(stream);
        return stream;
    }

    /// <summary>Stores the VM metadata needed to recreate the VM (as JSON) under the name vm.json.</summary>
    public async Task WriteVmMetadataAsync(object metadata, CancellationToken cancellationToken)
    {
        await using var s = CreateFile(BackupRepository.VmMetadataFile, "vm-metadata");
        await JsonSerializer.SerializeAsync(s, metadata, BackupManifest.Json, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Flushes everything, writes backup.json, and renames the folder into place.</summary>
    public async Task<BackupManifest> CommitAsync(CancellationToken cancellationToken)
    {
        ThrowIfDone();
        foreach (var d in _disks)
            if (!d.IsCompleted) throw new InvalidOperationException($"Disk {d.Disk.Key} was not completed.");
        foreach (var f in _files)
            if (!f.IsClosed) throw new InvalidOperationException($"File {f.Entry.Name} was not closed.");
        cancellationToken.ThrowIfCancellationRequested();
        string manifestPath = Path.Combine(PartialFolder, BackupRepository.ManifestFile);
        await using (var fs = new FileStream(manifestPath, FileMode.CreateNew, FileAccess.Write, FileShare.None))
        {
            await JsonSerializer.SerializeAsync(fs, Manifest, BackupManifest.Json, cancellationToken).ConfigureAwait(false);
            fs.Flush(flushToDisk: true);
        }
        cancellationToken.ThrowIfCancellationRequested();
        string final = _repository.BackupFolder(Manifest.VmUuid, Manifest.Id);
        // The commit point: one rename within the VM's folder (atomic on one file system).
        Directory.Move(PartialFolder, final);
        _committed = true;
        return Manifest;
    }

    private void ThrowIfDone()
    {
        if (_committed) throw new InvalidOperationException("The backup is already committed.");
        _lock.ThrowIfReleased();
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var d in _disks) await d.DisposeAsync().ConfigureAwait(false);
        foreach (var f in _files) await f.DisposeAsync().ConfigureAwait(false);
        if (!_committed && Directory.Exists(PartialFolder))
        {
            try { Directory.Delete(PartialFolder, recursive: true); }
            catch (IOException) { /* left for the next run's clean-up, which warns */ }
            catch (UnauthorizedAccessException) { }
        }
    }

    /// <summary>
    /// A write-only file stream that hashes what passes through and fills its manifest entry on close. SHA-256 runs on
    /// a background task over pooled copies of what was written (at most <see cref="HashQueueDepth"/> writes behind),
    /// so hashing a multi-GiB XVA overlaps the download, the XVA checks and the file writes instead of adding to them.
    /// </summary>
    private sealed class HashingFileStream : Stream
    {
        private const int HashQueueDepth = 8;
        private readonly FileStream _inner;
        private readonly IncrementalHash _sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        private readonly Channel<(byte[] Buffer, int Length)> _toHash =
            Channel.CreateBounded<(byte[], int)>(new BoundedChannelOptions(HashQueueDepth) { SingleReader = true, SingleWriter = true });
        private readonly Task _hasher;
        // A multi-GiB XVA would otherwise cross the kernel's dirty-page limit and be throttled, then wait on one fsync;
        // written windows leave the page cache (drop-behind, see WriteBehind).
        private readonly WriteBehind? _writeBehind;

        public HashingFileStream(string path, FileManifest entry)
        {
            Entry = entry;
            _inner = new FileStream(path, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16, FileOptions.Asynchronous);
            _writeBehind = WriteBehind.For(_inner, dropBehind: true);
            _hasher = Task.Run(HashLoopAsync);
        }

        public FileManifest Entry { get; }
        public bool IsClosed { get; private set; }
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => !IsClosed;
        public override long Length => _inner.Length;
        public override long Position { get => _inner.Position; set => throw new NotSupportedException(); }
        public override void Flush() => _inner.Flush();
        public override Task FlushAsync(CancellationToken cancellationToken) => _inner.FlushAsync(cancellationToken);
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();

        private async Task HashLoopAsync()
        {
            await foreach (var (buffer, length) in _toHash.Reader.ReadAllAsync().ConfigureAwait(false))
            {
                try { _sha.AppendData(buffer, 0, length); }
                finally { ArrayPool<byte>.Shared.Return(buffer); }
            }
        }

        private static (byte[], int) Copy(ReadOnlySpan<byte> data)
        {
            var copy = ArrayPool<byte>.Shared.Rent(Math.Max(1, data.Length));
            data.CopyTo(copy);
            return (copy, data.Length);
        }

        public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));
        public override void Write(ReadOnlySpan<byte> buffer)
        {
            if (buffer.IsEmpty) return;
            var item = Copy(buffer);
            if (!_toHash.Writer.TryWrite(item)) _toHash.Writer.WriteAsync(item).AsTask().GetAwaiter().GetResult();
            long at = _inner.Position;
            _inner.Write(buffer);
            _writeBehind?.Written(at, buffer.Length);
        }
        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
            => WriteAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();
        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (buffer.IsEmpty) return;
            var item = Copy(buffer.Span);
            try { await _toHash.Writer.WriteAsync(item, cancellationToken).ConfigureAwait(false); }
            catch { ArrayPool<byte>.Shared.Return(item.Item1); throw; }
            long at = _inner.Position;
            await _inner.WriteAsync(buffer, cancellationToken).ConfigureAwait(false);
            _writeBehind?.Written(at, buffer.Length);
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing && !IsClosed) Close(flush: true);
            base.Dispose(disposing);
        }

        public override async ValueTask DisposeAsync()
        {
            if (!IsClosed)
            {
                await _inner.FlushAsync().ConfigureAwait(false);
                _toHash.Writer.TryComplete();
                await _hasher.ConfigureAwait(false);
                Close(flush: true);
            }
            await base.DisposeAsync().ConfigureAwait(false);
        }

        private void Close(bool flush)
        {
            _toHash.Writer.TryComplete();
            _hasher.GetAwaiter().GetResult();
            if (flush)
            {
                _inner.Flush(flushToDisk: true);
                _writeBehind?.CompleteAsync().GetAwaiter().GetResult();
            }
            Entry.Length = _inner.Length;
            Entry.Sha256 = Convert.ToHexString(_sha.GetHashAndReset()).ToLowerInvariant();
            _inner.Dispose();
            _sha.Dispose();
            IsClosed = true;
        }
    }
}
