using System.IO.Compression;

namespace VProtect.Core.Formats.Xva;

/// <summary>Detects and applies whole-stream gzip or zstd, the two compressions xapi's /export offers.</summary>
internal static class XvaCompressionStreams
{
    /// <summary>
    /// Peeks at the first bytes of <paramref name="input"/> (forward-only is fine) and returns a stream of the
    /// decompressed tar plus what was detected. gzip is 1F 8B; zstd is 28 B5 2F FD; anything else is read as tar.
    /// </summary>
    public static async ValueTask<(Stream Tar, XvaCompression Compression)> OpenForReadAsync(Stream input, CancellationToken cancellationToken)
    {
        var magic = new byte[4];
        int got = 0;
        while (got < magic.Length)
        {
            int n = await input.ReadAsync(magic.AsMemory(got), cancellationToken).ConfigureAwait(false);
            if (n == 0) break;
            got += n;
        }
        Stream replay = new PrefixedStream(magic.AsMemory(0, got), input);
        if (got >= 2 && magic[0] == 0x1F && magic[1] == 0x8B)
            return (new GZipStream(replay, CompressionMode.Decompress, leaveOpen: false), XvaCompression.Gzip);
        if (got == 4 && magic[0] == 0x28 && magic[1] == 0xB5 && magic[2] == 0x2F && magic[3] == 0xFD)
            return (new ZstdSharp.DecompressionStream(replay, leaveOpen: false), XvaCompression.Zstd);
        return (replay, XvaCompression.None);
    }

    /// <summary>Wraps <paramref name="output"/> so that what is written to the result is compressed as asked.</summary>
    public static Stream OpenForWrite(Stream output, XvaCompression compression, int zstdLevel, CompressionLevel gzipLevel) => compression switch
    {
        XvaCompression.Gzip => new GZipStream(output, gzipLevel, leaveOpen: true),
        XvaCompression.Zstd => new ZstdSharp.CompressionStream(output, zstdLevel, leaveOpen: true),
        _ => new NonClosingStream(output),
    };

    /// <summary>Replays a few already-read bytes, then continues with the inner stream. Read-only, forward-only.</summary>
    private sealed class PrefixedStream(ReadOnlyMemory<byte> prefix, Stream inner) : Stream
    {
        private ReadOnlyMemory<byte> _prefix = prefix;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

        public override int Read(Span<byte> buffer)
        {
            if (!_prefix.IsEmpty) return TakePrefix(buffer);
            return inner.Read(buffer);
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        public override ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            if (!_prefix.IsEmpty) return ValueTask.FromResult(TakePrefix(buffer.Span));
            return inner.ReadAsync(buffer, cancellationToken);
        }

        private int TakePrefix(Span<byte> buffer)
        {
            int n = Math.Min(buffer.Length, _prefix.Length);
            _prefix.Span[..n].CopyTo(buffer);
            _prefix = _prefix[n..];
            return n;
        }

        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        // The caller owns the input stream; disposing the XVA reader must not close it.
        protected override void Dispose(bool disposing) { }
    }

    /// <summary>Passes writes through and leaves the caller's stream open on dispose.</summary>
    private sealed class NonClosingStream(Stream inner) : Stream
    {
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override Task FlushAsync(CancellationToken cancellationToken) => inner.FlushAsync(cancellationToken);
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => inner.Write(buffer, offset, count);
        public override void Write(ReadOnlySpan<byte> buffer) => inner.Write(buffer);
        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) =>
            inner.WriteAsync(buffer, offset, count, cancellationToken);
        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancellationToken = default) =>
            inner.WriteAsync(buffer, cancellationToken);
        protected override void Dispose(bool disposing) { }
        public override ValueTask DisposeAsync() => ValueTask.CompletedTask;
    }
}
