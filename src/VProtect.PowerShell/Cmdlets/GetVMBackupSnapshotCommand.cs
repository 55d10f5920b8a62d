using System.Management.Automation;
using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Get-VMBackupSnapshot: the snapshots this module keeps or left on the pool, with orphans marked.</summary>
[Cmdlet(VerbsCommon.Get, "VMBackupSnapshot")]
[OutputType(typeof(BackupSnapshot))]
public sealed class GetVMBackupSnapshotCommand : VProtectCmdlet
{
    [Parameter(Position = 0, ValueFromPipelineByPropertyName = true)]
    [Alias("Uuid", "Name")]
    [SupportsWildcards]
    public string[]? VM { get; set; }

    [Parameter]
    public SwitchParameter Orphaned { get; set; }

    /// <summary>With a repository, a kept snapshot whose backup is gone from it counts as orphaned.</summary>
    [Parameter]
    [ValidateNotNullOrEmpty]
    public string? Repository { get; set; }

    [Parameter]
    public object? Session { get; set; }

    private XenPoolSession? _session;
    private IReadOnlyList<BackupSnapshot>? _all;

    protected override void BeginProcessing() => _session = SessionStore.Resolve(this, Session);

    protected override void ProcessRecord()
    {
        var session = _session!;
        var repository = Repository is null ? null : BackupRepository.Open(GetUnresolvedProviderPathFromPSPath(Repository));
        _all ??= RunEngine((sink, ct) => BackupSnapshots.FindAsync(session.Client, null, repository, ct), session);
        foreach (var s in _all)
        {
            if (Orphaned && !s.IsOrphaned) continue;
            if (VM is { Length: > 0 } && !VM.Any(v =>
                {
                    var p = new WildcardPattern(v, WildcardOptions.IgnoreCase);
                    return p.IsMatch(s.VmUuid) || (s.VmName is not null && p.IsMatch(s.VmName));
                })) continue;
            WriteObject(s);
        }
    }
}
