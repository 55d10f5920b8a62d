using System.Management.Automation;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Disconnect-XenPool: logs a session out and forgets it when it was the current one.</summary>
[Cmdlet(VerbsCommunications.Disconnect, "XenPool", SupportsShouldProcess = true)]
public sealed class DisconnectXenPoolCommand : VProtectCmdlet
{
    [Parameter(Position = 0, ValueFromPipeline = true)]
    public object? Session { get; set; }

    protected override void ProcessRecord()
    {
        var session = SessionStore.Resolve(this, Session);
        if (!ShouldProcess($"session of {session.UserName} on {session.Url}", "Log out")) return;
        RunEngine((_, ct) => session.Client.LogoutAsync(ct), session);
        var current = SessionStore.GetCurrent(this);
        if (current is not null && current.OpaqueRef == session.OpaqueRef && current.Url == session.Url)
            SessionStore.ClearCurrent(this);
        WriteVerbose($"Logged out of {session.Url}.");
    }
}
