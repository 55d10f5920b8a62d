using System.Buffers.Binary;

namespace VProtect.Core.Nbd;

/// <summary>Exact reads and big-endian framing shared by client and server.</summary>
internal static class NbdWire
{
    /// <summary>Reads exactly buffer.Length bytes; a clean or early end of stream is an <see cref="EndOfStreamException"/>.</summary>
    public static async ValueTask ReadExactAsync(Stream stream, Memory<byte> buffer, CancellationToken ct)
    {
        int done = 0;
        while (done < buffer.Length)
        {
            int n = await stream.ReadAsync(buffer[done..], ct).ConfigureAwait(false);
            if (n == 0) throw new EndOfStreamException($"The peer closed the connection after {done} of {buffer.Length} expected bytes.");
            done += n;
        }
    }

    /// <summary>Reads and discards <paramref name="count"/> bytes.</summary>
    public static async ValueTask SkipAsync(Stream stream, long count, CancellationToken ct)
    {
        var scratch = new byte[(int)Math.Min(count, 64 * 1024)];
        while (count > 0)
        {
            int n = (int)Math.Min(count, scratch.Length);
            await ReadExactAsync(stream, scratch.AsMemory(0, n), ct).ConfigureAwait(false);
            count -= n;
        }
    }

    public static byte[] Option(NbdOption option, ReadOnlySpan<byte> data)
    {
        var b = new byte[16 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(b, NbdProtocol.IHaveOpt);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), (uint)option);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), (uint)data.Length);
        data.CopyTo(b.AsSpan(16));
        return b;
    }

    public static byte[] OptionReply(uint option, NbdOptionReply reply, ReadOnlySpan<byte> data)
    {
        var b = new byte[20 + data.Length];
        BinaryPrimitives.WriteUInt64BigEndian(b, NbdProtocol.OptionReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(8), option);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(12), (uint)reply);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(16), (uint)data.Length);
        data.CopyTo(b.AsSpan(20));
        return b;
    }

    public static void WriteRequest(Span<byte> b, NbdCommandFlags flags, NbdCommand type, ulong cookie, long offset, uint length)
    {
        BinaryPrimitives.WriteUInt32BigEndian(b, NbdProtocol.RequestMagic);
        BinaryPrimitives.WriteUInt16BigEndian(b[4..], (ushort)flags);
        BinaryPrimitives.WriteUInt16BigEndian(b[6..], (ushort)type);
        BinaryPrimitives.WriteUInt64BigEndian(b[8..], cookie);
        BinaryPrimitives.WriteUInt64BigEndian(b[16..], (ulong)offset);
        BinaryPrimitives.WriteUInt32BigEndian(b[24..], length);
    }

    /// <summary>Name-prefixed data of INFO/GO and META_CONTEXT options: u32 length + UTF-8 name.</summary>
    public static void WriteString(List<byte> to, string s)
    {
        var bytes = System.Text.Encoding.UTF8.GetBytes(s);
        Span<byte> len = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(len, (uint)bytes.Length);
        to.AddRange(len.ToArray());
        to.AddRange(bytes);
    }

    public static void WriteU16(List<byte> to, ushort v) { to.Add((byte)(v >> 8)); to.Add((byte)v); }
    public static void WriteU32(List<byte> to, uint v) { to.Add((byte)(v >> 24)); to.Add((byte)(v >> 16)); to.Add((byte)(v >> 8)); to.Add((byte)v); }
}
