using System.Management.Automation;
using System.Net.Http;
using System.Net.Sockets;
using System.Security.Authentication;
using VProtect.Core.Formats;
using VProtect.Core.Xapi;

namespace VProtect.PowerShell.Infrastructure;

/// <summary>Stable ErrorIds; tests and scripts match FullyQualifiedErrorId against these, so never rename one.</summary>
public static class ErrorIds
{
    public const string NoXenPoolSession = "NoXenPoolSession";
    public const string InvalidXenPoolSession = "InvalidXenPoolSession";
    public const string XenPoolAuthenticationFailed = "XenPoolAuthenticationFailed";
    public const string XenPoolConnectionFailed = "XenPoolConnectionFailed";
    public const string XenPoolCertificateRejected = "XenPoolCertificateRejected";
    public const string XenPoolSessionExpired = "XenPoolSessionExpired";
    public const string XenPoolPermissionDenied = "XenPoolPermissionDenied";
    public const string XenObjectNotFound = "XenObjectNotFound";
    public const string XenApiError = "XenApiError";
    public const string XenObjectInWrongState = "XenObjectInWrongState";
    public const string XenFeatureUnavailable = "XenFeatureUnavailable";
    public const string XenStorageFull = "XenStorageFull";
    public const string XenTaskCancelled = "XenTaskCancelled";
    public const string BackupFormatInvalid = "BackupFormatInvalid";
    public const string OperationTimedOut = "OperationTimedOut";
    public const string IOFailed = "IOFailed";
    public const string AccessDenied = "AccessDenied";
    public const string InvalidArgument = "InvalidArgument";
    public const string IncrementalNotPossible = "IncrementalNotPossible";
    public const string SimulatorStartFailed = "SimulatorStartFailed";
    public const string SimulatorNotFound = "SimulatorNotFound";
    public const string UnexpectedError = "UnexpectedError";
}

/// <summary>A row of the error table: what the user sees besides the exception message.</summary>
public readonly record struct ErrorMapping(string ErrorId, ErrorCategory Category, string? RecommendedAction);

/// <summary>
/// The one table that turns engine exceptions into ErrorRecords. Cmdlets never build ErrorRecords for engine
/// failures themselves, so an exception type maps to the same ErrorId and category everywhere.
/// </summary>
public static class ErrorMap
{
    public static ErrorRecord ToErrorRecord(Exception exception, object? target)
    {
        var error = Unwrap(exception);
        var mapping = Classify(error);
        return Create(error, mapping, target);
    }

    public static ErrorRecord Create(Exception error, ErrorMapping mapping, object? target)
    {
        var record = new ErrorRecord(error, mapping.ErrorId, mapping.Category, target);
        if (mapping.RecommendedAction is not null)
            record.ErrorDetails = new ErrorDetails(error.Message) { RecommendedAction = mapping.RecommendedAction };
        return record;
    }

    /// <summary>The terminating error of every cmdlet that needs a session and has none.</summary>
    public static ErrorRecord NoSession() => Create(
        new InvalidOperationException("There is no XenServer pool session. Run Connect-XenPool first, or pass -Session."),
        new ErrorMapping(ErrorIds.NoXenPoolSession, ErrorCategory.InvalidOperation,
            "Run Connect-XenPool -Url <pool master URL> -Credential <credential>, or pass -Session."),
        null);

    public static ErrorMapping Classify(Exception error)
    {
        if (FindInChain<AuthenticationException>(error) is not null)
            return new(ErrorIds.XenPoolCertificateRejected, ErrorCategory.SecurityError,
                "Check the pool's TLS certificate; pass -CertificateThumbprint with its SHA-256 or SHA-1 thumbprint, or -SkipCertificateCheck for a lab.");
        var xapi = ClassifyXapi(error);
        if (xapi is not null) return xapi.Value;
        return error switch
        {
            BackupFormatException => new(ErrorIds.BackupFormatInvalid, ErrorCategory.InvalidData,
                "The backup file named in the message is damaged; restore from another backup or run a new full backup."),
            OperationCanceledException or TimeoutException => new(ErrorIds.OperationTimedOut, ErrorCategory.OperationTimeout,
                "The pool did not answer in time; check it is reachable and not overloaded, then retry."),
            HttpRequestException or SocketException => new(ErrorIds.XenPoolConnectionFailed, ErrorCategory.ConnectionError,
                "Check the URL, that the pool master is running and reachable, and any firewall in between."),
            UnauthorizedAccessException => new(ErrorIds.AccessDenied, ErrorCategory.PermissionDenied,
                "Check the file system permissions of the path in the message."),
            IOException when FindInChain<SocketException>(error) is not null => new(ErrorIds.XenPoolConnectionFailed, ErrorCategory.ConnectionError,
                "The connection to the pool broke; check the network and retry."),
            IOException => new(ErrorIds.IOFailed, ErrorCategory.WriteError,
                "Check free space and permissions of the path in the message, then retry."),
            ArgumentException => new(ErrorIds.InvalidArgument, ErrorCategory.InvalidArgument, null),
            VProtect.Core.Backup.IncrementalNotPossibleException => new(ErrorIds.IncrementalNotPossible, ErrorCategory.InvalidOperation,
                "Run a full backup (-Type Full), or drop -NoFallback to let the run fall back to a full with the reason recorded."),
            _ => new(ErrorIds.UnexpectedError, ErrorCategory.NotSpecified, null),
        };
    }

