using System.Buffers;
using System.Text;

namespace VProtect.Simulator.DataPlane.Http;

/// <summary>
/// Tar headers as ocaml-tar's HeaderWriter writes them at its default level V7 (research xapi.md §7): no "ustar"
/// magic, typeflag NUL, mode 0400, uid/gid 0. For the XVA chunk stream of /export_raw_vdi?format=tar.
/// </summary>
internal static class V7Tar
{
    public const int BlockSize = 512;

    public static byte[] Header(string name, long size, long mtime)
    {
        var h = new byte[BlockSize];
        var nameBytes = Encoding.ASCII.GetBytes(name);
        if (nameBytes.Length > 100) throw new ArgumentException($"Tar name '{name}' is longer than 100 bytes.", nameof(name));
        nameBytes.CopyTo(h, 0);
        Octal(h, 100, 8, 0x100); // mode 0400
        Octal(h, 108, 8, 0);
        Octal(h, 116, 8, 0);
        Octal(h, 124, 12, size);
        Octal(h, 136, 12, mtime);
        for (int i = 148; i < 156; i++) h[i] = (byte)' ';
        h[156] = 0; // typeflag NUL = regular file (V7)
        int sum = 0;
        foreach (var b in h) sum += b;
        var chk = Encoding.ASCII.GetBytes(Convert.ToString(sum, 8).PadLeft(6, '0'));
        chk.CopyTo(h, 148);
        h[154] = 0; h[155] = (byte)' ';
        return h;
    }

    private static void Octal(byte[] h, int offset, int width, long value)
    {
        var digits = Encoding.ASCII.GetBytes(Convert.ToString(value, 8).PadLeft(width - 1, '0'));
        digits.CopyTo(h, offset);
        h[offset + width - 1] = 0;
    }

    public static int Padding(long size) => (int)((BlockSize - size % BlockSize) % BlockSize);

    public static async Task WriteMemberAsync(Stream output, string name, ReadOnlyMemory<byte> data, long mtime, CancellationToken ct)
    {
        await output.WriteAsync(Header(name, data.Length, mtime), ct).ConfigureAwait(false);
        await output.WriteAsync(data, ct).ConfigureAwait(false);
        int pad = Padding(data.Length);
        if (pad > 0) await output.WriteAsync(new byte[pad], ct).ConfigureAwait(false);
    }

    public static Task WriteEndAsync(Stream output, CancellationToken ct) => output.WriteAsync(new byte[2 * BlockSize], ct).AsTask();
}
