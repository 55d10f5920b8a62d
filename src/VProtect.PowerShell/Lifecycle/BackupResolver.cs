using System.Management.Automation;
using VProtect.Core.Repository;

namespace VProtect.PowerShell.Lifecycle;

/// <summary>Turns what -Backup was given (our VMBackup, or any object with a repository path and an id) into backups.</summary>
internal static class BackupResolver
{
    public const string RepositoryError = "BackupRepositoryError";
    public const string BackupNotFound = "VMBackupNotFound";

    /// <summary>The repository a backup object lives in (VMBackup carries its path).</summary>
    public static BackupRepository RepositoryOf(this VMBackup backup) => BackupRepository.Open(backup.RepositoryPath);

    public static VMBackup Resolve(object input)
    {
        object value = input is PSObject p ? p.BaseObject : input;
        if (value is VMBackup backup) return backup;
        var pso = PSObject.AsPSObject(input);
        string? repositoryPath = (pso.Properties["RepositoryPath"]?.Value ?? pso.Properties["Repository"]?.Value) switch
        {
            string s => s,
            BackupRepository r => r.RootPath,
            { } o => o.ToString(),
            null => null,
        };
        string? id = (pso.Properties["BackupId"]?.Value ?? pso.Properties["Id"]?.Value)?.ToString();
        if (string.IsNullOrEmpty(repositoryPath) || string.IsNullOrEmpty(id))
            throw new ArgumentException($"'{input}' is not a backup: pass objects from Get-VMBackupChain (RestorePoints) or Start-VMBackup, or use -Repository with -VM.");
        var repository = BackupRepository.Open(repositoryPath);
        var manifest = repository.FindBackup(id) ?? throw new ItemNotFoundException($"Backup {id} is not in the repository {repository.RootPath} (any more). Run Get-VMBackupChain -Repository '{repository.RootPath}' to list what is there.");
        return VMBackup.From(repository, manifest);
    }

    /// <summary>The backups of the VMs named (names or uuids, wildcards allowed) or of every VM.</summary>
    public static IReadOnlyList<BackupManifest> Select(BackupRepository repository, string[]? vm) =>
        repository.ListBackups().Where(b => Matches(b, vm)).ToList();

    public static bool Matches(BackupManifest b, string[]? vm) =>
        vm is null || vm.Length == 0 || vm.Any(v =>
        {
            var pattern = new WildcardPattern(v, WildcardOptions.IgnoreCase);
            return pattern.IsMatch(b.VmName) || pattern.IsMatch(b.VmUuid);
        });

    public static ErrorRecord Error(Exception error, object? target) => error switch
    {
        ItemNotFoundException => Infrastructure.ErrorMap.Create(error, new(BackupNotFound, ErrorCategory.ObjectNotFound, "Run Get-VMBackupChain -Repository <path> to list the backups."), target),
        RepositoryLockedException => Infrastructure.ErrorMap.Create(error, new(RepositoryError, ErrorCategory.ResourceBusy, "Another run is using this VM's chain; retry when it has finished."), target),
        RepositoryException => Infrastructure.ErrorMap.Create(error, new(RepositoryError, ErrorCategory.InvalidOperation, null), target),
        _ => Infrastructure.ErrorMap.ToErrorRecord(error, target),
    };
}
