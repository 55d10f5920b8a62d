using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace VProtect.Core.IO;

/// <summary>
/// A raw disk image file as a block device: reads and writes at offsets with <see cref="RandomAccess"/> (safe to
/// use from several tasks at once), the file's length is the disk's length. On Linux the allocated extents come
/// from SEEK_DATA/SEEK_HOLE (as qemu-img finds them) and <see cref="WriteZeroesAsync"/> punches holes, so a sparse
/// image stays sparse; elsewhere, or on a file system without those calls, the whole range is reported allocated
/// and zeros are written.
/// </summary>
public sealed partial class FileBlockDevice : IBlockSource, IBlockTarget, IDisposable
{
    private const int ZeroChunk = 1 << 20;
    private readonly bool _writable;
    private readonly WriteBehind? _writeBehind;

    /// <summary>Bytes written between two requests to start writing them to disk (Linux); 0 leaves it to the kernel.</summary>
    public const long DefaultWriteBehindBytes = WriteBehind.DefaultWindow;

    private FileBlockDevice(SafeFileHandle handle, string path, bool writable, long writeBehindBytes = 0)
    {
        Handle = handle;
        Path = path;
        _writable = writable;
        Length = RandomAccess.GetLength(handle);
        ArgumentOutOfRangeException.ThrowIfNegative(writeBehindBytes);
        if (writable) _writeBehind = WriteBehind.For(handle, writeBehindBytes);
    }

