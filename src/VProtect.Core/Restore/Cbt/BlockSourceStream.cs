using VProtect.Core.IO;

namespace VProtect.Core.Restore.Cbt;

/// <summary>
/// A forward, seekable-to-start read stream over an <see cref="IBlockSource"/>: the raw disk image, read in the
/// order it is sent, so a restore streams a merged chain without holding the disk anywhere.
/// </summary>
public sealed class BlockSourceStream : Stream
{
    private readonly IBlockSource _source;
    private long _position;

    public BlockSourceStream(IBlockSource source) => _source = source;

    public override bool CanRead => true;
    public override bool CanSeek => true;
    public override bool CanWrite => false;
    public override long Length => _source.Length;
    public override long Position { get => _position; set => Seek(value, SeekOrigin.Begin); }

    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        int n = (int)Math.Min(buffer.Length, _source.Length - _position);
        if (n <= 0) return 0;
        await _source.ReadAsync(_position, buffer[..n], cancellationToken).ConfigureAwait(false);
        _position += n;
        return n;
    }

    public override long Seek(long offset, SeekOrigin origin)
    {
        long target = origin switch { SeekOrigin.Begin => offset, SeekOrigin.Current => _position + offset, _ => _source.Length + offset };
        if (target < 0 || target > _source.Length) throw new ArgumentOutOfRangeException(nameof(offset));
        _position = target;
        return target;
    }

    public override void Flush() { }
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}
