using VProtect.Core.Xapi.Transport;

namespace VProtect.Core.Xapi;

/// <summary>
/// A running GET transfer (/export, /export_raw_vdi, …). Read <see cref="Content"/> to its end, then call
/// <see cref="CompleteAsync"/> to learn whether the host finished the task cleanly. Disposing without completing
/// closes the connection and cancels the task.
/// </summary>
public sealed class XapiDownload : IAsyncDisposable
{
    private readonly XapiSession _session;
    private readonly HttpBodyStream _body;
    private bool _taskSettled;

    internal XapiDownload(XapiSession session, HttpBodyStream body, string? taskRef, Uri url, int statusCode)
    {
        _session = session;
        _body = body;
        TaskRef = taskRef;
        Url = url;
        StatusCode = statusCode;
    }

    /// <summary>The body as it arrives. Not seekable; its end is where the host closed the connection.</summary>
    public Stream Content => _body;

    /// <summary>The task tracking this transfer (null when task tracking was off).</summary>
    public string? TaskRef { get; }

    /// <summary>The URL that served the data (after any 302), with the session redacted.</summary>
    public Uri Url { get; }

    public int StatusCode { get; }

    public long BytesRead => _body.BytesRead;

    /// <summary>
    /// After the content was read to its end: waits for the host's task and returns its result, or throws
    /// <see cref="XapiException"/> with the task's error (e.g. a truncated export). Without task tracking, returns null.
    /// </summary>
    public async Task<object?> CompleteAsync(CancellationToken ct = default)
    {
        if (!_body.Completed)
            throw new InvalidOperationException("Read the download's Content to its end before completing it.");
        await _body.DisposeAsync().ConfigureAwait(false);
        if (TaskRef is null) return null;
        _taskSettled = true;
        return await _session.WaitForTaskAsync(TaskRef, null, destroyTask: true, "HTTP GET " + Url.AbsolutePath, ct).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await _body.DisposeAsync().ConfigureAwait(false);
        if (TaskRef is not null && !_taskSettled)
        {
            _taskSettled = true;
            await XapiHttpTransfer.AbandonTaskAsync(_session, TaskRef).ConfigureAwait(false);
        }
    }
}
