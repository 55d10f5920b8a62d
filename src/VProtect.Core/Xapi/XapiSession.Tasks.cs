using VProtect.Core.Xapi.Records;
using VProtect.Core.Xapi.Wire;

namespace VProtect.Core.Xapi;

public sealed partial class XapiSession
{
    // Short first wait: simulator and fast host operations (snapshot, destroy) finish in tens of ms; the delay doubles.
    private static readonly TimeSpan FirstPoll = TimeSpan.FromMilliseconds(10);

    /// <summary>
    /// Runs <c>Async.&lt;method&gt;</c> and waits for its task: progress is reported from 0 to 1, cancelling the token
    /// cancels the task on the host, the decoded result is returned and the task is destroyed afterwards.
    /// </summary>
    public async Task<object?> CallAsyncTaskAsync(string method, IReadOnlyList<object?> args, IProgress<double>? progress = null, CancellationToken ct = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(method);
        var taskRef = XapiValue.AsString(await CallAsync("Async." + method, args, ct).ConfigureAwait(false));
        return await WaitForTaskAsync(taskRef, progress, destroyTask: true, method, ct).ConfigureAwait(false);
    }

    /// <summary>Creates a task that HTTP handlers complete (pass it as <c>task_id</c>).</summary>
    public async Task<string> CreateTaskAsync(string label, string description = "", CancellationToken ct = default) =>
        XapiValue.AsString(await CallAsync("task.create", new object?[] { label, description }, ct).ConfigureAwait(false));

    /// <summary>
    /// Polls the task until it finishes and returns its decoded result (<see cref="XmlRpc.DecodeValue"/> of task.result).
    /// Failure throws <see cref="XapiException"/> with the task's error_info. On cancellation the task is cancelled on the host;
    /// if it still completed (the cancel came too late) its result is returned, otherwise <see cref="OperationCanceledException"/> is thrown.
    /// </summary>
    public async Task<object?> WaitForTaskAsync(string taskRef, IProgress<double>? progress = null, bool destroyTask = true, string? method = null, CancellationToken ct = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(taskRef);
        try
        {
            var record = await PollUntilFinishedAsync(taskRef, progress, ct).ConfigureAwait(false);
            return TaskOutcome(record, method ?? record.NameLabel, ct);
        }
        finally
        {
            if (destroyTask) await DestroyTaskQuietlyAsync(taskRef).ConfigureAwait(false);
        }
    }

    private async Task<TaskRecord> PollUntilFinishedAsync(string taskRef, IProgress<double>? progress, CancellationToken ct)
    {
        var delay = FirstPoll < _options.TaskPollInterval ? FirstPoll : _options.TaskPollInterval;
        var lastProgress = double.NaN;
        var cancelSent = false;
        var pollsAfterCancel = 0;
        while (true)
        {
            // After a cancel the host needs a few more polls to settle; those must not be cut short by the same token.
            var pollToken = cancelSent ? CancellationToken.None : ct;
            TaskRecord record;
            try
            {
                record = await GetRecordAsync<TaskRecord>(taskRef, pollToken).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested && !cancelSent)
            {
                cancelSent = true;
                await CancelTaskQuietlyAsync(taskRef).ConfigureAwait(false);
                continue;
            }
            if (!double.IsNaN(record.Progress) && record.Progress != lastProgress)
            {
                lastProgress = record.Progress;
                progress?.Report(Math.Clamp(record.Progress, 0, 1));
            }
            if (record.IsFinished) return record;

            if (ct.IsCancellationRequested && !cancelSent)
            {
                cancelSent = true;
                await CancelTaskQuietlyAsync(taskRef).ConfigureAwait(false);
                continue;
            }
            if (cancelSent && ++pollsAfterCancel > 40)
                throw new OperationCanceledException($"Task {taskRef} was asked to cancel but has not stopped; it may still be running on the host.", ct);

            try
            {
                await Task.Delay(delay, cancelSent ? CancellationToken.None : ct).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (ct.IsCancellationRequested)
            {
                // Loop once more: the next iteration sends task.cancel.
            }
            delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, _options.TaskPollInterval.Ticks));
        }
    }

    private static object? TaskOutcome(TaskRecord record, string? method, CancellationToken ct)
    {
        switch (record.Status)
        {
            case "success":
                return DecodeTaskResult(record.Result);
            case "cancelled" when ct.IsCancellationRequested:
                throw new OperationCanceledException($"Task {record.OpaqueRef} ({method}) was cancelled.", ct);
            case "failure" when ct.IsCancellationRequested && record.ErrorInfo.FirstOrDefault() == "TASK_CANCELLED":
                throw new OperationCanceledException($"Task {record.OpaqueRef} ({method}) was cancelled.", ct);
            case "cancelled":
                throw new XapiException(record.ErrorInfo.Count > 0 ? record.ErrorInfo : new[] { "TASK_CANCELLED", record.OpaqueRef }, method);
            default:
                throw new XapiException(record.ErrorInfo.Count > 0 ? record.ErrorInfo : new[] { "INTERNAL_ERROR", $"task ended with status '{record.Status}' and no error" }, method);
        }
    }

    /// <summary>task.result is an XML-RPC value fragment; some handlers store a bare ref, which is returned as is.</summary>
    public static object? DecodeTaskResult(string result)
    {
        var trimmed = result.TrimStart();
        if (!trimmed.StartsWith('<')) return result;
        try
        {
            return XmlRpc.DecodeValue(result);
        }
        catch (XapiWireException)
        {
            return result;
        }
    }

    private async Task CancelTaskQuietlyAsync(string taskRef)
    {
        try
        {
            await CallAsync("task.cancel", new object?[] { taskRef }, CancellationToken.None).ConfigureAwait(false);
        }
        catch (XapiException)
        {
            // Not cancellable (finished, or the operation has no cancel point): the poll loop sees its final state.
        }
    }

    private async Task DestroyTaskQuietlyAsync(string taskRef)
    {
        try
        {
            await CallAsync("task.destroy", new object?[] { taskRef }, CancellationToken.None).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is XapiException or XapiConnectionException)
        {
            // Tasks are garbage-collected by the host; a leftover one is harmless.
        }
    }
}
