using System.Management.Automation;
using VProtect.PowerShell.Backup;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Disable-XenNbd: stops serving NBD on a network (removes both NBD purposes).</summary>
[Cmdlet(VerbsLifecycle.Disable, "XenNbd", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Medium)]
[OutputType(typeof(XenNbdNetwork))]
public sealed class DisableXenNbdCommand : VProtectCmdlet
{
    [Parameter(Mandatory = true, Position = 0)]
    [ValidateNotNullOrEmpty]
    public string Network { get; set; } = "";

    [Parameter]
    public object? Session { get; set; }

    protected override void ProcessRecord()
    {
        var session = SessionStore.Resolve(this, Session).Client;
        var (netRef, record) = RunEngine((sink, ct) => NbdNetworks.ResolveAsync(session, Network, ct), Network);
        if (!ShouldProcess(record.NameLabel, "Stop serving NBD")) return;
        var result = RunEngine(async (sink, ct) =>
        {
            foreach (var p in record.Purpose.Where(p => p is "nbd" or "insecure_nbd").ToList())
                await session.CallAsync("network.remove_purpose", new object?[] { netRef, p }, ct).ConfigureAwait(false);
            return NbdNetworks.Describe(await session.GetRecordAsync<Core.Xapi.Records.NetworkRecord>(netRef, ct).ConfigureAwait(false));
        }, Network);
        WriteObject(result);
    }
}
