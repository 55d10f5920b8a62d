using System.Management.Automation;
using VProtect.Core.Repository;
using VProtect.Core.Restore;
using VProtect.Core.Restore.Cbt;
using VProtect.Core.Restore.Xva;
using VProtect.PowerShell.Backup;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Restore-VMBackup: brings a backup back as a VM (or only chosen disks as new VDIs).</summary>
[Cmdlet(VerbsData.Restore, "VMBackup", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.High, DefaultParameterSetName = ByObjectSet)]
[OutputType(typeof(VMRestoreResult))]
public sealed class RestoreVMBackupCommand : VProtectCmdlet
{
    private const string ByObjectSet = "ByObject";
    private const string ByIdSet = "ById";

    [Parameter(ParameterSetName = ByObjectSet, Mandatory = true, Position = 0, ValueFromPipeline = true)]
    [ValidateNotNull]
    public VMBackup? Backup { get; set; }

    [Parameter(ParameterSetName = ByIdSet, Mandatory = true)]
    [ValidateNotNullOrEmpty]
    public string Repository { get; set; } = "";

    [Parameter(ParameterSetName = ByIdSet, Mandatory = true)]
    [ValidateNotNullOrEmpty]
    public string Id { get; set; } = "";

    [Parameter(Position = 1)]
    [ValidateNotNullOrEmpty]
    public string? Name { get; set; }

    [Parameter]
    [ValidateNotNullOrEmpty]
    public string? SR { get; set; }

    [Parameter]
    [ValidateNotNullOrEmpty]
    public string[]? Disk { get; set; }

    [Parameter]
    public SwitchParameter PowerOn { get; set; }

    [Parameter]
    public object? Session { get; set; }

    private XenPoolSession? _session;

    protected override void BeginProcessing()
    {
        _session = SessionStore.Resolve(this, Session);
    }

    protected override void ProcessRecord()
    {
        BackupRepository repository;
        BackupManifest point;
        try
        {
            if (ParameterSetName == ByIdSet)
            {
                repository = BackupRepository.Open(SessionState.Path.GetUnresolvedProviderPathFromPSPath(Repository), create: false);
                point = repository.FindBackup(Id) ?? throw new ItemNotFoundException($"There is no backup {Id} in {repository.RootPath}. Run Get-VMBackup -Repository {Repository} to list them.");
            }
            else
            {
                repository = BackupRepository.Open(Backup!.RepositoryPath, create: false);
                point = repository.GetBackup(Backup.VmUuid, Backup.Id)
                        ?? throw new ItemNotFoundException($"The backup {Backup.Id} is no longer in {Backup.RepositoryPath}.");
            }
        }
        catch (Exception ex)
        {
            WriteError(ErrorMap.ToErrorRecord(ex, (object?)Backup ?? Id));
            return;
        }
        string what = Disk is null ? $"Restore VM '{Name ?? point.VmName}' from backup {point.Id}" : $"Restore disks {string.Join(", ", Disk)} of backup {point.Id} as new VDIs";
        if (!ShouldProcess(point.VmName, what)) return;
        var session = _session!.Client;
        var options = new RestoreOptions { Name = Name, StorageRepository = SR, Disks = Disk, PowerOn = PowerOn };
        var engine = new RestoreEngine(new CbtRestore(), new XvaRestore());
        TryRunEngine(async (sink, ct) =>
        {
            var result = await engine.RestoreAsync(session, repository, point, options, new ProgressObserver(sink, 0, "Restoring"), ct).ConfigureAwait(false);
            sink.WriteObject(new VMRestoreResult(point, result));
        }, point.Id);
    }
}
