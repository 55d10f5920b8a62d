using System.Collections.Concurrent;
using System.Management.Automation;
using VProtect.Core.Backup;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Backup;

/// <summary>
/// Turns engine progress into progress records: one activity per VM (its stage), a child per disk with bytes, rate
/// and time left. Warnings and verbose text go to the pipeline through the sink.
/// </summary>
internal sealed class ProgressObserver : IBackupObserver
{
    private readonly PipelineSink _sink;
    private readonly int _vmActivity;
    private readonly string _verb;
    private readonly ConcurrentDictionary<string, DiskState> _disks = new();

    public ProgressObserver(PipelineSink sink, int vmIndex, string verb)
    {
        _sink = sink;
        _vmActivity = 1 + vmIndex * 100;
        _verb = verb;
    }

    public void OnProgress(BackupProgress p)
    {
        if (p.Disk is null)
        {
            _sink.WriteProgress(new ProgressRecord(_vmActivity, $"{_verb} {p.VmName}", p.Stage));
            return;
        }
        var state = _disks.GetOrAdd(p.Disk, _ => new DiskState(_vmActivity + 1 + _disks.Count, DateTime.UtcNow));
        var record = new ProgressRecord(state.ActivityId, $"{_verb} {p.VmName} disk {p.Disk}", Describe(p, state))
        {
            ParentActivityId = _vmActivity,
        };
        if (p.BytesTotal > 0)
        {
            record.PercentComplete = (int)Math.Clamp(100 * p.BytesDone / p.BytesTotal, 0, 100);
            var elapsed = (DateTime.UtcNow - state.Started).TotalSeconds;
            if (p.BytesDone > 0 && elapsed > 0.5)
                record.SecondsRemaining = (int)Math.Min(int.MaxValue, (p.BytesTotal - p.BytesDone) / (p.BytesDone / elapsed));
        }
        if (p.BytesTotal > 0 && p.BytesDone >= p.BytesTotal) record.RecordType = ProgressRecordType.Completed;
        _sink.WriteProgress(record);
    }

    private static string Describe(BackupProgress p, DiskState state)
    {
        var elapsed = Math.Max(0.001, (DateTime.UtcNow - state.Started).TotalSeconds);
        return $"{p.Stage}: {Size(p.BytesDone)} of {Size(p.BytesTotal)} at {Size((long)(p.BytesDone / elapsed))}/s";
    }

    internal static string Size(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):0.##} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):0.#} MiB",
        >= 1L << 10 => $"{bytes / 1024.0:0.#} KiB",
        _ => $"{bytes} B",
    };

    public void OnWarning(string message) => _sink.WriteWarning(message);
    public void OnVerbose(string message) => _sink.WriteVerbose(message);

    private sealed record DiskState(int ActivityId, DateTime Started);
}
