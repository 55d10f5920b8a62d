using System.Globalization;

namespace VProtect.Core.Xapi.Wire;

/// <summary>XAPI's datetime text: xapi writes <c>19700101T00:00:00Z</c>; the SDKs also accept dashed and fractional forms.</summary>
public static class XapiDateTime
{
    private static readonly string[] AcceptedFormats =
    {
        "yyyyMMdd'T'HH:mm:ss'Z'", "yyyyMMdd'T'HH:mm:ss", "yyyyMMdd'T'HH:mm:ss.FFFFFFF'Z'", "yyyyMMdd'T'HH:mm:sszzz",
        "yyyyMMdd'T'HHmmss'Z'", "yyyyMMdd'T'HHmmss",
        "yyyy-MM-dd'T'HH:mm:ss'Z'", "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd'T'HH:mm:ss.FFFFFFF'Z'",
        "yyyy-MM-dd'T'HH:mm:ss.FFFFFFF", "yyyy-MM-dd'T'HH:mm:sszzz", "yyyy-MM-dd'T'HH:mm:ss.FFFFFFFzzz",
    };

    /// <summary>Formats as xapi does (<c>yyyyMMddTHH:mm:ssZ</c>, UTC, whole seconds).</summary>
    public static string Format(DateTime value)
    {
        var utc = value.Kind == DateTimeKind.Local ? value.ToUniversalTime() : value;
        return utc.ToString("yyyyMMdd'T'HH:mm:ss'Z'", CultureInfo.InvariantCulture);
    }

    /// <summary>Parses any accepted form to a UTC <see cref="DateTime"/>; text without a zone is taken as UTC.</summary>
    public static bool TryParse(string text, out DateTime value)
    {
        if (DateTime.TryParseExact(text.Trim(), AcceptedFormats, CultureInfo.InvariantCulture,
                DateTimeStyles.AssumeUniversal | DateTimeStyles.AdjustToUniversal, out value))
        {
            value = DateTime.SpecifyKind(value, DateTimeKind.Utc);
            return true;
        }
        return false;
    }
}
