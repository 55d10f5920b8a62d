using System.Management.Automation;
using VProtect.Core.Formats;
using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using VProtect.PowerShell.Infrastructure;
using VProtect.PowerShell.Lifecycle;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Mount-VMBackup: serves a restore point's disks (CBT chain, or XVA plus VHD delta) read-only over NBD on loopback.</summary>
[Cmdlet(VerbsData.Mount, "VMBackup", DefaultParameterSetName = TcpSet)]
[OutputType(typeof(VMBackupMount))]
public sealed class MountVMBackupCommand : VProtectCmdlet
{
    private const string TcpSet = "Tcp";
    private const string UnixSet = "Unix";

    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true)]
    [ValidateNotNull]
    public object Backup { get; set; } = null!;

    [Parameter]
    [ValidateNotNullOrEmpty]
    public string[]? Disk { get; set; }

    [Parameter(ParameterSetName = TcpSet)]
    [ValidateRange(0, 65535)]
    public int Port { get; set; }

    [Parameter(ParameterSetName = UnixSet, Mandatory = true)]
    [ValidateNotNullOrEmpty]
    public string UnixSocket { get; set; } = "";

    protected override void ProcessRecord()
    {
        VMBackup backup;
        string? socket;
        try
        {
            backup = BackupResolver.Resolve(Backup);
            socket = ParameterSetName == UnixSet ? GetUnresolvedProviderPathFromPSPath(UnixSocket) : null;
        }
        catch (Exception ex) when (ex is ArgumentException or ItemNotFoundException or RepositoryException or BackupFormatException)
        {
            WriteError(BackupResolver.Error(ex, Backup));
            return;
        }
        // Opening an XVA-strategy point reads its XVA once (to index it): run it as engine work so Ctrl+C cancels it.
        BackupMount? mount = null;
        Exception? failure = null;
        bool ok = TryRunEngine(async (sink, ct) =>
        {
            if (backup.Manifest.Strategy == BackupStrategy.Xva)
                sink.WriteVerbose($"Indexing the XVA of {backup.VM} {backup.Id} (one pass over the file, every chunk checksum checked).");
            try { mount = await BackupMount.StartAsync(backup.RepositoryOf(), backup.Manifest, Disk, Port, socket, null, ct).ConfigureAwait(false); }
            catch (Exception ex) when (ex is ArgumentException or RepositoryException or BackupFormatException or IOException or System.Net.Sockets.SocketException) { failure = ex; }
        }, backup);
        if (failure is not null)
        {
            WriteError(BackupResolver.Error(failure, Backup));
            return;
        }
        if (!ok || mount is null) return;
        var m = MountRegistry.Add(backup, mount);
        WriteVerbose($"Serving {backup.VM} {backup.Id} at {string.Join(", ", m.Uris.Values)} until Dismount-VMBackup -Id {m.Id}.");
        WriteObject(m);
    }
}
