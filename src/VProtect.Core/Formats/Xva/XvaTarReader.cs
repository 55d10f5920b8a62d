using System.Buffers;
using System.Text;

namespace VProtect.Core.Formats.Xva;

/// <summary>What kind of tar member a header describes, reduced to what an XVA can contain.</summary>
internal enum TarMemberKind
{
    File,
    Directory,
    Link,
    Other,
}

/// <summary>One tar member header: the name after GNU long-name and pax overrides, its size and where it starts.</summary>
internal readonly record struct TarMemberHeader(string Name, long Size, TarMemberKind Kind, char TypeFlag, long HeaderOffset, long DataOffset);

/// <summary>
/// A forward-only tar reader for XVA streams: V7, ustar, GNU (long names) and pax headers.
/// Not System.Formats.Tar's TarReader because that one allocates GNU long-name and pax records of whatever
/// size a header declares and cannot say at which byte offset a member starts; both matter for hostile
/// or damaged backups. Long names and pax records here are capped at <see cref="MaxMetadataRecord"/>.
/// </summary>
internal sealed class XvaTarReader
{
    private const int BlockSize = 512;
    internal const int MaxMetadataRecord = 64 * 1024;

    private readonly Stream _stream;
    private readonly string _source;
    private readonly byte[] _header = new byte[BlockSize];
    private long _position;
    private long _dataRemaining;
    private int _paddingRemaining;

    public XvaTarReader(Stream stream, string source)
    {
        _stream = stream;
        _source = source;
    }

    /// <summary>Bytes of the (decompressed) tar consumed so far.</summary>
    public long Position => _position;

    public string Source => _source;

    public BackupFormatException Error(long offset, string message, Exception? inner = null, XvaErrorKind kind = XvaErrorKind.Malformed) =>
        new BackupFormatException(_source, offset, message, inner).With(kind);

    /// <summary>The next member, or null at the end-of-archive marker (or a clean end of stream at a block boundary).</summary>
    public async ValueTask<TarMemberHeader?> NextAsync(CancellationToken cancellationToken)
    {
        await SkipRestOfMemberAsync(cancellationToken).ConfigureAwait(false);
        string? longName = null;
        string? paxPath = null;
        long? paxSize = null;
        while (true)
        {
            long headerOffset = _position;
            int got = await ReadUpToAsync(_header, cancellationToken).ConfigureAwait(false);
            if (got == 0)
            {
                if (longName is not null || paxPath is not null || paxSize is not null)
                    throw Error(headerOffset, "The stream ends after a long-name or pax header, without the member it describes. The backup is truncated; take a new one.", kind: XvaErrorKind.Truncated);
                // xapi always writes the two zero blocks; a stream that just stops is truncated.
                throw Error(headerOffset, "The tar stream ends without its end-of-archive marker. The backup is truncated (an interrupted download?); take a new one.", kind: XvaErrorKind.Truncated);
            }
            if (got < BlockSize)
                throw Error(headerOffset, $"The stream ends inside a tar header ({got} of {BlockSize} bytes). The backup is truncated; take a new one.", kind: XvaErrorKind.Truncated);
            if (Array.TrueForAll(_header, b => b == 0))
            {
                // End of archive: consume the second zero block when it is there, so Position covers the whole tar.
                await ReadUpToAsync(_header, cancellationToken).ConfigureAwait(false);
                return null;
            }

            VerifyHeaderChecksum(headerOffset);
            long size = ParseNumber(_header.AsSpan(124, 12), headerOffset, "size");
            char type = (char)_header[156];
            bool ustar = _header.AsSpan(257, 5).SequenceEqual("ustar"u8);
            bool gnu = _header.AsSpan(257, 8).SequenceEqual("ustar  \0"u8);
            string name = ReadCString(_header.AsSpan(0, 100));
            if (ustar && !gnu)
            {
                string prefix = ReadCString(_header.AsSpan(345, 155));
                if (prefix.Length > 0) name = prefix + "/" + name;
            }

            switch (type)
            {
                case 'L': // GNU long name for the next member
                    longName = TrimNul(await ReadMetadataRecordAsync(size, headerOffset, "GNU long name", cancellationToken).ConfigureAwait(false));
                    continue;
                case 'K': // GNU long link name: only links use it, and links are refused below
                    await ReadMetadataRecordAsync(size, headerOffset, "GNU long link name", cancellationToken).ConfigureAwait(false);
                    continue;
                case 'x': // pax extended header for the next member
                    ParsePax(await ReadMetadataRecordAsync(size, headerOffset, "pax header", cancellationToken).ConfigureAwait(false),
                        headerOffset, ref paxPath, ref paxSize);
                    continue;
                case 'g': // pax global header: nothing in it matters for an XVA
                    await ReadMetadataRecordAsync(size, headerOffset, "pax global header", cancellationToken).ConfigureAwait(false);
                    continue;
            }

            if (paxSize is not null) size = paxSize.Value;
            name = paxPath ?? longName ?? name;
            var kind = type switch
            {
                '\0' or '0' or '7' => name.EndsWith('/') ? TarMemberKind.Directory : TarMemberKind.File,
                '5' => TarMemberKind.Directory,
                '1' or '2' => TarMemberKind.Link,
                _ => TarMemberKind.Other,
            };
            // Directories and links carry no data even if a header claims otherwise.
            if (kind is TarMemberKind.Directory or TarMemberKind.Link) size = 0;
            _dataRemaining = size;
            _paddingRemaining = (int)((BlockSize - size % BlockSize) % BlockSize);
            return new TarMemberHeader(name, size, kind, type, headerOffset, _position);
        }
    }

