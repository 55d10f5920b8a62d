using System.Management.Automation;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;
using VProtect.PowerShell.Backup;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>The disk of a VM and its CBT state, as Enable-XenCbt / Disable-XenCbt write it.</summary>
public sealed record XenCbtDisk(string VM, string Device, string VdiUuid, string VdiName, bool CbtEnabled);

/// <summary>Shared by Enable-XenCbt and Disable-XenCbt: VDI.enable_cbt / disable_cbt on every disk of the VMs.</summary>
public abstract class SetXenCbtCommandBase : VProtectCmdlet
{
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true)]
    [ValidateNotNullOrEmpty]
    public object[] VM { get; set; } = Array.Empty<object>();

    [Parameter]
    public object? Session { get; set; }

    protected abstract bool Enable { get; }

    protected override void ProcessRecord()
    {
        var session = SessionStore.Resolve(this, Session).Client;
        foreach (var target in VM)
        {
            if (!ShouldProcess(VmTarget.Describe(target), Enable ? "Enable changed block tracking on every disk" : "Disable changed block tracking on every disk")) continue;
            TryRunEngine(async (sink, ct) =>
            {
                var vmRef = await VmTarget.ResolveAsync(session, target, ct).ConfigureAwait(false);
                var vm = await session.GetRecordAsync<VmRecord>(vmRef, ct).ConfigureAwait(false);
                foreach (var vbdRef in vm.VBDs)
                {
                    var vbd = await session.GetRecordAsync<VbdRecord>(vbdRef, ct).ConfigureAwait(false);
                    if (vbd.Type != "Disk" || XapiValue.IsNullRef(vbd.VDI)) continue;
                    var vdi = await session.GetRecordAsync<VdiRecord>(vbd.VDI, ct).ConfigureAwait(false);
                    if (vdi.CbtEnabled != Enable)
                        await session.CallAsyncTaskAsync(Enable ? "VDI.enable_cbt" : "VDI.disable_cbt", new object?[] { vbd.VDI }, null, ct).ConfigureAwait(false);
                    sink.WriteObject(new XenCbtDisk(vm.NameLabel, string.IsNullOrEmpty(vbd.Device) ? vbd.UserDevice : vbd.Device, vdi.Uuid, vdi.NameLabel, Enable));
                }
            }, target);
        }
    }
}

/// <summary>Enable-XenCbt: turns on changed block tracking for every disk of the VMs.</summary>
[Cmdlet(VerbsLifecycle.Enable, "XenCbt", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Medium)]
[OutputType(typeof(XenCbtDisk))]
public sealed class EnableXenCbtCommand : SetXenCbtCommandBase
{
    protected override bool Enable => true;
}

/// <summary>Disable-XenCbt: turns off changed block tracking (do it before a storage migration).</summary>
[Cmdlet(VerbsLifecycle.Disable, "XenCbt", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Medium)]
[OutputType(typeof(XenCbtDisk))]
public sealed class DisableXenCbtCommand : SetXenCbtCommandBase
{
    protected override bool Enable => false;
}
