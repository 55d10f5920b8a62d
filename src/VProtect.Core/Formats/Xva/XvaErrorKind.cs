namespace VProtect.Core.Formats.Xva;

/// <summary>
/// What kind of damage an XVA read ran into, so a caller (e.g. the simulator's PUT /import) can answer with the
/// XAPI error xapi itself would raise. Read it from a <see cref="BackupFormatException"/> with <see cref="XvaErrors.KindOf"/>.
/// </summary>
public enum XvaErrorKind
{
    /// <summary>Anything else that is malformed (xapi: <c>IMPORT_ERROR [msg]</c>).</summary>
    Malformed,
    /// <summary>The stream ends early (xapi: <c>IMPORT_ERROR_PREMATURE_EOF</c>).</summary>
    Truncated,
    /// <summary>A chunk's data does not match its checksum file (xapi: <c>IMPORT_ERROR_SOME_CHECKSUMS_FAILED</c>).</summary>
    ChecksumMismatch,
    /// <summary>A member is not the one the layout calls for (xapi: <c>IMPORT_ERROR_UNEXPECTED_FILE [expected, actual]</c>).</summary>
    UnexpectedMember,
    /// <summary>Data for an object ova.xml does not list (xapi: <c>IMPORT_ERROR_FAILED_TO_FIND_OBJECT [id]</c>).</summary>
    UnknownObject,
}

/// <summary>Reads the <see cref="XvaErrorKind"/> the XVA code attaches to the exceptions it throws.</summary>
public static class XvaErrors
{
    private const string Key = "VProtect.XvaErrorKind";

    /// <summary>The kind of an XVA format error; <see cref="XvaErrorKind.Malformed"/> when none was recorded.</summary>
    public static XvaErrorKind KindOf(BackupFormatException exception) =>
        exception.Data[Key] is XvaErrorKind kind ? kind : XvaErrorKind.Malformed;

    internal static BackupFormatException With(this BackupFormatException exception, XvaErrorKind kind)
    {
        exception.Data[Key] = kind;
        return exception;
    }

    private const string ExpectedKey = "VProtect.XvaExpectedMember", ActualKey = "VProtect.XvaActualMember";

    /// <summary>
    /// For an <see cref="XvaErrorKind.UnexpectedMember"/> error where one named member was due and another came (today:
    /// a tar whose first member is not ova.xml), the two names, as xapi's <c>IMPORT_ERROR_UNEXPECTED_FILE [expected, actual]</c> gives them.
    /// </summary>
    public static bool TryGetUnexpectedMember(BackupFormatException exception, out string expected, out string actual)
    {
        expected = exception.Data[ExpectedKey] as string ?? "";
        actual = exception.Data[ActualKey] as string ?? "";
        return exception.Data[ExpectedKey] is string && exception.Data[ActualKey] is string;
    }

    internal static BackupFormatException WithMembers(this BackupFormatException exception, string expected, string actual)
    {
        exception.Data[ExpectedKey] = expected;
        exception.Data[ActualKey] = actual;
        return exception;
    }
}
