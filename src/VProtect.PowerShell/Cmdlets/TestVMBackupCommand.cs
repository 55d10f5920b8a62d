using System.Management.Automation;
using VProtect.Core.Formats;
using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using VProtect.PowerShell.Infrastructure;
using VProtect.PowerShell.Lifecycle;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>
/// Test-VMBackup: checks restore points without the hypervisor (every block hash, every file checksum, XVA chunk
/// checksums, VHD structure, chain completeness, metadata) and writes one result per restore point.
/// </summary>
[Cmdlet(VerbsDiagnostic.Test, "VMBackup", DefaultParameterSetName = ByBackupSet)]
[OutputType(typeof(VMBackupTestResult))]
public sealed class TestVMBackupCommand : VProtectCmdlet
{
    private const string ByBackupSet = "ByBackup";
    private const string ByRepositorySet = "ByRepository";

    [Parameter(ParameterSetName = ByBackupSet, Mandatory = true, Position = 0, ValueFromPipeline = true)]
    [ValidateNotNull]
    public object[] Backup { get; set; } = Array.Empty<object>();

    [Parameter(ParameterSetName = ByRepositorySet, Mandatory = true)]
    [ValidateNotNullOrEmpty]
    public string Repository { get; set; } = "";

    [Parameter(ParameterSetName = ByRepositorySet, Position = 0)]
    [SupportsWildcards]
    public string[]? VM { get; set; }

    /// <summary>Only the newest restore point of each chain (with everything it depends on).</summary>
    [Parameter(ParameterSetName = ByRepositorySet)]
    public SwitchParameter Latest { get; set; }

    /// <summary>Also restore each point into the pool as a new VM, compare every disk, and remove the VM (the health check).</summary>
    [Parameter]
    public SwitchParameter Restore { get; set; }

    [Parameter]
    public object? Session { get; set; }

    private readonly Dictionary<string, BackupVerifier> _verifiers = new(StringComparer.Ordinal);
    private XenPoolSession? _session;

    protected override void BeginProcessing()
    {
        if (Restore) _session = SessionStore.Resolve(this, Session);
    }

    protected override void ProcessRecord()
    {
        var backups = new List<VMBackup>();
        if (ParameterSetName == ByRepositorySet)
        {
            BackupRepository repository;
            try { repository = BackupRepository.Open(GetUnresolvedProviderPathFromPSPath(Repository)); }
            catch (Exception ex) when (ex is RepositoryException or BackupFormatException) { ThrowTerminatingError(BackupResolver.Error(ex, Repository)); return; }
            var problems = new List<BackupFormatException>();
            var all = repository.ListBackups(null, problems).Where(b => BackupResolver.Matches(b, VM)).ToList();
            foreach (var p in problems) WriteWarning($"An unreadable backup folder: {p.Message}");
            if (Latest) all = BackupChains.Get(repository).Where(c => BackupResolver.Matches(c.Newest, VM)).Select(c => c.Newest).ToList();
            backups.AddRange(all.Select(b => VMBackup.From(repository, b)));
        }
        else
        {
            foreach (var item in Backup)
            {
                try { backups.Add(BackupResolver.Resolve(item)); }
                catch (Exception ex) when (ex is ArgumentException or ItemNotFoundException or RepositoryException or BackupFormatException)
                {
                    WriteError(BackupResolver.Error(ex, item));
                }
            }
        }
        foreach (var backup in backups)
        {
            if (!_verifiers.TryGetValue(backup.RepositoryPath, out var verifier))
                _verifiers[backup.RepositoryPath] = verifier = new BackupVerifier(backup.RepositoryOf());
            VMBackupTestResult? result = null;
            bool ok = TryRunEngine(async (sink, ct) =>
            {
                var verification = await verifier.VerifyAsync(backup.Manifest, ct).ConfigureAwait(false);
                result = new VMBackupTestResult(backup, verification);
                if (Restore && verification.Status == VerificationStatus.Healthy)
                {
                    var problems = await TestRestore.RunAsync(_session!.Client, backup.RepositoryOf(), backup.Manifest, new SinkObserver(sink), ct).ConfigureAwait(false);
                    result.RestoreProblems.AddRange(problems);
                    result.Restored = problems.Count == 0;
                }
                else if (Restore) result.Restored = false;
            }, backup);
            if (!ok || result is null) continue;
            foreach (var problem in result.Problems)
                WriteWarning($"{backup.VM} {backup.Id}: {problem}");
            WriteVerbose($"{backup.VM} {backup.Id}: {result.Status}, {result.BlocksChecked} blocks, {result.BytesChecked} bytes checked in {result.Duration.TotalSeconds:N1} s.");
            WriteObject(result);
        }
    }
}

/// <summary>Engine messages to the pipeline.</summary>
internal sealed class SinkObserver(PipelineSink sink) : Core.Backup.IBackupObserver
{
    public void OnProgress(Core.Backup.BackupProgress progress) { }
    public void OnWarning(string message) => sink.WriteWarning(message);
    public void OnVerbose(string message) => sink.WriteVerbose(message);
}
