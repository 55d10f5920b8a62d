using System.Buffers.Binary;
using VProtect.Core.IO;

namespace VProtect.Core.Restore.Cbt;

/// <summary>
/// The body of <c>PUT /import_raw_vdi?format=raw&amp;chunked=true</c> (vhd-tool's framing, chunked.ml): for each
/// allocated extent of the source a header {offset u64 LE, length u32 LE} and the data, ended by {0, 0}. Only
/// allocated data travels; the length is known in advance (Content-Length) and the stream can restart from 0 (a
/// redirect resends it). Reads the source in order, each byte once per pass.
/// </summary>
public sealed class ChunkedExtentStream : Stream
{
    public const int MaxChunk = 1 << 20;
    private const int HeaderSize = 12;

    private readonly IBlockSource _source;
    private readonly List<Extent> _chunks;
    private readonly byte[] _header = new byte[HeaderSize];
    private int _chunk;          // index of the chunk being sent; == _chunks.Count: the terminator
    private long _inChunk;       // bytes of the current frame (header + data) already sent
    private long _position;

    private ChunkedExtentStream(IBlockSource source, List<Extent> chunks)
    {
        _source = source;
        _chunks = chunks;
        Length = chunks.Sum(c => HeaderSize + c.Length) + HeaderSize;
    }

    /// <summary>Plans the frames from the source's allocated extents (cut into pieces of at most <see cref="MaxChunk"/>).</summary>
    public static async Task<ChunkedExtentStream> CreateAsync(IBlockSource source, CancellationToken ct)
    {
        var chunks = new List<Extent>();
        await foreach (var e in source.GetAllocatedExtentsAsync(0, source.Length, ct).ConfigureAwait(false))
            for (long pos = e.Offset; pos < e.End; pos += MaxChunk)
                chunks.Add(new Extent(pos, Math.Min(MaxChunk, e.End - pos)));
        return new ChunkedExtentStream(source, chunks);
    }

    /// <summary>Bytes of disk data the frames carry.</summary>
    public long DataBytes => _chunks.Sum(c => c.Length);

    public override bool CanRead => true;
    public override bool CanSeek => true;
    public override bool CanWrite => false;
    public override long Length { get; }
    public override long Position { get => _position; set => Seek(value, SeekOrigin.Begin); }

    public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        int written = 0;
        while (written < buffer.Length && _chunk <= _chunks.Count)
        {
            var chunk = _chunk < _chunks.Count ? _chunks[_chunk] : new Extent(0, 0);
            if (_inChunk < HeaderSize)
            {
                BinaryPrimitives.WriteUInt64LittleEndian(_header, (ulong)chunk.Offset);
                BinaryPrimitives.WriteUInt32LittleEndian(_header.AsSpan(8), (uint)chunk.Length);
                int n = (int)Math.Min(HeaderSize - _inChunk, buffer.Length - written);
                _header.AsSpan((int)_inChunk, n).CopyTo(buffer.Span[written..]);
                written += n; _inChunk += n;
            }
            else
            {
                long dataDone = _inChunk - HeaderSize;
                int n = (int)Math.Min(chunk.Length - dataDone, buffer.Length - written);
                if (n > 0)
                {
                    await _source.ReadAsync(chunk.Offset + dataDone, buffer.Slice(written, n), cancellationToken).ConfigureAwait(false);
                    written += n; _inChunk += n;
                }
            }
            if (_inChunk == HeaderSize + chunk.Length) { _chunk++; _inChunk = 0; }
        }
        _position += written;
        return written;
    }

    public override long Seek(long offset, SeekOrigin origin)
    {
        long target = origin switch { SeekOrigin.Begin => offset, SeekOrigin.Current => _position + offset, _ => Length + offset };
        if (target != 0 && target != _position) throw new NotSupportedException("The chunked import stream can only restart from the beginning.");
        if (target == 0) { _chunk = 0; _inChunk = 0; _position = 0; }
        return _position;
    }

    public override void Flush() { }
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}