    /// <summary>XAPI errors by code; null when <paramref name="error"/> is not from the XAPI client.</summary>
    private static ErrorMapping? ClassifyXapi(Exception error) => error switch
    {
        XapiException x => x.ErrorCode switch
        {
            "SESSION_AUTHENTICATION_FAILED" => new(ErrorIds.XenPoolAuthenticationFailed, ErrorCategory.AuthenticationError,
                "Check the user name and password; for an Active Directory user, check that external authentication is enabled on the pool."),
            "SESSION_INVALID" => new(ErrorIds.XenPoolSessionExpired, ErrorCategory.AuthenticationError,
                "The session was logged out or expired; run Connect-XenPool again."),
            "SESSION_AUTHORIZATION_FAILED" or "PERMISSION_DENIED" or "RBAC_PERMISSION_DENIED" => new(ErrorIds.XenPoolPermissionDenied, ErrorCategory.PermissionDenied,
                "Connect as a user whose pool role allows this (pool-admin or vm-admin)."),
            "HANDLE_INVALID" or "UUID_INVALID" or "VDI_MISSING" => new(ErrorIds.XenObjectNotFound, ErrorCategory.ObjectNotFound,
                "The object no longer exists on the pool; list the current ones (Get-XenPoolVM) and retry."),
            "VM_BAD_POWER_STATE" or "OPERATION_NOT_ALLOWED" or "OTHER_OPERATION_IN_PROGRESS" or "VDI_IN_USE" or "VM_IS_TEMPLATE" or "VM_IS_SNAPSHOT"
                => new(ErrorIds.XenObjectInWrongState, ErrorCategory.InvalidOperation,
                "The object is busy or in the wrong state for this operation; wait for other operations to finish, or change its state, and retry."),
            "LICENCE_RESTRICTION" or "FEATURE_RESTRICTED" => new(ErrorIds.XenFeatureUnavailable, ErrorCategory.ResourceUnavailable,
                "The pool's licence or version does not offer this feature; use the XVA strategy or license the pool."),
            "SR_FULL" => new(ErrorIds.XenStorageFull, ErrorCategory.ResourceUnavailable,
                "Free space on the storage repository or choose another one."),
            "TASK_CANCELLED" => new(ErrorIds.XenTaskCancelled, ErrorCategory.OperationStopped, null),
            _ => new(ErrorIds.XenApiError, ErrorCategory.InvalidOperation,
                "See the XAPI error code and parameters in the message."),
        },
        XapiConnectionException c when c.HttpStatusCode == 401 => new(ErrorIds.XenPoolAuthenticationFailed, ErrorCategory.AuthenticationError,
            "Check the user name and password."),
        XapiConnectionException c when c.InnerException is OperationCanceledException or TimeoutException => new(ErrorIds.OperationTimedOut, ErrorCategory.OperationTimeout,
            "The pool did not answer in time; check it is reachable and not overloaded, then retry."),
        XapiConnectionException => new(ErrorIds.XenPoolConnectionFailed, ErrorCategory.ConnectionError,
            "Check the URL, that the pool master is running and reachable, and any firewall in between."),
        _ => null,
    };

    internal static Exception Unwrap(Exception exception)
    {
        var error = exception;
        while (error is AggregateException { InnerExceptions.Count: 1 } aggregate)
            error = aggregate.InnerExceptions[0];
        return error;
    }

    private static T? FindInChain<T>(Exception error) where T : Exception
    {
        for (Exception? e = error; e is not null; e = e.InnerException)
            if (e is T match) return match;
        return null;
    }
}
