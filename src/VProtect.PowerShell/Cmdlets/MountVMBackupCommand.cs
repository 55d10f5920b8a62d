using System.Management.Automation;
using VProtect.Core.Formats;
using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using VProtect.PowerShell.Lifecycle;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Mount-VMBackup: serves a restore point's disks read-only over NBD on loopback.</summary>
[Cmdlet(VerbsData.Mount, "VMBackup", DefaultParameterSetName = TcpSet)]
[OutputType(typeof(VMBackupMount))]
public sealed class MountVMBackupCommand : PSCmdlet
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
        try
        {
            var backup = BackupResolver.Resolve(Backup);
            string? socket = ParameterSetName == UnixSet ? GetUnresolvedProviderPathFromPSPath(UnixSocket) : null;
            var mount = BackupMount.Start(backup.RepositoryOf(), backup.Manifest, Disk, Port, socket);
            var m = MountRegistry.Add(backup, mount);
            WriteVerbose($"Serving {backup.VM} {backup.Id} at {string.Join(", ", m.Uris.Values)} until Dismount-VMBackup -Id {m.Id}.");
            WriteObject(m);
        }
        catch (Exception ex) when (ex is ArgumentException or ItemNotFoundException or RepositoryException or BackupFormatException or IOException or System.Net.Sockets.SocketException)
        {
            WriteError(BackupResolver.Error(ex, Backup));
        }
    }
}
