using System.Management.Automation;
using VProtect.Core.Formats;
using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using VProtect.PowerShell.Infrastructure;
using VProtect.PowerShell.Lifecycle;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Get-VMBackupChain: the chains of a repository (full, incrementals, sizes), one object per chain.</summary>
[Cmdlet(VerbsCommon.Get, "VMBackupChain")]
[OutputType(typeof(VMBackupChain))]
public sealed class GetVMBackupChainCommand : VProtectCmdlet
{
    [Parameter(Mandatory = true, Position = 0)]
    [ValidateNotNullOrEmpty]
    public string Repository { get; set; } = "";

    [Parameter(Position = 1, ValueFromPipelineByPropertyName = true)]
    [SupportsWildcards]
    [Alias("Name", "Uuid")]
    public string[]? VM { get; set; }

    protected override void ProcessRecord()
    {
        BackupRepository repository;
        try { repository = BackupRepository.Open(GetUnresolvedProviderPathFromPSPath(Repository)); }
        catch (Exception ex) when (ex is RepositoryException or BackupFormatException) { ThrowTerminatingError(BackupResolver.Error(ex, Repository)); return; }
        var problems = new List<BackupFormatException>();
        var chains = BackupChains.Get(repository, null, problems);
        foreach (var p in problems)
            WriteWarning($"Skipped an unreadable backup folder: {p.Message}");
        foreach (var chain in chains.Where(c => BackupResolver.Matches(c.RestorePoints[0], VM)))
        {
            if (chain.Problem is not null) WriteWarning($"Chain of {chain.VmName}: {chain.Problem}");
            WriteObject(new VMBackupChain(repository, chain));
        }
    }
}
