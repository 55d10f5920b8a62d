using System.Buffers;
using System.Globalization;
using VProtect.Core.IO;
using VProtect.Core.Xapi.Transport;

namespace VProtect.Core.Xapi;

/// <summary>
/// XAPI's HTTP handlers (/export, /export_raw_vdi, /import, /import_raw_vdi). The session goes as the
/// <c>session_id</c> cookie and query parameter; a task made with task.create is passed as <c>task_id</c> and its
/// result/error is the outcome. GET bodies stream as they arrive; PUT bodies stream with an explicit Content-Length
/// (xapi refuses chunked uploads). A 302 to another pool host is followed by redoing the request there.
/// </summary>
public sealed class XapiHttpTransfer
{
    private const int MaxRedirects = 3;
    private const int CopyBufferSize = 1024 * 1024;

    private readonly XapiSession _session;

    public XapiHttpTransfer(XapiSession session)
    {
        _session = session ?? throw new ArgumentNullException(nameof(session));
    }

    /// <summary>When true (default), each transfer gets a task (task.create + task_id) whose result/error is checked.</summary>
    public bool TrackTasks { get; set; } = true;

    // ---------------------------------------------------------------- convenience

    /// <summary>GET /export: an XVA of a halted VM or a snapshot. <paramref name="compression"/>: null, "gzip" or "zstd".</summary>
    public Task<XapiDownload> ExportVmAsync(string vmRef, string? compression = null, IProgress<TransferProgress>? progress = null, CancellationToken ct = default)
    {
        var query = new Dictionary<string, string> { ["ref"] = vmRef };
        if (compression is not null) query["use_compression"] = compression;
        return GetAsync("/export", query, progress, -1, ct);
    }

    /// <summary>GET /export_raw_vdi: the disk as raw or vhd; with <paramref name="baseVdiRef"/>, only what differs from it.</summary>
    public Task<XapiDownload> ExportRawVdiAsync(string vdiRef, string format = "raw", string? baseVdiRef = null, long expectedLength = -1,
        IProgress<TransferProgress>? progress = null, CancellationToken ct = default)
    {
        var query = new Dictionary<string, string> { ["vdi"] = vdiRef, ["format"] = format };
        if (baseVdiRef is not null) query["base"] = baseVdiRef;
        return GetAsync("/export_raw_vdi", query, progress, expectedLength, ct);
    }

    /// <summary>PUT /import: an XVA; returns the refs of the imported VMs (the task result).</summary>
    public async Task<IReadOnlyList<string>> ImportVmAsync(Stream xva, long length, string? srRef = null, bool restore = false, bool force = false,
        IProgress<TransferProgress>? progress = null, CancellationToken ct = default)
    {
        var query = new Dictionary<string, string>();
        if (srRef is not null) query["sr_id"] = srRef;
        if (restore) query["restore"] = "true";
        if (force) query["force"] = "true";
        var result = await PutAsync("/import", query, xva, length, progress, ct).ConfigureAwait(false);
        return result is string single ? (single.Length == 0 ? Array.Empty<string>() : new[] { single }) : XapiValue.AsStringList(result, "import result");
    }

    /// <summary>PUT /import_raw_vdi: writes <paramref name="data"/> into an existing VDI; returns the VDI ref (the task result).</summary>
    public async Task<string> ImportRawVdiAsync(string vdiRef, Stream data, long length, string format = "raw",
        IProgress<TransferProgress>? progress = null, CancellationToken ct = default)
    {
        var query = new Dictionary<string, string> { ["vdi"] = vdiRef, ["format"] = format };
        var result = await PutAsync("/import_raw_vdi", query, data, length, progress, ct).ConfigureAwait(false);
        return XapiValue.AsString(result);
    }

    // ---------------------------------------------------------------- GET

