using System.Management.Automation;
using VProtect.Core.Formats;
using VProtect.Core.Repository;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Get-VMBackup: the committed backups of a repository, optionally of some VMs or by id. Reads only the repository.</summary>
[Cmdlet(VerbsCommon.Get, "VMBackup")]
[OutputType(typeof(VMBackup))]
public sealed class GetVMBackupCommand : VProtectCmdlet
{
    [Parameter(Mandatory = true, Position = 0)]
    [ValidateNotNullOrEmpty]
    public string Repository { get; set; } = "";

    /// <summary>VM names (wildcards) or uuids.</summary>
    [Parameter(Position = 1, ValueFromPipelineByPropertyName = true)]
    [Alias("Name")]
    [SupportsWildcards]
    [ValidateNotNullOrEmpty]
    public string[]? VM { get; set; }

    [Parameter]
    [ValidateNotNullOrEmpty]
    public string[]? Id { get; set; }

    private BackupRepository? _repository;

    protected override void BeginProcessing()
    {
        var path = SessionState.Path.GetUnresolvedProviderPathFromPSPath(Repository);
        try { _repository = BackupRepository.Open(path, create: false); }
        catch (Exception ex) { ThrowEngineError(ex, Repository); }
    }

    protected override void ProcessRecord()
    {
        var problems = new List<BackupFormatException>();
        var all = _repository!.ListBackups(null, problems);
        foreach (var p in problems) WriteWarning(p.Message);
        IEnumerable<BackupManifest> selected = all;
        if (VM is not null)
        {
            var patterns = VM.Select(v => new WildcardPattern(v, WildcardOptions.IgnoreCase)).ToList();
            selected = selected.Where(b => patterns.Any(p => p.IsMatch(b.VmName) || p.IsMatch(b.VmUuid)));
        }
        if (Id is not null)
        {
            var ids = new HashSet<string>(Id, StringComparer.OrdinalIgnoreCase);
            selected = selected.Where(b => ids.Contains(b.Id));
            foreach (var missing in Id.Where(i => !all.Any(b => string.Equals(b.Id, i, StringComparison.OrdinalIgnoreCase))))
                WriteError(ErrorMap.Create(new ItemNotFoundException($"There is no backup {missing} in {_repository.RootPath}."),
                    new ErrorMapping(ErrorIds.XenObjectNotFound, ErrorCategory.ObjectNotFound, "Run Get-VMBackup -Repository <path> to list the backups."), missing));
        }
        foreach (var b in selected.OrderBy(b => b.VmName).ThenBy(b => b.CreatedUtc))
            WriteObject(VMBackup.From(_repository, b));
    }
}
