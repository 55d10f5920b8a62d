using System.Management.Automation;
using VProtect.Core.Formats;
using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using VProtect.PowerShell.Infrastructure;
using VProtect.PowerShell.Lifecycle;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>
/// Remove-VMBackup: removes given backups, or applies retention (versions and days, fulls separately), chain-aware:
/// what kept restore points depend on is merged forward (CBT) or kept (XVA fulls).
/// </summary>
[Cmdlet(VerbsCommon.Remove, "VMBackup", DefaultParameterSetName = ByBackupSet, SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.High)]
[OutputType(typeof(RetentionAction))]
public sealed class RemoveVMBackupCommand : VProtectCmdlet
{
    private const string ByBackupSet = "ByBackup";
    private const string ByPolicySet = "ByPolicy";

    [Parameter(ParameterSetName = ByBackupSet, Mandatory = true, Position = 0, ValueFromPipeline = true)]
    [ValidateNotNull]
    public object[] Backup { get; set; } = Array.Empty<object>();

    [Parameter(ParameterSetName = ByPolicySet, Mandatory = true)]
    [ValidateNotNullOrEmpty]
    public string Repository { get; set; } = "";

    [Parameter(ParameterSetName = ByPolicySet, Mandatory = true, Position = 0)]
    [SupportsWildcards]
    [ValidateNotNullOrEmpty]
    public string[] VM { get; set; } = Array.Empty<string>();

    [Parameter(ParameterSetName = ByPolicySet)]
    [ValidateRange(1, int.MaxValue)]
    public int KeepLast { get; set; }

    [Parameter(ParameterSetName = ByPolicySet)]
    [ValidateRange(0, int.MaxValue)]
    public int KeepDays { get; set; }

    [Parameter(ParameterSetName = ByPolicySet)]
    [ValidateRange(1, int.MaxValue)]
    public int KeepFullLast { get; set; }

    [Parameter(ParameterSetName = ByPolicySet)]
    [ValidateRange(0, int.MaxValue)]
    public int KeepFullDays { get; set; }

    private readonly List<VMBackup> _given = new();

    protected override void ProcessRecord()
    {
        if (ParameterSetName != ByBackupSet) return;
        foreach (var item in Backup)
        {
            try { _given.Add(BackupResolver.Resolve(item)); }
            catch (Exception ex) when (ex is ArgumentException or ItemNotFoundException or RepositoryException or BackupFormatException)
            {
                WriteError(BackupResolver.Error(ex, item));
            }
        }
    }

    protected override void EndProcessing()
    {
        if (ParameterSetName == ByBackupSet)
        {
            foreach (var group in _given.GroupBy(b => (b.RepositoryPath, b.VmUuid)))
            {
                var repository = group.First().RepositoryOf();
                var ids = group.Select(b => b.Id).Distinct().ToList();
                Apply(repository, group.Key.VmUuid, group.First().VM, () => BackupRemover.PlanRemoval(repository, group.Key.VmUuid, ids));
            }
            return;
        }
        if (!MyInvocation.BoundParameters.Keys.Any(k => k.StartsWith("Keep", StringComparison.Ordinal)))
            ThrowTerminatingError(ErrorMap.Create(new ArgumentException("Give at least one of -KeepLast, -KeepDays, -KeepFullLast, -KeepFullDays."),
                new ErrorMapping(ErrorIds.InvalidArgument, ErrorCategory.InvalidArgument, null), null));
        var policy = new RetentionPolicy(
            Bound(nameof(KeepLast), KeepLast), Bound(nameof(KeepDays), KeepDays), Bound(nameof(KeepFullLast), KeepFullLast), Bound(nameof(KeepFullDays), KeepFullDays));
        BackupRepository repo;
        try { repo = BackupRepository.Open(GetUnresolvedProviderPathFromPSPath(Repository)); }
        catch (Exception ex) when (ex is RepositoryException or BackupFormatException) { ThrowTerminatingError(BackupResolver.Error(ex, Repository)); return; }
        var now = DateTimeOffset.UtcNow;
        foreach (var vm in repo.ListBackups().Where(b => BackupResolver.Matches(b, VM)).GroupBy(b => b.VmUuid))
            Apply(repo, vm.Key, vm.Last().VmName, () => BackupRemover.PlanRetention(repo, vm.Key, policy, now));
    }

    private int? Bound(string name, int value) => MyInvocation.BoundParameters.ContainsKey(name) ? value : null;

    private void Apply(BackupRepository repository, string vmUuid, string vmName, Func<IReadOnlyList<RetentionAction>> plan)
    {
        var preview = plan();
        if (preview.Count == 0)
        {
            WriteVerbose($"{vmName}: nothing to remove.");
            return;
        }
        bool all = true;
        foreach (var a in preview)
        {
            if (a.Kind == RetentionActionKind.Keep) { WriteWarning($"{vmName}: {a}"); continue; }
            all &= ShouldProcess($"{vmName} backup {a.Backup.Id} ({a.Backup.Type})", a.Kind == RetentionActionKind.Merge
                ? $"Merge {string.Join(", ", a.Absorbed.Select(x => x.Id))} into it ({a.Reason})"
                : $"Remove ({a.Reason})");
        }
        if (!all || preview.All(a => a.Kind == RetentionActionKind.Keep)) return;
        TryRunEngine(async (sink, ct) =>
        {
            await BackupRemover.ApplyAsync(repository, vmUuid, plan, TimeSpan.FromSeconds(30),
                a => { if (a.Kind != RetentionActionKind.Keep) { sink.WriteVerbose($"{vmName}: {a}"); sink.WriteObject(a); } }, null, ct).ConfigureAwait(false);
        }, vmName);
    }
}