    /// <summary>Starts a GET and returns once the 200 headers arrived; the body is read from the returned download.</summary>
    public async Task<XapiDownload> GetAsync(string path, IReadOnlyDictionary<string, string>? query = null, IProgress<TransferProgress>? progress = null,
        long expectedLength = -1, CancellationToken ct = default)
    {
        var taskRef = TrackTasks ? await _session.CreateTaskAsync("VProtect GET " + path, "", ct).ConfigureAwait(false) : null;
        try
        {
            var url = BuildUrl(_session.Url, path, query, taskRef);
            for (var redirects = 0; ; redirects++)
            {
                var connection = await HttpConnection.OpenAsync(url, _session.Transport.Certificates, _session.Options.Timeout, ct).ConfigureAwait(false);
                try
                {
                    await connection.WriteHeadAsync("GET", url, RequestHeaders(contentLength: null), ct).ConfigureAwait(false);
                    var head = await ReadHeadWithTimeoutAsync(connection, ct).ConfigureAwait(false);
                    if (head.StatusCode == 200)
                        return new XapiDownload(_session, new HttpBodyStream(connection, head, progress, expectedLength), taskRef, HttpConnection.Redact(url), head.StatusCode);

                    if (head.IsRedirect && redirects < MaxRedirects)
                    {
                        url = RedirectTarget(url, head);
                        await connection.DisposeAsync().ConfigureAwait(false);
                        continue;
                    }
                    await using var _ = connection;
                    throw await FailureAsync("GET", url, head, connection, taskRef, ct).ConfigureAwait(false);
                }
                catch
                {
                    await connection.DisposeAsync().ConfigureAwait(false);
                    throw;
                }
            }
        }
        catch
        {
            if (taskRef is not null) await AbandonTaskAsync(_session, taskRef).ConfigureAwait(false);
            throw;
        }
    }

    // ---------------------------------------------------------------- PUT