    /// <summary>Reads exactly the current member's data (which must fit <paramref name="buffer"/>).</summary>
    public async ValueTask ReadDataAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        if (buffer.Length != _dataRemaining) throw new InvalidOperationException("Read the whole member at once.");
        long start = _position;
        int got = await ReadUpToAsync(buffer, cancellationToken).ConfigureAwait(false);
        if (got < buffer.Length)
            throw Error(start + got, $"The stream ends inside a tar member ({got} of {buffer.Length} bytes). The backup is truncated; take a new one.", kind: XvaErrorKind.Truncated);
        _dataRemaining = 0;
    }

    /// <summary>Skips whatever is left of the current member and its padding.</summary>
    public async ValueTask SkipRestOfMemberAsync(CancellationToken cancellationToken)
    {
        long toSkip = _dataRemaining + _paddingRemaining;
        if (toSkip == 0) return;
        var scratch = ArrayPool<byte>.Shared.Rent((int)Math.Min(toSkip, 64 * 1024));
        try
        {
            while (toSkip > 0)
            {
                int want = (int)Math.Min(toSkip, scratch.Length);
                int got = await ReadUpToAsync(scratch.AsMemory(0, want), cancellationToken).ConfigureAwait(false);
                if (got < want)
                    throw Error(_position, "The stream ends inside a tar member or its padding. The backup is truncated; take a new one.", kind: XvaErrorKind.Truncated);
                toSkip -= got;
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
        _dataRemaining = 0;
        _paddingRemaining = 0;
    }

    private async ValueTask<byte[]> ReadMetadataRecordAsync(long size, long headerOffset, string what, CancellationToken cancellationToken)
    {
        if (size > MaxMetadataRecord)
            throw Error(headerOffset, $"A {what} declares {size} bytes; more than {MaxMetadataRecord} is not a real XVA. The file is damaged or not an XVA.");
        var data = new byte[size];
        _dataRemaining = size;
        _paddingRemaining = (int)((BlockSize - size % BlockSize) % BlockSize);
        await ReadDataAsync(data, cancellationToken).ConfigureAwait(false);
        await SkipRestOfMemberAsync(cancellationToken).ConfigureAwait(false);
        return data;
    }

    private void ParsePax(byte[] record, long headerOffset, ref string? path, ref long? size)
    {
        // Records are "<len> <key>=<value>\n", where len counts the whole record.
        int pos = 0;
        while (pos < record.Length)
        {
            int space = Array.IndexOf(record, (byte)' ', pos);
            if (space < 0 || !int.TryParse(Encoding.ASCII.GetString(record, pos, space - pos), out int len) || len <= space - pos || pos + len > record.Length)
                throw Error(headerOffset, "A pax header record is malformed. The file is damaged or not an XVA.");
            string kv = Encoding.UTF8.GetString(record, space + 1, pos + len - space - 1).TrimEnd('\n');
            int eq = kv.IndexOf('=');
            if (eq > 0)
            {
                string key = kv[..eq], value = kv[(eq + 1)..];
                if (key == "path") path = value;
                else if (key == "size")
                {
                    if (!long.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long s))
                        throw Error(headerOffset, $"A pax size '{value}' is not a number. The file is damaged or not an XVA.");
                    size = s;
                }
            }
            pos += len;
        }
    }

    private void VerifyHeaderChecksum(long headerOffset)
    {
        long stored;
        try { stored = ParseNumber(_header.AsSpan(148, 8), headerOffset, "checksum"); }
        catch (BackupFormatException) { throw Error(headerOffset, "This is not a tar header (its checksum field is not a number). The file is damaged or not an XVA."); }
        long unsigned = 0, signed = 0;
        for (int i = 0; i < BlockSize; i++)
        {
            byte b = i is >= 148 and < 156 ? (byte)' ' : _header[i];
            unsigned += b;
            signed += (sbyte)b;
        }
        if (stored != unsigned && stored != signed)
            throw Error(headerOffset, $"Tar header checksum mismatch (stored {stored}, computed {unsigned}). The file is damaged or not an XVA.");
    }

    private long ParseNumber(ReadOnlySpan<byte> field, long headerOffset, string what)
    {
        if ((field[0] & 0x80) != 0)
        {
            // GNU base-256: big-endian two's complement in the remaining bits.
            if ((field[0] & 0x40) != 0) throw Error(headerOffset, $"Tar {what} is negative. The file is damaged.");
            long v = field[0] & 0x3F;
            for (int i = 1; i < field.Length; i++)
            {
                if (v > (long.MaxValue >> 8)) throw Error(headerOffset, $"Tar {what} overflows. The file is damaged.");
                v = (v << 8) | field[i];
            }
            return v;
        }
        long value = 0;
        bool any = false;
        foreach (byte b in field)
        {
            if (b is (byte)' ' or 0) { if (any) break; continue; }
            if (b is < (byte)'0' or > (byte)'7') throw Error(headerOffset, $"Tar {what} field is not octal. The file is damaged or not an XVA.");
            if (value > (long.MaxValue >> 3)) throw Error(headerOffset, $"Tar {what} overflows. The file is damaged.");
            value = value * 8 + (b - '0');
            any = true;
        }
        return value;
    }

    private async ValueTask<int> ReadUpToAsync(Memory<byte> buffer, CancellationToken cancellationToken)
    {
        int total = 0;
        try
        {
            while (total < buffer.Length)
            {
                int n = await _stream.ReadAsync(buffer[total..], cancellationToken).ConfigureAwait(false);
                if (n == 0) break;
                total += n;
            }
        }
        catch (EndOfStreamException ex)
        {
            // zstd's decoder reports a frame cut short this way.
            throw Error(_position + total, "The compressed stream ends early. The backup is truncated (an interrupted download?); take a new one.", ex, XvaErrorKind.Truncated);
        }
        catch (Exception ex) when (ex is InvalidDataException or ZstdSharp.ZstdException)
        {
            throw Error(_position + total, "The compressed stream is corrupt: " + ex.Message + " The backup is damaged; take a new one.", ex);
        }
        _position += total;
        return total;
    }

    private static string ReadCString(ReadOnlySpan<byte> field)
    {
        int nul = field.IndexOf((byte)0);
        return Encoding.UTF8.GetString(nul < 0 ? field : field[..nul]);
    }

    private static string TrimNul(byte[] data) => ReadCString(data);
}
