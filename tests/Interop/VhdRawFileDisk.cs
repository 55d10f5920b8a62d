using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using VProtect.Core.IO;

namespace VProtect.Interop.Tests;

/// <summary>A raw image file as a block device; allocated extents come from SEEK_DATA/SEEK_HOLE on Linux.</summary>
internal sealed class VhdRawFileDisk : IBlockSource, IBlockTarget, IDisposable
{
    private readonly SafeFileHandle _handle;

    public VhdRawFileDisk(string path, long? createLength = null)
    {
        _handle = File.OpenHandle(path, createLength is null ? FileMode.Open : FileMode.Create,
            createLength is null ? FileAccess.Read : FileAccess.ReadWrite, FileShare.Read);
        if (createLength is long len) RandomAccess.SetLength(_handle, len);
        Length = RandomAccess.GetLength(_handle);
    }

    public long Length { get; }

    public async ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = await RandomAccess.ReadAsync(_handle, buffer[done..], offset + done, cancellationToken);
            if (n == 0) { buffer.Span[done..].Clear(); return; }
            done += n;
        }
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) =>
        RandomAccess.WriteAsync(_handle, data, offset, cancellationToken);

    public async ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken)
    {
        var zeros = new byte[Math.Min(length, 1 << 20)];
        for (long done = 0; done < length; done += zeros.Length)
            await RandomAccess.WriteAsync(_handle, zeros.AsMemory(0, (int)Math.Min(zeros.Length, length - done)), offset + done, cancellationToken);
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

    public async IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await Task.CompletedTask;
        long end = offset + length;
        if (!OperatingSystem.IsLinux()) { yield return new Extent(offset, length); yield break; }
        int fd = (int)_handle.DangerousGetHandle();
        long pos = offset;
        while (pos < end)
        {
            long data = lseek(fd, pos, SeekData);
            if (data < 0 || data >= end) yield break; // ENXIO: no more data
            long hole = lseek(fd, data, SeekHole);
            if (hole < 0 || hole > end) hole = end;
            yield return new Extent(data, hole - data);
            pos = hole;
        }
    }

    private const int SeekData = 3, SeekHole = 4;
    [DllImport("libc", SetLastError = true)]
    private static extern long lseek(int fd, long offset, int whence);

    public void Dispose() => _handle.Dispose();
}