    /// <summary>
    /// Streams <paramref name="contentLength"/> bytes of <paramref name="content"/> with PUT and returns the task result.
    /// A redirect is followed by resending from the start, so <paramref name="content"/> should be seekable; a non-seekable
    /// stream can be resent only while its first megabyte has not been passed.
    /// </summary>
    public async Task<object?> PutAsync(string path, IReadOnlyDictionary<string, string>? query, Stream content, long contentLength,
        IProgress<TransferProgress>? progress = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(content);
        ArgumentOutOfRangeException.ThrowIfNegative(contentLength);
        var taskRef = TrackTasks ? await _session.CreateTaskAsync("VProtect PUT " + path, "", ct).ConfigureAwait(false) : null;
        var source = new ReplayableSource(content);
        try
        {
            var url = BuildUrl(_session.Url, path, query, taskRef);
            for (var redirects = 0; ; redirects++)
            {
                await using var connection = await HttpConnection.OpenAsync(url, _session.Transport.Certificates, _session.Options.Timeout, ct).ConfigureAwait(false);
                await connection.WriteHeadAsync("PUT", url, RequestHeaders(contentLength), ct).ConfigureAwait(false);

                // xapi may answer (302, 401, 403…) before it reads the body: listen while sending.
                using var sendCancel = CancellationTokenSource.CreateLinkedTokenSource(ct);
                var headTask = connection.ReadHeadAsync(ct);
                // If the upload fails first, the connection is closed under this read; observe its fault so it is not unobserved.
                _ = headTask.ContinueWith(static t => _ = t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
                Exception? sendError = null;
                try
                {
                    await SendBodyAsync(connection.Stream, source, contentLength, headTask, progress, sendCancel.Token).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is IOException or ObjectDisposedException && !ct.IsCancellationRequested)
                {
                    sendError = ex; // the host stopped reading; its response (if any) explains why
                }

                HttpResponseHead head;
                try
                {
                    head = await WithTimeout(headTask, ct).ConfigureAwait(false);
                }
                catch (XapiConnectionException) when (sendError is not null)
                {
                    throw new XapiConnectionException($"The upload to {HttpConnection.Redact(url).GetLeftPart(UriPartial.Path)} broke off: {sendError.Message}",
                        HttpConnection.Redact(url), sendError);
                }

                if (head.IsRedirect && redirects < MaxRedirects)
                {
                    if (!source.TryRewind())
                        throw new XapiConnectionException(
                            $"{HttpConnection.Redact(url).GetLeftPart(UriPartial.Path)} redirected the upload to another host after {source.Consumed} bytes were read from a non-seekable stream; pass a seekable stream (e.g. a file).",
                            HttpConnection.Redact(url));
                    url = RedirectTarget(url, head);
                    continue;
                }
                if (head.StatusCode != 200)
                    throw await FailureAsync("PUT", url, head, connection, taskRef, ct).ConfigureAwait(false);
                if (sendError is not null || source.Sent != contentLength)
                {
                    // The host hung up mid-upload; its task usually says why (e.g. VDI_IO_ERROR, SR_FULL).
                    if (taskRef is not null && await TaskErrorAsync(taskRef, ct).ConfigureAwait(false) is { } taskError) throw taskError;
                    throw new XapiConnectionException(
                        $"The host answered 200 but the upload stopped after {source.Sent} of {contentLength} bytes{(sendError is null ? "" : ": " + sendError.Message)}.",
                        HttpConnection.Redact(url), sendError);
                }

                await DrainAsync(connection, head, _session.Options.Timeout, ct).ConfigureAwait(false);
                if (taskRef is null) return null;
                var settled = taskRef;
                taskRef = null; // WaitForTaskAsync destroys it
                return await _session.WaitForTaskAsync(settled, null, destroyTask: true, "HTTP PUT " + path, ct).ConfigureAwait(false);
            }
        }
        catch
        {
            if (taskRef is not null) await AbandonTaskAsync(_session, taskRef).ConfigureAwait(false);
            throw;
        }
    }

    private static async Task SendBodyAsync(Stream network, ReplayableSource source, long contentLength, Task<HttpResponseHead> earlyResponse,
        IProgress<TransferProgress>? progress, CancellationToken ct)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(CopyBufferSize);
        try
        {
            while (source.Sent < contentLength)
            {
                // xapi's import handlers answer 200 before reading the body, so only a refusal or a redirect stops the upload.
                if (earlyResponse.IsCompleted && !(earlyResponse.IsCompletedSuccessfully && earlyResponse.Result.StatusCode == 200)) return;
                var want = (int)Math.Min(buffer.Length, contentLength - source.Sent);
                var n = await source.ReadAsync(buffer.AsMemory(0, want), ct).ConfigureAwait(false);
                if (n == 0)
                    throw new ArgumentException($"The content stream ended after {source.Sent} bytes but {contentLength} were announced; pass the exact length.");
                await network.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                source.Sent += n;
                progress?.Report(new TransferProgress(source.Sent, contentLength));
            }
            await network.FlushAsync(ct).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    // ---------------------------------------------------------------- shared

    private IEnumerable<KeyValuePair<string, string>> RequestHeaders(long? contentLength)
    {
        yield return new("Cookie", "session_id=" + _session.OpaqueRef);
        yield return new("User-Agent", "VProtect/1.0");
        yield return new("Connection", "close");
        if (contentLength is { } length)
        {
            yield return new("Content-Type", "application/octet-stream");
            yield return new("Content-Length", length.ToString(CultureInfo.InvariantCulture));
        }
    }

    private Uri BuildUrl(Uri host, string path, IReadOnlyDictionary<string, string>? query, string? taskRef)
    {
        if (!path.StartsWith('/')) throw new ArgumentException("The handler path must start with '/', e.g. /export.", nameof(path));
        var parts = new List<string> { "session_id=" + Uri.EscapeDataString(_session.OpaqueRef) };
        if (query is not null)
            foreach (var (k, v) in query)
                parts.Add(Uri.EscapeDataString(k) + "=" + Uri.EscapeDataString(v));
        if (taskRef is not null) parts.Add("task_id=" + Uri.EscapeDataString(taskRef));
        return new UriBuilder(host) { Path = path, Query = string.Join("&", parts) }.Uri;
    }

    private static Uri RedirectTarget(Uri current, HttpResponseHead head)
    {
        var location = head.Header("Location");
        if (string.IsNullOrWhiteSpace(location) || !Uri.TryCreate(current, location, out var target) ||
            (target.Scheme != Uri.UriSchemeHttp && target.Scheme != Uri.UriSchemeHttps))
            throw new XapiConnectionException($"{HttpConnection.Redact(current).GetLeftPart(UriPartial.Path)} answered {head.StatusCode} without a usable Location.", HttpConnection.Redact(current));
        return target;
    }

    private async Task<HttpResponseHead> ReadHeadWithTimeoutAsync(HttpConnection connection, CancellationToken ct) =>
        await WithTimeout(connection.ReadHeadAsync(ct), ct).ConfigureAwait(false);

    private async Task<HttpResponseHead> WithTimeout(Task<HttpResponseHead> headTask, CancellationToken ct)
    {
        try
        {
            return await headTask.WaitAsync(_session.Options.Timeout, ct).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            throw new XapiConnectionException($"The host sent no HTTP response within {_session.Options.Timeout.TotalSeconds:0.#} s.", null);
        }
        catch (IOException ex)
        {
            throw new XapiConnectionException($"The connection broke before the HTTP response: {ex.Message}", null, ex);
        }
    }

    /// <summary>Turns a non-200 answer into the most useful exception: the task's XAPI error when there is one.</summary>
    private async Task<Exception> FailureAsync(string method, Uri url, HttpResponseHead head, HttpConnection connection, string? taskRef, CancellationToken ct)
    {
        var body = await ReadSmallBodyAsync(connection, head, ct).ConfigureAwait(false);
        // e.g. VM_BAD_POWER_STATE, IMPORT_ERROR_CANNOT_HANDLE_CHUNKED, SESSION_AUTHENTICATION_FAILED
        if (taskRef is not null && await TaskErrorAsync(taskRef, ct).ConfigureAwait(false) is { } taskError) return taskError;
        var hint = head.StatusCode switch
        {
            401 => " The session was refused; connect again.",
            403 => " The account lacks the role for this transfer (VM admin or higher).",
            404 => " The object or handler was not found.",
            _ => "",
        };
        return new XapiConnectionException(
            $"HTTP {method} {HttpConnection.Redact(url).GetLeftPart(UriPartial.Path)} answered {head.StatusCode} {head.Reason}{(body.Length > 0 ? ": " + body : "")}.{hint}",
            HttpConnection.Redact(url), null, head.StatusCode);
    }

    /// <summary>
    /// After a failed transfer: the task's error once the host settles it, or null if it does not within the timeout
    /// (or succeeded, or cannot be read). Polls without cancelling the task; the caller abandons it afterwards.
    /// </summary>
    private async Task<XapiException?> TaskErrorAsync(string taskRef, CancellationToken ct)
    {
        var deadline = DateTime.UtcNow + _session.Options.Timeout;
        var delay = TimeSpan.FromMilliseconds(20);
        while (true)
        {
            Records.TaskRecord record;
            try
            {
                record = await _session.GetRecordAsync<Records.TaskRecord>(taskRef, ct).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is XapiException or XapiConnectionException)
            {
                return null;
            }
            if (record.Status is "failure" or "cancelled")
                return new XapiException(record.ErrorInfo.Count > 0 ? record.ErrorInfo : new[] { "TASK_CANCELLED", taskRef }, record.NameLabel);
            if (record.IsFinished || DateTime.UtcNow >= deadline) return null;
            await Task.Delay(delay, ct).ConfigureAwait(false);
            delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, _session.Options.TaskPollInterval.Ticks));
        }
    }

