using System.Security.Cryptography;

namespace VProtect.Core.Backup.Xva;

/// <summary>
/// A forward-only read stream that copies every byte it hands out to a sink (and optionally hashes it), so one pass
/// over a download both stores it and feeds a verifying reader. The sink write completes before the read returns,
/// so nothing is buffered beyond the caller's own buffer.
/// </summary>
internal sealed class TeeReadStream : Stream
{
    private readonly Stream _source;
    private readonly Stream? _sink;
    private readonly IncrementalHash? _hash;

    public TeeReadStream(Stream source, Stream? sink, bool computeSha256 = false)
    {
        _source = source;
        _sink = sink;
        if (computeSha256) _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
    }

    /// <summary>Bytes read from the source so far.</summary>
    public long BytesRead { get; private set; }

    public override bool CanRead => true;
    public override bool CanSeek => false;
    public override bool CanWrite => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => BytesRead; set => throw new NotSupportedException(); }
    public override void Flush() { }
    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
    public override void SetLength(long value) => throw new NotSupportedException();
    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        int n = _source.Read(buffer);
        if (n > 0)
        {
            _sink?.Write(buffer[..n]);
            _hash?.AppendData(buffer[..n]);
            BytesRead += n;
        }
        return n;
    }

    public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken)
        => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

    public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
    {
        int n = await _source.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
        if (n > 0)
        {
            if (_sink is not null) await _sink.WriteAsync(buffer[..n], cancellationToken).ConfigureAwait(false);
            _hash?.AppendData(buffer.Span[..n]);
            BytesRead += n;
        }
        return n;
    }

    /// <summary>Reads whatever the consumer left (tar padding after the end marker) so the sink gets every byte.</summary>
    public async Task DrainAsync(CancellationToken cancellationToken)
    {
        var buffer = new byte[1 << 16];
        while (await ReadAsync(buffer, cancellationToken).ConfigureAwait(false) > 0) { }
    }

    /// <summary>The SHA-256 (lower-case hex) of everything read; call once, after the end.</summary>
    public string FinishSha256()
    {
        if (_hash is null) throw new InvalidOperationException("This stream was not asked to hash.");
        return Convert.ToHexString(_hash.GetHashAndReset()).ToLowerInvariant();
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _hash?.Dispose();
        base.Dispose(disposing);
    }
}

/// <summary>A block target that accepts and drops everything: used to validate a VHD's structure as it streams.</summary>
internal sealed class DiscardBlockTarget(long length) : VProtect.Core.IO.IBlockTarget
{
    public long Length { get; } = length;
    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken) => ValueTask.CompletedTask;
    public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken) => ValueTask.CompletedTask;
    public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;
}
