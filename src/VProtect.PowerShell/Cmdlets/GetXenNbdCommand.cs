using System.Management.Automation;
using VProtect.Core.Xapi.Records;
using VProtect.PowerShell.Backup;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Get-XenNbd: which pool networks serve NBD (purpose nbd or insecure_nbd).</summary>
[Cmdlet(VerbsCommon.Get, "XenNbd")]
[OutputType(typeof(XenNbdNetwork))]
public sealed class GetXenNbdCommand : VProtectCmdlet
{
    [Parameter]
    public object? Session { get; set; }

    protected override void ProcessRecord()
    {
        var session = SessionStore.Resolve(this, Session).Client;
        var networks = RunEngine(async (sink, ct) => await session.GetAllRecordsAsync<NetworkRecord>(ct).ConfigureAwait(false), session);
        foreach (var n in networks.OrderBy(n => n.NameLabel))
            WriteObject(NbdNetworks.Describe(n));
    }
}
