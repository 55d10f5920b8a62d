namespace VProtect.Core.Xapi;

/// <summary>
/// XAPI answered a call with a failure: <see cref="ErrorCode"/> is the code (e.g. <c>VM_BAD_POWER_STATE</c>) and
/// <see cref="ErrorParameters"/> the parameters that follow it in the error description.
/// </summary>
public class XapiException : Exception
{
    public XapiException(IReadOnlyList<string> errorDescription, string? method = null)
        : base(BuildMessage(errorDescription, method))
    {
        ErrorCode = errorDescription.Count > 0 ? errorDescription[0] : "UNKNOWN_ERROR";
        ErrorParameters = errorDescription.Skip(1).ToArray();
        Method = method;
    }

    public string ErrorCode { get; }
    public IReadOnlyList<string> ErrorParameters { get; }

    /// <summary>The XAPI method that failed, when known.</summary>
    public string? Method { get; }

    /// <summary>The full error description (code followed by parameters), as XAPI sent it.</summary>
    public IReadOnlyList<string> ErrorDescription => new[] { ErrorCode }.Concat(ErrorParameters).ToArray();

    private static string BuildMessage(IReadOnlyList<string> description, string? method)
    {
        var code = description.Count > 0 ? description[0] : "UNKNOWN_ERROR";
        var parameters = description.Count > 1 ? " [" + string.Join(", ", description.Skip(1)) + "]" : "";
        var where = method is null ? "XAPI" : $"XAPI call {method}";
        var hint = code switch
        {
            "SESSION_AUTHENTICATION_FAILED" => " Check the user name and password.",
            "SESSION_INVALID" => " The session expired or was logged out; connect again.",
            "HOST_IS_SLAVE" => " Connect to the pool master instead.",
            "VM_BAD_POWER_STATE" => " Change the VM's power state (or work on a snapshot) and retry.",
            "MESSAGE_PARAMETER_COUNT_MISMATCH" => " The host's API version does not match this call.",
            "MESSAGE_METHOD_UNKNOWN" => " The host does not support this call; it may be too old.",
            "RBAC_PERMISSION_DENIED" or "PERMISSION_DENIED" => " Use an account with a role allowed to do this (e.g. VM admin or pool admin).",
            "LICENCE_RESTRICTION" => " The pool's licence does not include this feature.",
            "TASK_CANCELLED" => " The operation was cancelled.",
            "SR_FULL" => " Free space on the storage repository or choose another one.",
            _ => "",
        };
        return $"{where} failed: {code}{parameters}.{hint}";
    }
}

/// <summary>
/// The host could not be reached or did not answer as XAPI does: connection refused, DNS, TLS, timeout, an HTTP error status
/// or an unreadable body. The message names the URL.
/// </summary>
public sealed class XapiConnectionException : Exception
{
    public XapiConnectionException(string message, Uri? url, Exception? innerException = null, int? httpStatusCode = null)
        : base(message, innerException)
    {
        Url = url;
        HttpStatusCode = httpStatusCode;
    }

    public Uri? Url { get; }

    /// <summary>The HTTP status when the host answered with an unexpected one.</summary>
    public int? HttpStatusCode { get; }
}
