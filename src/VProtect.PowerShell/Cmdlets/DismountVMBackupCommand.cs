using System.Management.Automation;
using VProtect.PowerShell.Lifecycle;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Dismount-VMBackup: stops serving mounts made by Mount-VMBackup (all of them with -All).</summary>
[Cmdlet(VerbsData.Dismount, "VMBackup", DefaultParameterSetName = ByMountSet)]
public sealed class DismountVMBackupCommand : PSCmdlet
{
    private const string ByMountSet = "ByMount";
    private const string AllSet = "All";

    [Parameter(ParameterSetName = ByMountSet, Mandatory = true, Position = 0, ValueFromPipeline = true)]
    [ValidateNotNull]
    public VMBackupMount[] Mount { get; set; } = Array.Empty<VMBackupMount>();

    [Parameter(ParameterSetName = AllSet, Mandatory = true)]
    public SwitchParameter All { get; set; }

    protected override void ProcessRecord()
    {
        var mounts = All ? MountRegistry.All : Mount;
        foreach (var m in mounts)
        {
            if (MountRegistry.RemoveAsync(m.Id).GetAwaiter().GetResult())
                WriteVerbose($"Stopped serving {m.VM} {m.BackupId} ({m.Uri}).");
            else
                WriteWarning($"Mount {m.Id} ({m.Uri}) was already dismounted.");
        }
    }
}
