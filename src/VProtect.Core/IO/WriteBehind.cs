using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace VProtect.Core.IO;

/// <summary>
/// Starts the kernel writing a file's dirty pages to disk soon after they are written, instead of letting them
/// pile up until the final fsync (Linux <c>sync_file_range(SYNC_FILE_RANGE_WRITE)</c>, which only queues the I/O
/// and does not wait for it). Producing the data and writing it to disk then overlap, the closing fsync has
/// little left to do, and a large output does not cross the dirty-page thresholds at which the kernel slows
/// every writer down. Nothing changes in what the file holds. Elsewhere than on Linux it does nothing.
/// With <c>dropBehind</c> (repository data, not read again soon) each window, once on disk, also leaves the page cache
/// (<c>posix_fadvise(DONTNEED)</c>, on a background task, two windows behind the writer): a multi-GiB backup then
/// holds a few windows of cache instead of its whole size, evicts nothing useful on the backup proxy, and writes into
/// recycled pages. Measured on the 2-vCPU build VM, buffered writes into never-used memory cost 4–5 s of system time
/// per GiB (the hypervisor backs each new page on first touch) against about 0.5 s into recycled pages; an 8 GiB CBT
/// full spent most of its CPU there (docs/performance.cbt.md).
/// Thread-safe: writers may report ranges from several tasks.
/// </summary>
internal sealed partial class WriteBehind
{
    /// <summary>Bytes written between two write-behind requests. Measured on a 2-vCPU VM: 32 MiB.</summary>
    public const long DefaultWindow = 32L << 20;
    private const uint SyncFileRangeWaitBefore = 1, SyncFileRangeWrite = 2, SyncFileRangeWaitAfter = 4;
    private const int PosixFadviseDontNeed = 4;
    private readonly SafeFileHandle _handle;
    private readonly long _window;
    private readonly bool _dropBehind;
    private readonly object _gate = new();
    private long _pending, _from = long.MaxValue, _to;
    private bool _disabled;
    // Drop-behind: the spans whose writeback was started, oldest first; a span is dropped once two newer ones exist.
    private readonly Queue<(long Offset, long Count)> _started = new();
    private Task _dropping = Task.CompletedTask;

    private WriteBehind(SafeFileHandle handle, long window, bool dropBehind) { _handle = handle; _window = window; _dropBehind = dropBehind; }

    /// <summary>A write-behind for <paramref name="handle"/>, or null where it does not apply (not Linux, window 0).</summary>
    public static WriteBehind? For(SafeFileHandle handle, long window = DefaultWindow, bool dropBehind = false) =>
        OperatingSystem.IsLinux() && window > 0 && !handle.IsInvalid ? new WriteBehind(handle, window, dropBehind) : null;

    /// <summary>For a <see cref="FileStream"/> output; null for any other stream.</summary>
    public static WriteBehind? For(Stream stream, long window = DefaultWindow, bool dropBehind = false) =>
        stream is FileStream { CanSeek: true } fs && OperatingSystem.IsLinux() && window > 0 ? new WriteBehind(fs.SafeFileHandle, window, dropBehind) : null;

    /// <summary>Requests that issued so far (for tests).</summary>
    public int Requests { get; private set; }

    /// <summary>Spans dropped from the page cache so far (for tests).</summary>
    public int Dropped { get; private set; }

    /// <summary>Records that [offset, offset+count) has been written; every window's worth starts writeback of the span.</summary>
    public void Written(long offset, long count)
    {
        if (count <= 0) return;
        long from, to;
        lock (_gate)
        {
            if (_disabled) return;
            _from = Math.Min(_from, offset);
            _to = Math.Max(_to, offset + count);
            _pending += count;
            if (_pending < _window) return;
            from = _from; to = _to;
            _pending = 0; _from = long.MaxValue; _to = 0;
            Requests++;
        }
        Start(from, to - from);
        if (_dropBehind) QueueDrop(from, to - from);
    }

    /// <summary>
    /// Call after the file was flushed to disk (fsync): drops what is left of it from the page cache (drop-behind
    /// only). Waits for the background drops first, so no drop runs after the handle is closed.
    /// </summary>
    public async Task CompleteAsync()
    {
        if (!_dropBehind) return;
        Task pending;
        lock (_gate) { pending = _dropping; _started.Clear(); }
        try { await pending.ConfigureAwait(false); } catch { /* a hint */ }
        lock (_gate) if (_disabled) return;
        Drop(0, 0, waitForWriteback: false); // offset 0, length 0: the whole file
    }

    private void QueueDrop(long offset, long count)
    {
        lock (_gate)
        {
            _started.Enqueue((offset, count));
            if (_started.Count <= 2) return;
            var (o, c) = _started.Dequeue();
            // One drop at a time, in order; it waits for that span's I/O, so it must not block the writer.
            _dropping = _dropping.ContinueWith(_ => Drop(o, c, waitForWriteback: true), CancellationToken.None,
                TaskContinuationOptions.None, TaskScheduler.Default);
        }
    }

    private void Drop(long offset, long count, bool waitForWriteback)
    {
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            int fd = (int)_handle.DangerousGetHandle();
            if (waitForWriteback && sync_file_range(fd, offset, count, SyncFileRangeWaitBefore | SyncFileRangeWrite | SyncFileRangeWaitAfter) != 0)
                return;
            if (posix_fadvise(fd, offset, count, PosixFadviseDontNeed) == 0) lock (_gate) Dropped++;
        }
        catch (ObjectDisposedException) { }
        finally { if (added) _handle.DangerousRelease(); }
    }

    private void Start(long offset, long count)
    {
        bool added = false;
        try
        {
            _handle.DangerousAddRef(ref added);
            if (sync_file_range((int)_handle.DangerousGetHandle(), offset, count, SyncFileRangeWrite) != 0)
                lock (_gate) _disabled = true; // ESPIPE, EINVAL, ENOSYS...: a hint, never an error
        }
        catch (ObjectDisposedException) { lock (_gate) _disabled = true; }
        finally { if (added) _handle.DangerousRelease(); }
    }

    [LibraryImport("libc")]
    private static partial int posix_fadvise(int fd, long offset, long len, int advice);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int sync_file_range(int fd, long offset, long nbytes, uint flags);
}
