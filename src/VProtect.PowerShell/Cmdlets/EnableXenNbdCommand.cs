using System.Management.Automation;
using VProtect.Core.Xapi;
using VProtect.PowerShell.Backup;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Enable-XenNbd: lets the hosts serve VDIs over NBD on a network (purpose nbd, or insecure_nbd with -Insecure).</summary>
[Cmdlet(VerbsLifecycle.Enable, "XenNbd", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Medium)]
[OutputType(typeof(XenNbdNetwork))]
public sealed class EnableXenNbdCommand : VProtectCmdlet
{
    [Parameter(Mandatory = true, Position = 0)]
    [ValidateNotNullOrEmpty]
    public string Network { get; set; } = "";

    [Parameter]
    public SwitchParameter Insecure { get; set; }

    [Parameter]
    public object? Session { get; set; }

    protected override void ProcessRecord()
    {
        var session = SessionStore.Resolve(this, Session).Client;
        string purpose = Insecure ? "insecure_nbd" : "nbd";
        var (netRef, record) = RunEngine((sink, ct) => NbdNetworks.ResolveAsync(session, Network, ct), Network);
        if (!ShouldProcess(record.NameLabel, $"Serve NBD ({purpose})")) return;
        var result = RunEngine(async (sink, ct) =>
        {
            string other = Insecure ? "nbd" : "insecure_nbd";
            if (record.Purpose.Contains(other))
                await session.CallAsync("network.remove_purpose", new object?[] { netRef, other }, ct).ConfigureAwait(false);
            if (!record.Purpose.Contains(purpose))
            {
                try { await session.CallAsync("network.add_purpose", new object?[] { netRef, purpose }, ct).ConfigureAwait(false); }
                catch (XapiException ex) when (ex.ErrorCode == "NETWORK_INCOMPATIBLE_PURPOSES")
                {
                    throw new InvalidOperationException($"The pool refuses {purpose} on '{record.NameLabel}' (NETWORK_INCOMPATIBLE_PURPOSES {string.Join(" ", ex.ErrorParameters)}): "
                        + "a pool serves NBD either with TLS (nbd) or without (insecure_nbd), never both. Run Disable-XenNbd on the networks Get-XenNbd shows with the other purpose, then retry.", ex);
                }
            }
            return NbdNetworks.Describe(await session.GetRecordAsync<Core.Xapi.Records.NetworkRecord>(netRef, ct).ConfigureAwait(false));
        }, Network);
        WriteObject(result);
    }
}