    private static async Task<string> ReadSmallBodyAsync(HttpConnection connection, HttpResponseHead head, CancellationToken ct)
    {
        // Only what is already framed: a length-less error body would otherwise hold us until the host closes.
        if (head.Header("Content-Length") is not { } cl || !int.TryParse(cl, out var length) || length <= 0) return "";
        var buffer = new byte[Math.Min(length, 2048)];
        var read = 0;
        try
        {
            while (read < buffer.Length)
            {
                var n = await connection.ReadAsync(buffer.AsMemory(read), ct).ConfigureAwait(false);
                if (n == 0) break;
                read += n;
            }
        }
        catch (IOException)
        {
        }
        var text = System.Text.Encoding.UTF8.GetString(buffer, 0, read).ReplaceLineEndings(" ").Trim();
        return text.Length <= 200 ? text : text[..200] + "…";
    }

    private static async Task DrainAsync(HttpConnection connection, HttpResponseHead head, TimeSpan timeout, CancellationToken ct)
    {
        // The import answer carries nothing we need; read it so the host sees a clean close. Bounded by its framing.
        await using var body = new HttpBodyStream(connection, head, null, -1);
        var scratch = ArrayPool<byte>.Shared.Rent(4096);
        try
        {
            using var bounded = CancellationTokenSource.CreateLinkedTokenSource(ct);
            bounded.CancelAfter(timeout);
            while (await body.ReadAsync(scratch, bounded.Token).ConfigureAwait(false) > 0) { }
        }
        catch (Exception ex) when (ex is IOException or XapiConnectionException || (ex is OperationCanceledException && !ct.IsCancellationRequested))
        {
            // The task, not the tail of the response, decides the outcome.
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
    }

    internal static async Task AbandonTaskAsync(XapiSession session, string taskRef)
    {
        foreach (var method in new[] { "task.cancel", "task.destroy" })
        {
            try
            {
                await session.CallAsync(method, new object?[] { taskRef }, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is XapiException or XapiConnectionException or ObjectDisposedException)
            {
                // Best effort: the host garbage-collects tasks.
            }
        }
    }

    /// <summary>Reads the upload source and can start it over: by seeking, or by replaying the first megabyte it kept.</summary>
    private sealed class ReplayableSource
    {
        private const int ReplayWindow = 1024 * 1024;
        private readonly Stream _inner;
        private readonly long _start;
        private readonly byte[]? _kept;
        private int _keptLength;
        private int _replayPos = -1;

        public ReplayableSource(Stream inner)
        {
            _inner = inner;
            if (inner.CanSeek) _start = inner.Position;
            else _kept = new byte[ReplayWindow];
        }

        /// <summary>Bytes taken from the underlying stream.</summary>
        public long Consumed { get; private set; }

        /// <summary>Bytes written to the current connection.</summary>
        public long Sent { get; set; }

        public async ValueTask<int> ReadAsync(Memory<byte> destination, CancellationToken ct)
        {
            if (_replayPos >= 0 && _replayPos < _keptLength)
            {
                var n = Math.Min(destination.Length, _keptLength - _replayPos);
                _kept.AsMemory(_replayPos, n).CopyTo(destination);
                _replayPos += n;
                return n;
            }
            var read = await _inner.ReadAsync(destination, ct).ConfigureAwait(false);
            if (_kept is not null && Consumed < ReplayWindow)
            {
                var keep = (int)Math.Min(read, ReplayWindow - Consumed);
                destination[..keep].CopyTo(_kept.AsMemory(_keptLength));
                _keptLength += keep;
            }
            Consumed += read;
            if (_replayPos >= 0) _replayPos = _keptLength; // replay is over; never serve these bytes twice
            return read;
        }

        public bool TryRewind()
        {
            Sent = 0;
            if (_inner.CanSeek)
            {
                _inner.Position = _start;
                Consumed = 0;
                return true;
            }
            if (Consumed > _keptLength) return false;
            _replayPos = 0;
            return true;
        }
    }
}
