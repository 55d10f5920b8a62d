using System.Management.Automation;
using VProtect.Core.Backup;
using VProtect.Core.Backup.Cbt;
using VProtect.Core.Backup.Xva;
using VProtect.Core.Repository;
using VProtect.PowerShell.Backup;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Start-VMBackup: backs up VMs into a repository (CBT or XVA strategy, full or incremental), several at once.</summary>
[Cmdlet(VerbsLifecycle.Start, "VMBackup", SupportsShouldProcess = true, ConfirmImpact = ConfirmImpact.Medium)]
[OutputType(typeof(VMBackup))]
public sealed class StartVMBackupCommand : VProtectCmdlet
{
    [Parameter(Mandatory = true, Position = 0, ValueFromPipeline = true)]
    [ValidateNotNullOrEmpty]
    public object[] VM { get; set; } = Array.Empty<object>();

    [Parameter(Mandatory = true)]
    [ValidateNotNullOrEmpty]
    public string Repository { get; set; } = "";

    [Parameter]
    public BackupStrategy Strategy { get; set; } = BackupStrategy.Cbt;

    [Parameter]
    public BackupType Type { get; set; } = BackupType.Full;

    [Parameter]
    [ValidateNotNullOrEmpty]
    public string[] ExcludeDisk { get; set; } = Array.Empty<string>();

    [Parameter]
    public SwitchParameter Quiesce { get; set; }

    [Parameter]
    public ScriptBlock? PreSnapshotScript { get; set; }

    [Parameter]
    public ScriptBlock? PostSnapshotScript { get; set; }

    [Parameter]
    public SwitchParameter KeepSnapshot { get; set; } = true;

    [Parameter]
    public SwitchParameter PurgeSnapshotData { get; set; }

    [Parameter]
    public SwitchParameter NoFallback { get; set; }

    /// <summary>XVA strategy: ask the host to compress the export with zstd (use_compression=zstd).</summary>
    [Parameter]
    public SwitchParameter UseCompression { get; set; }

    [Parameter]
    [ValidateRange(1, 64)]
    public int ThrottleLimit { get; set; } = 4;

    [Parameter]
    public object? Session { get; set; }

    private XenPoolSession? _session;
    private readonly List<object> _targets = new();

    protected override void BeginProcessing()
    {
        _session = SessionStore.Resolve(this, Session);
        if (ExcludeDisk.Length > 0 && Strategy == BackupStrategy.Xva)
            ThrowTerminatingError(ErrorMap.Create(new ArgumentException("The XVA strategy exports the whole VM; -ExcludeDisk needs -Strategy Cbt."),
                new ErrorMapping(ErrorIds.InvalidArgument, ErrorCategory.InvalidArgument, "Use -Strategy Cbt to leave disks out."), ExcludeDisk));
        if (PurgeSnapshotData && !KeepSnapshot)
            ThrowTerminatingError(ErrorMap.Create(new ArgumentException("-PurgeSnapshotData applies to the kept snapshot; it cannot be used with -KeepSnapshot:$false."),
                new ErrorMapping(ErrorIds.InvalidArgument, ErrorCategory.InvalidArgument, null), null));
    }

    protected override void ProcessRecord()
    {
        foreach (var vm in VM)
        {
            if (ShouldProcess(VmTarget.Describe(vm), $"{Type} {Strategy} backup to {Repository}"))
                _targets.Add(vm);
        }
    }

    protected override void EndProcessing()
    {
        if (_targets.Count == 0) return;
        var path = SessionState.Path.GetUnresolvedProviderPathFromPSPath(Repository);
        BackupRepository repository;
        try { repository = BackupRepository.Open(path, create: true); }
        catch (Exception ex) { ThrowEngineError(ex, Repository); return; }
        var session = _session!.Client;
        var engine = new BackupEngine(
new CbtStrategy(), new XvaStrategy());
        var targets = _targets.ToList();
        RunEngine(async (sink, ct) =>
        {
            using var throttle = new SemaphoreSlim(ThrottleLimit);
            var runs = targets.Select(async (target, index) =>
            {
                await throttle.WaitAsync(ct).ConfigureAwait(false);
                try
                {
                    var observer = new ProgressObserver(sink, index, "Backing up");
                    var options = BuildOptions(sink);
                    var vmRef = await VmTarget.ResolveAsync(session, target, ct).ConfigureAwait(false);
                    var result = await engine.RunAsync(session, repository, vmRef, options, observer, ct).ConfigureAwait(false);
                    var backup = VMBackup.From(repository, result.Backup);
                    backup.Duration = result.Duration;
                    sink.WriteObject(backup);
                }
                catch (Exception ex) when (!(ex is OperationCanceledException && ct.IsCancellationRequested))
                {
                    // One VM failing does not stop the others.
                    sink.WriteError(ErrorMap.ToErrorRecord(ex, target));
                }
                finally
                {
                    throttle.Release();
                }
            }).ToList();
            await Task.WhenAll(runs).ConfigureAwait(false);
        }, Repository);
    }

    private BackupOptions BuildOptions(PipelineSink sink) => new()
    {
        Strategy = Strategy,
        Type = Type,
        ExcludeDisks = ExcludeDisk,
        Quiesce = Quiesce,
        KeepSnapshot = KeepSnapshot,
        PurgeSnapshotData = PurgeSnapshotData,
        NoFallback = NoFallback,
        UseCompression = UseCompression,
        PreSnapshot = ScriptCallback(sink, PreSnapshotScript),
        PostSnapshot = ScriptCallback(sink, PostSnapshotScript),
    };

    /// <summary>Runs the script block on the pipeline thread with $_ set to the context; its failure fails the callback.</summary>
    private static Func<SnapshotScriptContext, CancellationToken, Task>? ScriptCallback(PipelineSink sink, ScriptBlock? script)
    {
        if (script is null) return null;
        return (context, ct) => sink.InvokeAsync(_ =>
            script.InvokeWithContext(null, new List<PSVariable> { new("_", context), new("PSItem", context) }, context));
    }
}
