using System.Collections.Concurrent;
using System.Management.Automation;

namespace VProtect.PowerShell.Infrastructure;

/// <summary>
/// What engine work running on a worker task may write. Every call is queued and replayed on the pipeline
/// thread by <see cref="VProtectCmdlet"/>, because PowerShell only accepts Write* calls from that thread.
/// Safe to call from any thread.
/// </summary>
public sealed class PipelineSink
{
    /// <summary>Processing records of one activity closer together than this are dropped (the host redraws ~200 ms).</summary>
    internal static readonly TimeSpan ProgressInterval = TimeSpan.FromMilliseconds(250);

    /// <summary>Writes waiting for the pipeline thread; a producer faster than the pipeline blocks (bounded memory).</summary>
    internal const int Capacity = 1024;

    private readonly BlockingCollection<Action<Cmdlet>> _queue = new(Capacity);
    private readonly Dictionary<int, ProgressState> _activities = new();
    private readonly Func<DateTime> _clock;
    private readonly CancellationToken _cancellation;

    /// <param name="cancellation">Releases a producer blocked on a full queue when the cmdlet is stopped.</param>
    internal PipelineSink(CancellationToken cancellation, Func<DateTime>? clock = null)
    {
        _cancellation = cancellation;
        _clock = clock ?? (() => DateTime.UtcNow);
    }

    public void WriteObject(object? value) => Enqueue(c => c.WriteObject(value));
    public void WriteVerbose(string message) => Enqueue(c => c.WriteVerbose(message));
    public void WriteWarning(string message) => Enqueue(c => c.WriteWarning(message));
    public void WriteDebug(string message) => Enqueue(c => c.WriteDebug(message));
    /// <summary>A non-terminating error: the cmdlet goes on with its next item.</summary>
    public void WriteError(ErrorRecord record) => Enqueue(c => c.WriteError(record));

    /// <summary>
    /// Runs <paramref name="action"/> on the pipeline thread (script blocks must run there) and completes when it
    /// has run; its exception faults the task.
    /// </summary>
    public Task InvokeAsync(Action<Cmdlet> action)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        Enqueue(c =>
        {
            try { action(c); done.TrySetResult(); }
            catch (Exception ex) { done.TrySetException(ex); }
        });
        if (_queue.IsAddingCompleted) done.TrySetCanceled();
        return done.Task;
    }

    /// <summary>
    /// Throttled per activity: the first record, every Completed record and records at least
    /// <see cref="ProgressInterval"/> after the previous one pass; the rest are dropped.
    /// </summary>
    public void WriteProgress(ProgressRecord record)
    {
        lock (_activities)
        {
            var now = _clock();
            if (record.RecordType == ProgressRecordType.Completed)
            {
                _activities.Remove(record.ActivityId);
            }
            else
            {
                if (_activities.TryGetValue(record.ActivityId, out var state) && now - state.LastWritten < ProgressInterval)
                    return;
                _activities[record.ActivityId] = new ProgressState(record.Activity, record.ParentActivityId, now);
            }
        }
        Enqueue(c => c.WriteProgress(record));
    }

    /// <summary>Completed records for every activity that was started and not completed (children first).</summary>
    internal IReadOnlyList<ProgressRecord> TakeOpenActivities()
    {
        lock (_activities)
        {
            var open = _activities
                .OrderByDescending(a => a.Value.ParentActivityId >= 0 ? 1 : 0)
                .Select(a => new ProgressRecord(a.Key, a.Value.Activity, "Done")
                {
                    ParentActivityId = a.Value.ParentActivityId,
                    RecordType = ProgressRecordType.Completed,
                })
                .ToList();
            _activities.Clear();
            return open;
        }
    }

    internal void Complete() => _queue.CompleteAdding();

    internal IEnumerable<Action<Cmdlet>> Drain() => _queue.GetConsumingEnumerable();

    private void Enqueue(Action<Cmdlet> write)
    {
        // After the work has ended nothing is pumped any more; a late write from a stray callback is dropped.
        try { _queue.Add(write, _cancellation); }
        catch (InvalidOperationException) when (_queue.IsAddingCompleted) { }
    }

    private readonly record struct ProgressState(string Activity, int ParentActivityId, DateTime LastWritten);
}
