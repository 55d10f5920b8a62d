using System.Management.Automation;
using VProtect.Core.Backup;
using VProtect.Core.Lifecycle;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>
/// Remove-VMBackupSnapshot: destroys snapshots this module created (the snapshot VM and its disks). Refuses
/// anything not tagged by this module. Removing the kept snapshot makes the next backup of that VM a full.
/// </summary>
[Cmdlet(VerbsCommon.Remove, "VMBackupSnapshot", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.High)]
public sealed class RemoveVMBackupSnapshotCommand : VProtectCmdlet
{
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true)]
    [ValidateNotNull]
    public BackupSnapshot[] Snapshot { get; set; } = Array.Empty<BackupSnapshot>();

    [Parameter]
    public object? Session { get; set; }

    private XenPoolSession? _session;

    protected override void BeginProcessing() => _session = SessionStore.Resolve(this, Session);

    protected override void ProcessRecord()
    {
        var session = _session!;
        foreach (var s in Snapshot)
        {
            string what = s.IsOrphaned ? $"orphaned: {s.OrphanReason}" : "kept for the next incremental; the next backup will be a full";
            if (!ShouldProcess($"snapshot {s.Name} ({s.Uuid}) of {s.VmName ?? s.VmUuid}", $"Remove ({what})")) continue;
            TryRunEngine(async (sink, ct) =>
            {
                var current = await BackupSnapshots.FindAsync(session.Client, null, null, ct).ConfigureAwait(false);
                var match = current.FirstOrDefault(c => c.Uuid == s.Uuid);
                if (match is null)
                {
                    sink.WriteVerbose($"Snapshot {s.Uuid} is already gone.");
                    return;
                }
                await SnapshotService.DestroyAsync(session.Client, match.OpaqueRef, ct).ConfigureAwait(false);
                sink.WriteVerbose($"Removed snapshot {s.Uuid} of {s.VmName ?? s.VmUuid}.");
            }, s);
        }
    }
}