    /// <summary>Opens an existing image read-only.</summary>
    public static FileBlockDevice OpenRead(string path) =>
        new(File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.Asynchronous), path, writable: false);

    /// <summary>
    /// Opens an existing image for reading and writing; its length stays as it is. Every
    /// <paramref name="writeBehindBytes"/> written, Linux is asked to start writing them to disk, so the closing
    /// <see cref="FlushAsync"/> is short and a large copy does not fill the page cache with dirty pages.
    /// </summary>
    public static FileBlockDevice OpenWrite(string path, long writeBehindBytes = DefaultWriteBehindBytes) =>
        new(File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite, FileShare.Read, FileOptions.Asynchronous), path, writable: true, writeBehindBytes);

    /// <summary>
    /// Creates a sparse image of <paramref name="length"/> bytes (all holes: it reads as zeros and uses no space
    /// until written). An existing file is replaced only with <paramref name="overwrite"/>. Write-behind as in
    /// <see cref="OpenWrite"/>.
    /// </summary>
    public static FileBlockDevice Create(string path, long length, bool overwrite = false, long writeBehindBytes = DefaultWriteBehindBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        var handle = File.OpenHandle(path, overwrite ? FileMode.Create : FileMode.CreateNew, FileAccess.ReadWrite, FileShare.Read, FileOptions.Asynchronous);
        try
        {
            RandomAccess.SetLength(handle, length);
            return new FileBlockDevice(handle, path, writable: true, writeBehindBytes);
        }
        catch { handle.Dispose(); throw; }
    }

    public string Path { get; }
    public long Length { get; }
    /// <summary>The open file, for APIs that write a file directly (e.g. <c>VhdStreamWriter.WriteFileAsync</c>).</summary>
    public SafeFileHandle Handle { get; }

    /// <summary>Fills <paramref name="buffer"/>; throws if the file has become shorter than <see cref="Length"/>.</summary>
    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        CheckRange(offset, buffer.Length);
        int done = 0;
        while (done < buffer.Length)
        {
            int n = await RandomAccess.ReadAsync(Handle, buffer[done..], offset + done, cancellationToken).ConfigureAwait(false);
            if (n == 0)
                throw new IOException($"{Path} ended at {offset + done} while reading {buffer.Length} bytes at {offset}: the file is shorter than the {Length} bytes it had when opened.");
            done += n;
        }
    }

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        CheckWritable();
        CheckRange(offset, data.Length);
        await RandomAccess.WriteAsync(Handle, data, offset, cancellationToken).ConfigureAwait(false);
        _writeBehind?.Written(offset, data.Length);
    }

    /// <summary>Makes the range read as zeros: a punched hole where the file system allows it, written zeros elsewhere.</summary>
    public async ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken)
    {
        CheckWritable();
        CheckRange(offset, length);
        if (length == 0) return;
        cancellationToken.ThrowIfCancellationRequested();
        if (OperatingSystem.IsLinux() && TryPunchHole(offset, length)) return;
        var zeros = new byte[(int)Math.Min(length, ZeroChunk)];
        for (long done = 0; done < length;)
        {
            int n = (int)Math.Min(zeros.Length, length - done);
            await RandomAccess.WriteAsync(Handle, zeros.AsMemory(0, n), offset + done, cancellationToken).ConfigureAwait(false);
            done += n;
        }
    }

    /// <summary>Makes everything written durable (fsync).</summary>
    public async ValueTask FlushAsync(CancellationToken cancellationToken)
    {
        if (!_writable) return;
        await Task.Run(() => RandomAccess.FlushToDisk(Handle), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Data extents of [offset, offset+length), ascending and coalesced (SEEK_DATA/SEEK_HOLE on Linux).</summary>
    public async IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        CheckRange(offset, length);
        await Task.CompletedTask.ConfigureAwait(false);
        long end = offset + length;
        if (length == 0) yield break;
        if (!OperatingSystem.IsLinux()) { yield return new Extent(offset, length); yield break; }
        for (long pos = offset; pos < end;)
        {
            cancellationToken.ThrowIfCancellationRequested();
            long data = Seek(pos, SeekData);
            if (data == NoMoreData || data >= end) yield break;
            if (data == Unsupported) { yield return new Extent(pos, end - pos); yield break; }
            long hole = Seek(data, SeekHole);
            if (hole == Unsupported || hole == NoMoreData || hole > end) hole = end;
            yield return new Extent(data, hole - data);
            pos = hole;
        }
    }

    public void Dispose() => Handle.Dispose();

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset > Length - length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Range {offset}+{length} is outside {Path} ({Length} bytes).");
    }

    private void CheckWritable()
    {
        if (!_writable) throw new NotSupportedException($"{Path} was opened read-only.");
    }

    // Linux lseek whence values and errno codes.
    private const int SeekData = 3, SeekHole = 4, ENXIO = 6, EINVAL = 22, EOPNOTSUPP = 95, ENOSYS = 38;
    private const long NoMoreData = -2, Unsupported = -3;
    private const int FallocPunchHole = 0x02, FallocKeepSize = 0x01;

    /// <summary>lseek with SEEK_DATA/SEEK_HOLE: the offset, <see cref="NoMoreData"/> (ENXIO) or <see cref="Unsupported"/>.</summary>
    private long Seek(long offset, int whence)
    {
        bool added = false;
        try
        {
            Handle.DangerousAddRef(ref added);
            long result = lseek((int)Handle.DangerousGetHandle(), offset, whence);
            if (result >= 0) return result;
            int errno = Marshal.GetLastPInvokeError();
            if (errno == ENXIO) return NoMoreData;
            if (errno == EINVAL) return Unsupported;
            throw new IOException($"lseek({(whence == SeekData ? "SEEK_DATA" : "SEEK_HOLE")}, {offset}) on {Path} failed: {Marshal.GetPInvokeErrorMessage(errno)}");
        }
        finally { if (added) Handle.DangerousRelease(); }
    }

    private bool TryPunchHole(long offset, long length)
    {
        bool added = false;
        try
        {
            Handle.DangerousAddRef(ref added);
            if (fallocate((int)Handle.DangerousGetHandle(), FallocPunchHole | FallocKeepSize, offset, length) == 0) return true;
            int errno = Marshal.GetLastPInvokeError();
            if (errno is EOPNOTSUPP or ENOSYS or EINVAL) return false;
            throw new IOException($"Punching a hole at {offset}+{length} in {Path} failed: {Marshal.GetPInvokeErrorMessage(errno)}");
        }
        finally { if (added) Handle.DangerousRelease(); }
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial long lseek(int fd, long offset, int whence);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int fallocate(int fd, int mode, long offset, long length);
}
