namespace VProtect.Core.Formats.Vhd;

/// <summary>Forward-only reads over a stream with a position, for parsing a VHD as it arrives.</summary>
internal sealed class ForwardReader
{
    private readonly Stream _stream;
    private readonly string _source;
    private byte[]? _skipBuffer;

    public ForwardReader(Stream stream, string source) { _stream = stream; _source = source; }

    public long Position { get; private set; }

    /// <summary>Reads exactly buffer.Length bytes or throws a <see cref="BackupFormatException"/> naming what was being read.</summary>
    public async ValueTask ReadExactlyAsync(Memory<byte> buffer, string what, CancellationToken cancellationToken)
    {
        int got = await _stream.ReadAtLeastAsync(buffer, buffer.Length, throwOnEndOfStream: false, cancellationToken).ConfigureAwait(false);
        if (got < buffer.Length)
            throw new BackupFormatException(_source, Position + got, $"stream ended inside {what} ({got} of {buffer.Length} bytes). The transfer was cut short; run the backup or download again.");
        Position += got;
    }

    /// <summary>Reads up to buffer.Length bytes; fewer only at end of stream.</summary>
    public async ValueTask<int> ReadToEndOrFullAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        int got = await _stream.ReadAtLeastAsync(buffer, buffer.Length, throwOnEndOfStream: false, cancellationToken).ConfigureAwait(false);
        Position += got;
        return got;
    }

    public async ValueTask SkipToAsync(long target, string what, CancellationToken cancellationToken)
    {
        if (target < Position)
            throw new BackupFormatException(_source, target, $"{what} lies before data already read (position {Position}); this VHD's layout cannot be read as a stream. Save it to a file and read it with VhdFile.");
        _skipBuffer ??= new byte[64 * 1024];
        while (Position < target)
        {
            int n = (int)Math.Min(_skipBuffer.Length, target - Position);
            await ReadExactlyAsync(_skipBuffer.AsMemory(0, n), $"the gap before {what}", cancellationToken).ConfigureAwait(false);
        }
    }
}
