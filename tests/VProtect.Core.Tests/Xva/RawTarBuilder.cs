using System.Text;

namespace VProtect.Core.Tests.Xva;

/// <summary>
/// Builds tar bytes by hand, header field by header field, independently of XvaWriter and System.Formats.Tar,
/// so tests can produce exactly what xapi (V7), Xen Orchestra (ustar), GNU tar or a hostile writer would.
/// Header layout (POSIX.1-1988 / GNU): name[100] mode[8] uid[8] gid[8] size[12] mtime[12] chksum[8] typeflag[1]
/// linkname[100] magic[6] version[2] uname[32] gname[32] devmajor[8] devminor[8] prefix[155].
/// </summary>
public sealed class RawTarBuilder
{
    public enum Flavour { V7, Ustar, Gnu }

    private readonly MemoryStream _out = new();

    public long Length => _out.Length;

    /// <summary>Appends a member. <paramref name="declaredSize"/> overrides the size field (for lying headers).</summary>
    public RawTarBuilder Add(string name, ReadOnlySpan<byte> data, Flavour flavour = Flavour.V7, char type = '\0',
        long? declaredSize = null, string linkName = "", long mtime = 0, bool writeData = true, string prefix = "")
    {
        var h = new byte[512];
        Ascii(h, 0, 100, name);
        Octal(h, 100, 8, 0x100); // 0400, as xapi
        Octal(h, 108, 8, 0);
        Octal(h, 116, 8, 0);
        Octal(h, 124, 12, declaredSize ?? data.Length);
        Octal(h, 136, 12, mtime);
        h[156] = (byte)type;
        Ascii(h, 157, 100, linkName);
        if (flavour == Flavour.Ustar) { Ascii(h, 257, 6, "ustar\0"); Ascii(h, 263, 2, "00"); Ascii(h, 345, 155, prefix); }
        if (flavour == Flavour.Gnu) Ascii(h, 257, 8, "ustar  \0");
        // checksum: sum of all bytes with the checksum field taken as spaces; written as 6 octal digits, NUL, space
        for (int i = 148; i < 156; i++) h[i] = (byte)' ';
        int sum = h.Sum(b => b);
        Ascii(h, 148, 8, Convert.ToString(sum, 8).PadLeft(6, '0') + "\0 ");
        _out.Write(h);
        if (writeData)
        {
            _out.Write(data);
            int pad = (512 - data.Length % 512) % 512;
            _out.Write(new byte[pad]);
        }
        return this;
    }

    public RawTarBuilder AddText(string name, string text, Flavour flavour = Flavour.V7) =>
        Add(name, Encoding.UTF8.GetBytes(text), flavour);

    /// <summary>Appends raw bytes (for truncation or garbage).</summary>
    public RawTarBuilder Raw(ReadOnlySpan<byte> bytes) { _out.Write(bytes); return this; }

    /// <summary>The two zero blocks that end an archive.</summary>
    public RawTarBuilder End() { _out.Write(new byte[1024]); return this; }

    public byte[] ToArray() => _out.ToArray();

    private static void Ascii(byte[] h, int at, int len, string s)
    {
        var b = Encoding.UTF8.GetBytes(s);
        if (b.Length > len) throw new ArgumentException($"'{s}' does not fit a {len}-byte field");
        b.CopyTo(h, at);
    }

    private static void Octal(byte[] h, int at, int len, long v) =>
        Ascii(h, at, len, Convert.ToString(v, 8).PadLeft(len - 1, '0') + "\0");
}
