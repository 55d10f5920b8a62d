using System.Management.Automation;
using VProtect.Core.Lifecycle;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>
/// Remove-VMBackupSnapshot: destroys snapshots this module created (the snapshot VM and its disks, or the
/// metadata-only VDIs -PurgeSnapshotData kept). Refuses anything not tagged by this module. Removing the kept snapshot makes the next backup of that VM a full.
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
            string target = s.Kind == BackupSnapshots.KindCbtMetadata
                ? $"metadata-only disk(s) {string.Join(", ", s.VdiUuids)} of backup {s.BackupId} of {s.VmName ?? s.VmUuid}"
                : $"snapshot {s.Name} ({s.Uuid}) of {s.VmName ?? s.VmUuid}";
            if (!ShouldProcess(target, $"Remove ({what})")) continue;
            TryRunEngine(async (sink, ct) =>
            {
                int removed = await BackupSnapshots.RemoveAsync(session.Client, s, ct).ConfigureAwait(false);
                sink.WriteVerbose(removed == 0 ? $"{target} is already gone." : $"Removed {target}.");
            }, s);
        }
    }
}
