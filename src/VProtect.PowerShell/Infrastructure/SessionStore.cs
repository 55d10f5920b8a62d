using System.Management.Automation;
using VProtect.Core.Xapi;

namespace VProtect.PowerShell.Infrastructure;

/// <summary>
/// The current session lives in the runspace's global scope (not a static), so runspaces and thread jobs never
/// share a session by accident.
/// </summary>
internal static class SessionStore
{
    /// <summary>Name of the global variable holding the current session (documented in about_VProtect).</summary>
    public const string VariableName = "VProtectXenPoolSession";
    private const string GlobalName = "global:" + VariableName;

    public static XenPoolSession? GetCurrent(PSCmdlet cmdlet) =>
        Unwrap(cmdlet.SessionState.PSVariable.GetValue(GlobalName)) as XenPoolSession;

    public static void SetCurrent(PSCmdlet cmdlet, XenPoolSession session) =>
        cmdlet.SessionState.PSVariable.Set(GlobalName, session);

    public static void ClearCurrent(PSCmdlet cmdlet) =>
        cmdlet.SessionState.PSVariable.Remove(GlobalName);

    /// <summary>
    /// -Session, or the current session when it is null. Accepts our session object or any object with
    /// opaque_ref and Url properties (a XenServerPSModule session). No session is a terminating NoXenPoolSession.
    /// </summary>
    public static XenPoolSession Resolve(PSCmdlet cmdlet, object? given)
    {
        if (given is null)
        {
            var current = GetCurrent(cmdlet);
            if (current is null) cmdlet.ThrowTerminatingError(ErrorMap.NoSession());
            return current!;
        }
        var value = Unwrap(given);
        if (value is XenPoolSession ours) return ours;
        var foreign = PSObject.AsPSObject(given);
        var opaqueRef = foreign.Properties["opaque_ref"]?.Value?.ToString();
        var url = foreign.Properties["Url"]?.Value?.ToString();
        if (string.IsNullOrWhiteSpace(opaqueRef) || string.IsNullOrWhiteSpace(url) || !Uri.TryCreate(url, UriKind.Absolute, out var uri))
        {
            cmdlet.ThrowTerminatingError(ErrorMap.Create(
                new ArgumentException($"-Session must be a session from Connect-XenPool or an object with opaque_ref and an absolute Url; got {value?.GetType().FullName ?? "null"}."),
                new ErrorMapping(ErrorIds.InvalidXenPoolSession, ErrorCategory.InvalidArgument,
                    "Pass the object Connect-XenPool -PassThru wrote, or a XenServerPSModule session."),
                given));
            return null!;
        }
        var options = new XapiConnectionOptions();
        var user = foreign.Properties["UserName"]?.Value?.ToString() ?? foreign.Properties["Username"]?.Value?.ToString() ?? "";
        return new XenPoolSession(XapiSession.FromExisting(uri!, opaqueRef!, options), options, user, ownsLogin: false);
    }

    private static object? Unwrap(object? value) => value is PSObject pso ? pso.BaseObject : value;
}
