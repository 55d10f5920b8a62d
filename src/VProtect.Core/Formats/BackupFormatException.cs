namespace VProtect.Core.Formats;

/// <summary>
/// A disk image, archive or repository file is malformed. Always names the file or stream and the byte
/// offset where the problem was found, so a user can tell which backup is damaged and where.
/// </summary>
public sealed class BackupFormatException : Exception
{
    public BackupFormatException(string source, long offset, string message, Exception? inner = null)
        : base($"{source} at offset {offset}: {message}", inner)
    {
        Source = source;
        Offset = offset;
        Reason = message;
    }

    /// <summary>The file path or stream name.</summary>
    public new string Source { get; }
    public long Offset { get; }
    public string Reason { get; }
}
