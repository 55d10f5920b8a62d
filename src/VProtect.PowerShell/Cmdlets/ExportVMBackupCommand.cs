using System.Management.Automation;
using VProtect.Core.Formats;
using VProtect.Core.IO;
using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using VProtect.PowerShell.Infrastructure;
using VProtect.PowerShell.Lifecycle;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Export-VMBackup: writes a restore point as standalone disk images (raw or VHD) or, for an XVA full, the XVA.</summary>
[Cmdlet(VerbsData.Export, "VMBackup", SupportsShouldProcess = true)]
[OutputType(typeof(FileInfo))]
public sealed class ExportVMBackupCommand : VProtectCmdlet
{
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true)]
    [ValidateNotNull]
    public object Backup { get; set; } = null!;

    [Parameter(Mandatory = true, Position = 1)]
    [ValidateNotNullOrEmpty]
    public string Destination { get; set; } = "";

    [Parameter]
    public ExportFormat Format { get; set; } = ExportFormat.Raw;

    [Parameter]
    [ValidateNotNullOrEmpty]
    public string[]? Disk { get; set; }

    protected override void ProcessRecord()
    {
        VMBackup backup;
        try { backup = BackupResolver.Resolve(Backup); }
        catch (Exception ex) when (ex is ArgumentException or ItemNotFoundException or RepositoryException or BackupFormatException)
        {
            WriteError(BackupResolver.Error(ex, Backup));
            return;
        }
        string destination = GetUnresolvedProviderPathFromPSPath(Destination);
        if (!ShouldProcess(destination, $"Export {backup.VM} {backup.Id} as {Format}")) return;
        IReadOnlyList<ExportedFile>? files = null;
        bool ok = TryRunEngine(async (sink, ct) =>
        {
            var progress = new SinkProgress(sink, $"Exporting {backup.VM} {backup.Id}");
            files = await RestorePointExport.ExportAsync(backup.RepositoryOf(), backup.Manifest, destination, Format, Disk, progress, ct).ConfigureAwait(false);
            progress.Complete();
        }, backup);
        if (!ok || files is null) return;
        foreach (var f in files) WriteObject(new FileInfo(f.Path));
    }

    /// <summary>Progress from the engine, throttled by the sink.</summary>
    private sealed class SinkProgress(PipelineSink sink, string activity) : IProgress<TransferProgress>
    {
        private readonly ProgressRecord _record = new(0x4c1f, activity, "Writing");
        public void Report(TransferProgress value)
        {
            _record.PercentComplete = value.BytesTotal > 0 ? (int)Math.Min(100, value.BytesDone * 100 / value.BytesTotal) : -1;
            sink.WriteProgress(_record);
        }
        public void Complete()
        {
            _record.RecordType = ProgressRecordType.Completed;
            sink.WriteProgress(_record);
        }
    }
}
