using VProtect.Core.IO;
using VProtect.Core.Repository;

namespace VProtect.Core.Backup.Cbt;

/// <summary>
/// Lets a VHD stream (/export_raw_vdi?format=vhd, only the allocated blocks) be applied straight into a backup
/// disk. The repository takes ranges in ascending order only; the VHD streams from xapi (vhd-tool) and the
/// simulator come in ascending block order, and anything else is reported rather than silently reordered.
/// </summary>
internal sealed class DiskWriterTarget(DiskWriter writer, long length, Action<long>? written = null) : IBlockTarget
{
    private long _next;
    private long _bytes;

    public long Length => length;

    public async ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        Check(offset);
        await writer.WriteAsync(offset, data, cancellationToken).ConfigureAwait(false);
        _next = offset + data.Length;
        _bytes += data.Length;
        written?.Invoke(_bytes);
    }

    public async ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken)
    {
        Check(offset);
        await writer.WriteZeroesAsync(offset, length, cancellationToken).ConfigureAwait(false);
        _next = offset + length;
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

    private void Check(long offset)
    {
        if (offset < _next)
            throw new IOException($"The host's VHD export sends blocks out of disk order (offset {offset} after {_next}); back this disk up over NBD instead (Enable-XenNbd).");
    }
}
