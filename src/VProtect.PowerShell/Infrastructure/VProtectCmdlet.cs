using System.Management.Automation;

namespace VProtect.PowerShell.Infrastructure;

/// <summary>
/// Base of every VProtect cmdlet: runs asynchronous engine work on a worker task while the pipeline thread
/// pumps what it writes, turns Ctrl+C (StopProcessing) into cancellation, and engine exceptions into
/// ErrorRecords through <see cref="ErrorMap"/>.
/// </summary>
public abstract class VProtectCmdlet : PSCmdlet
{
    private readonly CancellationTokenSource _stop = new();

    /// <summary>Cancelled when the user presses Ctrl+C or the pipeline is stopped.</summary>
    protected CancellationToken StopToken => _stop.Token;

    protected override void StopProcessing() => _stop.Cancel();

    /// <summary>
    /// Runs <paramref name="work"/> on a worker task and replays its writes here, on the pipeline thread,
    /// until it ends. Its exception is rethrown as a terminating ErrorRecord (or PipelineStoppedException
    /// after Ctrl+C); <paramref name="target"/> becomes the ErrorRecord's target object.
    /// </summary>
    protected void RunEngine(Func<PipelineSink, CancellationToken, Task> work, object? target = null)
        => RunEngine<object?>(async (sink, ct) => { await work(sink, ct).ConfigureAwait(false); return null; }, target);

    /// <inheritdoc cref="RunEngine(Func{PipelineSink, CancellationToken, Task}, object?)"/>
    /// <param name="failure">When given, every failure but cancellation maps to this instead of the error table.</param>
    protected T RunEngine<T>(Func<PipelineSink, CancellationToken, Task<T>> work, object? target = null, ErrorMapping? failure = null)
    {
        var outcome = RunEngineCore(work);
        if (outcome.Error is not null)
        {
            if (failure is not null && !IsStop(outcome.Error))
                ThrowTerminatingError(ErrorMap.Create(ErrorMap.Unwrap(outcome.Error), failure.Value, target));
            ThrowEngineError(outcome.Error, target);
        }
        return outcome.Value!;
    }

    /// <summary>
    /// Like <see cref="RunEngine{T}"/> but a failure is written as a non-terminating error and false is
    /// returned, so a cmdlet working through many items can go on with the next one.
    /// </summary>
    protected bool TryRunEngine(Func<PipelineSink, CancellationToken, Task> work, object? target = null)
    {
        var outcome = RunEngineCore<object?>(async (sink, ct) => { await work(sink, ct).ConfigureAwait(false); return null; });
        if (outcome.Error is null) return true;
        if (IsStop(outcome.Error)) throw new PipelineStoppedException();
        WriteError(ErrorMap.ToErrorRecord(outcome.Error, target));
        return false;
    }

    /// <summary>Throws the ErrorRecord the error table maps <paramref name="error"/> to.</summary>
    protected void ThrowEngineError(Exception error, object? target)
    {
        if (IsStop(error)) throw new PipelineStoppedException();
        ThrowTerminatingError(ErrorMap.ToErrorRecord(error, target));
    }

    private (T? Value, Exception? Error) RunEngineCore<T>(Func<PipelineSink, CancellationToken, Task<T>> work)
    {
        var token = _stop.Token;
        var sink = new PipelineSink(token);
        var task = Task.Run(() => work(sink, token), token);
        // Ends the pump whatever happens to the task: success, fault or cancellation.
        task.ContinueWith(_ => sink.Complete(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        try
        {
            foreach (var write in sink.Drain())
                write(this);
        }
        catch
        {
            // A write failed here (the pipeline was stopped downstream, or -ErrorAction Stop): stop the work too.
            _stop.Cancel();
            throw;
        }
        finally
        {
            foreach (var completed in sink.TakeOpenActivities())
            {
                try { WriteProgress(completed); }
                catch (PipelineStoppedException) { break; }
            }
        }
        try
        {
            return (task.GetAwaiter().GetResult(), null);
        }
        catch (Exception ex)
        {
            return (default, ex);
        }
    }

    private bool IsStop(Exception error) =>
        error is OperationCanceledException && _stop.IsCancellationRequested;
}
