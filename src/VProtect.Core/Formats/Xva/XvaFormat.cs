using System.Globalization;
using System.IO.Hashing;
using System.Security.Cryptography;

namespace VProtect.Core.Formats.Xva;

/// <summary>How each disk chunk's checksum file is written: <c>.xxhash</c> (xapi since CH 8.1) or legacy <c>.checksum</c>.</summary>
public enum XvaChecksumKind
{
    /// <summary>XXH64, seed 0, as 16 upper-case hex digits in <c>Ref:n/%08d.xxhash</c>.</summary>
    XxHash64,
    /// <summary>SHA-1 as 40 lower-case hex digits in <c>Ref:n/%08d.checksum</c>; needed for hosts older than CH 8.1.</summary>
    Sha1,
}

/// <summary>Whole-stream compression of an XVA, as xapi's <c>use_compression</c> export parameter produces.</summary>
public enum XvaCompression
{
    None,
    Gzip,
    Zstd,
}

/// <summary>Constants and naming rules of the XVA layout (facts: research/xapi.md §7).</summary>
public static class XvaFormat
{
    /// <summary>xapi's disk chunk size. Readers also refuse chunks larger than this.</summary>
    public const int ChunkSize = 1024 * 1024;

    /// <summary>The metadata entry, always first in the tar.</summary>
    public const string MetadataEntryName = "ova.xml";

    /// <summary>The export format version xapi writes today (inline checksums only, no trailing table).</summary>
    public const int CurrentExportVersion = 2;

    internal const string XxHashExtension = ".xxhash";
    internal const string Sha1Extension = ".checksum";

    /// <summary>Name of a chunk entry: <c>Ref:12/00000003</c>.</summary>
    public static string ChunkEntryName(string vdiId, long counter) =>
        vdiId + "/" + counter.ToString("D8", CultureInfo.InvariantCulture);

    /// <summary>Name of the checksum file that follows a chunk entry.</summary>
    public static string ChecksumEntryName(string chunkEntryName, XvaChecksumKind kind) =>
        chunkEntryName + (kind == XvaChecksumKind.XxHash64 ? XxHashExtension : Sha1Extension);

    /// <summary>The text of a checksum file for <paramref name="chunk"/>, exactly as xapi writes it (no newline).</summary>
    public static string FormatChecksum(ReadOnlySpan<byte> chunk, XvaChecksumKind kind) => kind switch
    {
        XvaChecksumKind.XxHash64 => XxHash64.HashToUInt64(chunk).ToString("X16", CultureInfo.InvariantCulture),
        _ => Convert.ToHexString(SHA1.HashData(chunk)).ToLowerInvariant(),
    };

    /// <summary>Length of the checksum text for <paramref name="kind"/>.</summary>
    public static int ChecksumTextLength(XvaChecksumKind kind) => kind == XvaChecksumKind.XxHash64 ? 16 : 40;

    /// <summary>
    /// Splits <c>Ref:n/%08d</c> into its VDI id and counter. Returns false for anything else
    /// (a checksum file, a directory, an unrelated file).
    /// </summary>
    internal static bool TryParseChunkName(string name, out string vdiId, out long counter)
    {
        vdiId = ""; counter = -1;
        int slash = name.IndexOf('/');
        if (slash <= 0 || slash != name.LastIndexOf('/')) return false;
        var digits = name.AsSpan(slash + 1);
        if (digits.Length < 8 || digits.Length > 18) return false;
        foreach (char c in digits) if (c is < '0' or > '9') return false;
        if (!IsExportId(name.AsSpan(0, slash))) return false;
        vdiId = name[..slash];
        counter = long.Parse(digits, NumberStyles.None, CultureInfo.InvariantCulture);
        return true;
    }

    /// <summary>True for an export id such as <c>Ref:42</c> (xapi) or <c>Ref:042</c> (Xen Orchestra).</summary>
    public static bool IsExportId(ReadOnlySpan<char> id)
    {
        if (!id.StartsWith("Ref:", StringComparison.Ordinal) || id.Length == 4 || id.Length > 40) return false;
        foreach (char c in id[4..]) if (c is < '0' or > '9') return false;
        return true;
    }
}
