using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace VProtect.Core.IO;

/// <summary>
/// Starts the kernel writing a file's dirty pages to disk soon after they are written, instead of letting them
/// pile up until the final fsync (Linux <c>sync_file_range(SYNC_FILE_RANGE_WRITE)</c>, which only queues the I/O
/// and does not wait for it). Producing the data and writing it to disk then overlap, the closing fsync has
/// little left to do, and a large output does not cross the dirty-page thresholds at which the kernel slows
/// every writer down. Nothing changes in what the file holds. Elsewhere than on Linux it does nothing.
/// Thread-safe: writers may report ranges from several tasks.
/// </summary>
internal sealed partial class WriteBehind
{
    /// <summary>Bytes written between two write-behind requests. Measured on a 2-vCPU VM: 32 MiB.</summary>
    public const long DefaultWindow = 32L << 20;
    private const uint SyncFileRangeWrite = 2;
    private readonly SafeFileHandle _handle;
    private readonly long _window;
    private readonly object _gate = new();
    private long _pending, _from = long.MaxValue, _to;
    private bool _disabled;

    private WriteBehind(SafeFileHandle handle, long window) { _handle = handle; _window = window; }

    /// <summary>A write-behind for <paramref name="handle"/>, or null where it does not apply (not Linux, window 0).</summary>
    public static WriteBehind? For(SafeFileHandle handle, long window = DefaultWindow) =>
        OperatingSystem.IsLinux() && window > 0 && !handle.IsInvalid ? new WriteBehind(handle, window) : null;

    /// <summary>For a <see cref="FileStream"/> output; null for any other stream.</summary>
    public static WriteBehind? For(Stream stream, long window = DefaultWindow) =>
        stream is FileStream { CanSeek: true } fs && OperatingSystem.IsLinux() && window > 0 ? new WriteBehind(fs.SafeFileHandle, window) : null;

    /// <summary>Requests that issued so far (for tests).</summary>
    public int Requests { get; private set; }

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

    [LibraryImport("libc", SetLastError = true)]
    private static partial int sync_file_range(int fd, long offset, long nbytes, uint flags);
}
