using System.Buffers;
using System.Buffers.Binary;
using VProtect.Core.IO;

namespace VProtect.Core.Nbd;

/// <summary>Transmission phase: requests served concurrently (one at a time in xapi-nbd mode), replies under a send lock.</summary>
internal sealed partial class NbdServerSession
{
    private readonly SemaphoreSlim _sendLock = new(1, 1);

    private async Task TransmitAsync(NbdExport export, string exportName, CancellationToken stopping)
    {
        bool allocation = _structured && _metaAllocation && _metaExport == exportName;
        var slots = new SemaphoreSlim(Xapi ? 1 : Math.Max(1, _options.MaxRequestsPerConnection));
        var running = new List<Task>();
        using var failed = CancellationTokenSource.CreateLinkedTokenSource(stopping);
        var ct = failed.Token;
        var header = new byte[28];
        try
        {
            while (true)
            {
                using (var idle = CancellationTokenSource.CreateLinkedTokenSource(ct))
                {
                    if (_options.IdleTimeout is { } t) idle.CancelAfter(t);
                    await NbdWire.ReadExactAsync(_stream, header, idle.Token);
                }
                if (BinaryPrimitives.ReadUInt32BigEndian(header) != NbdProtocol.RequestMagic) return; // desynchronised client: hard disconnect
                var flags = (NbdCommandFlags)BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(4));
                var command = (NbdCommand)BinaryPrimitives.ReadUInt16BigEndian(header.AsSpan(6));
                ulong cookie = BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(8));
                long offset = (long)BinaryPrimitives.ReadUInt64BigEndian(header.AsSpan(16));
                uint length = BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(24));
                if (command == NbdCommand.Disconnect) break;

                byte[]? payload = null;
                if (command == NbdCommand.Write)
                {
                    if (length > export.MaximumPayload) return; // cannot skip safely without trusting the length: drop
                    payload = ArrayPool<byte>.Shared.Rent((int)Math.Max(1, length));
                    await NbdWire.ReadExactAsync(_stream, payload.AsMemory(0, (int)length), ct);
                }
                await slots.WaitAsync(ct);
                var request = new Request(command, flags, cookie, offset, length, payload);
                var task = ServeGuardedAsync(export, request, allocation, slots, failed);
                if (Xapi) await task; // xapi-nbd reads the next header only after the reply is sent
                else
                {
                    running.RemoveAll(r => r.IsCompleted);
                    running.Add(task);
                }
            }
        }
        finally
        {
            // Let requests already read finish (DISC: the client waits for their replies) before closing.
            await Task.WhenAll(running).ConfigureAwait(false);
        }
    }

    private readonly record struct Request(NbdCommand Command, NbdCommandFlags Flags, ulong Cookie, long Offset, uint Length, byte[]? Payload);

    private async Task ServeGuardedAsync(NbdExport export, Request r, bool allocation, SemaphoreSlim slots, CancellationTokenSource failed)
    {
        try { await ServeAsync(export, r, allocation, failed.Token); }
        catch (Exception)
        {
            failed.Cancel(); // a reply could not be sent: the stream is unusable
            try { _socket.Close(); } catch (ObjectDisposedException) { }
        }
        finally
        {
            if (r.Payload is not null) ArrayPool<byte>.Shared.Return(r.Payload);
            slots.Release();
        }
    }

    private async Task ServeAsync(NbdExport export, Request r, bool allocation, CancellationToken ct)
    {
        var info = new NbdRequestInfo(_info, r.Command, r.Offset, r.Length);
        if (_options.Hooks is { } hooks) await hooks.OnRequestAsync(info, ct);
        long size = export.Source.Length;
        bool inRange = r.Offset >= 0 && r.Offset <= size && r.Length <= size - r.Offset;
        switch (r.Command)
        {
            case NbdCommand.Read:
            {
                int errno = 0;
                if (Xapi && (r.Offset % 512 != 0 || r.Length % 512 != 0)) errno = NbdErrno.EINVAL;
                else if (!inRange) errno = NbdErrno.EINVAL;
                else if (r.Length > export.MaximumPayload && !Xapi) errno = NbdErrno.EINVAL;
                else if (r.Length > NbdProtocol.DefaultMaxPayload * 4L) errno = NbdErrno.EINVAL; // bound server memory even in xapi mode
                else errno = _options.Hooks?.GetReadError(info) ?? 0;
                if (errno != 0) { await ErrorAsync(r, errno, "read refused", ct); return; }
                await ReadReplyAsync(export.Source, r, allocation && (r.Flags & NbdCommandFlags.DontFragment) == 0, ct);
                return;
            }
            case NbdCommand.Write:
                if (Xapi || export.Target is null) { await ErrorAsync(r, NbdErrno.EPERM, "the export is read-only", ct); return; }
                if (!inRange) { await ErrorAsync(r, NbdErrno.ENOSPC, "write beyond the end of the export", ct); return; }
                await ExecuteAsync(r, async () =>
                {
                    await export.Target.WriteAsync(r.Offset, r.Payload.AsMemory(0, (int)r.Length), ct);
                    if ((r.Flags & NbdCommandFlags.Fua) != 0) await export.Target.FlushAsync(ct);
                }, ct);
                return;
            case NbdCommand.Flush when !Xapi:
                await ExecuteAsync(r, async () => { if (export.Target is not null) await export.Target.FlushAsync(ct); }, ct);
                return;
            case NbdCommand.Trim when !Xapi:
            case NbdCommand.WriteZeroes when !Xapi:
                if (export.Target is null) { await ErrorAsync(r, NbdErrno.EPERM, "the export is read-only", ct); return; }
                if (!inRange) { await ErrorAsync(r, r.Command == NbdCommand.Trim ? NbdErrno.EINVAL : NbdErrno.ENOSPC, "range beyond the end of the export", ct); return; }
                await ExecuteAsync(r, async () =>
                {
                    await export.Target.WriteZeroesAsync(r.Offset, r.Length, ct);
                    if ((r.Flags & NbdCommandFlags.Fua) != 0) await export.Target.FlushAsync(ct);
                }, ct);
                return;
            case NbdCommand.BlockStatus when !Xapi:
                if (!allocation) { await ErrorAsync(r, NbdErrno.EINVAL, "no meta context was selected", ct); return; }
                if (!inRange || r.Length == 0) { await ErrorAsync(r, NbdErrno.EINVAL, "range outside the export", ct); return; }
                await BlockStatusReplyAsync(export.Source, r, ct);
                return;
            default:
                await ErrorAsync(r, NbdErrno.EINVAL, $"command {(ushort)r.Command} is not supported", ct);
                return;
        }
    }

    private async Task ExecuteAsync(Request r, Func<Task> action, CancellationToken ct)
    {
        int errno = 0;
        try { await action(); }
        catch (Exception ex) when (ex is not OperationCanceledException) { errno = ex is ArgumentOutOfRangeException ? NbdErrno.EINVAL : NbdErrno.EIO; }
        if (errno != 0) await ErrorAsync(r, errno, "the backing store failed", ct);
        else await SimpleReplyAsync(r.Cookie, 0, ct);
    }

    private async Task ReadReplyAsync(IBlockSource source, Request r, bool sendHoles, CancellationToken ct)
    {
        int len = (int)r.Length;
        // Structured: 20-byte chunk header + 8-byte offset before the data. Simple: 16-byte header.
        int prefix = _structured ? 28 : 16;
        var buffer = ArrayPool<byte>.Shared.Rent(prefix + Math.Max(len, 1));
        try
        {
            List<Extent>? allocated = null;
            try
            {
                if (sendHoles && len > 0)
                {
                    allocated = new();
                    await foreach (var e in source.GetAllocatedExtentsAsync(r.Offset, len, ct)) allocated.Add(e);
                    if (allocated.Count == 1 && allocated[0].Offset == r.Offset && allocated[0].Length == len) allocated = null; // all data
                }
                if (allocated is null) { if (len > 0) await source.ReadAsync(r.Offset, buffer.AsMemory(prefix, len), ct); }
                else foreach (var e in allocated) await source.ReadAsync(e.Offset, buffer.AsMemory(prefix + (int)(e.Offset - r.Offset), (int)e.Length), ct);
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                await ErrorAsync(r, NbdErrno.EIO, "the backing store failed to read", ct);
                return;
            }

            if (!_structured)
            {
                if (allocated is not null) ClearGaps(buffer.AsSpan(prefix, len), r.Offset, allocated);
                WriteSimpleHeader(buffer, r.Cookie, 0);
                await SendLockedAsync(buffer.AsMemory(0, prefix + len), ct);
                return;
            }
            if (allocated is null || len == 0)
            {
                WriteChunkHeader(buffer, 1, NbdChunkType.OffsetData, r.Cookie, (uint)(8 + len));
                BinaryPrimitives.WriteUInt64BigEndian(buffer.AsSpan(20), (ulong)r.Offset);
                await SendLockedAsync(buffer.AsMemory(0, prefix + len), ct);
                return;
            }
            await _sendLock.WaitAsync(ct);
            try
            {
                // Data and hole chunks in order; the last carries the DONE flag.
                var runs = Runs(r.Offset, len, allocated);
                var head = new byte[32];
                for (int i = 0; i < runs.Count; i++)
                {
                    var (start, runLength, data) = runs[i];
                    ushort done = (ushort)(i == runs.Count - 1 ? 1 : 0);
                    int at = (int)(start - r.Offset);
                    if (data)
                    {
                        WriteChunkHeader(head, done, NbdChunkType.OffsetData, r.Cookie, (uint)(8 + runLength));
                        BinaryPrimitives.WriteUInt64BigEndian(head.AsSpan(20), (ulong)start);
                        await WriteAsync(head.AsMemory(0, 28), ct);
                        await WriteAsync(buffer.AsMemory(prefix + at, (int)runLength), ct);
                    }
                    else
                    {
                        WriteChunkHeader(head, done, NbdChunkType.OffsetHole, r.Cookie, 12);
                        BinaryPrimitives.WriteUInt64BigEndian(head.AsSpan(20), (ulong)start);
                        BinaryPrimitives.WriteUInt32BigEndian(head.AsSpan(28), (uint)runLength);
                        await WriteAsync(head.AsMemory(0, 32), ct);
                    }
                }
            }
            finally { _sendLock.Release(); }
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }

    private static List<(long Start, long Length, bool Data)> Runs(long offset, int len, List<Extent> allocated)
    {
        var runs = new List<(long, long, bool)>();
        long pos = offset, end = offset + len;
        foreach (var e in allocated)
        {
            long s = Math.Max(e.Offset, pos), t = Math.Min(e.End, end);
            if (t <= s) continue;
            if (s > pos) runs.Add((pos, s - pos, false));
            runs.Add((s, t - s, true));
            pos = t;
        }
        if (pos < end) runs.Add((pos, end - pos, false));
        return runs;
    }

    private static void ClearGaps(Span<byte> data, long offset, List<Extent> allocated)
    {
        foreach (var (s, l, isData) in Runs(offset, data.Length, allocated))
            if (!isData) data.Slice((int)(s - offset), (int)l).Clear();
    }

    private async Task BlockStatusReplyAsync(IBlockSource source, Request r, CancellationToken ct)
    {
        const int maxExtents = 1 << 16;
        var extents = new List<(uint Length, uint Flags)>();
        long pos = r.Offset, end = r.Offset + r.Length;
        bool one = (r.Flags & NbdCommandFlags.ReqOne) != 0;
        try
        {
            await foreach (var e in source.GetAllocatedExtentsAsync(r.Offset, r.Length, ct))
            {
                if (e.Offset > pos) extents.Add(((uint)(e.Offset - pos), (uint)(NbdAllocationFlags.Hole | NbdAllocationFlags.Zero)));
                extents.Add(((uint)(Math.Min(e.End, end) - e.Offset), 0));
                pos = Math.Min(e.End, end);
                if (extents.Count >= maxExtents || one) break;
            }
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            await ErrorAsync(r, NbdErrno.EIO, "could not map the allocation", ct);
            return;
        }
        if (pos < end && extents.Count < maxExtents && !(one && extents.Count > 0))
            extents.Add(((uint)(end - pos), (uint)(NbdAllocationFlags.Hole | NbdAllocationFlags.Zero)));
        if (one && extents.Count > 1) extents.RemoveRange(1, extents.Count - 1);
        var reply = new byte[20 + 4 + 8 * extents.Count];
        WriteChunkHeader(reply, 1, NbdChunkType.BlockStatus, r.Cookie, (uint)(4 + 8 * extents.Count));
        BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(20), 1);
        for (int i = 0; i < extents.Count; i++)
        {
            BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(24 + 8 * i), extents[i].Length);
            BinaryPrimitives.WriteUInt32BigEndian(reply.AsSpan(28 + 8 * i), extents[i].Flags);
        }
        await SendLockedAsync(reply, ct);
    }

    /// <summary>An error reply: a structured ERROR chunk for READ/BLOCK_STATUS when negotiated (required), else a simple reply.</summary>
    private async Task ErrorAsync(Request r, int errno, string message, CancellationToken ct)
    {
        if (_structured && r.Command is NbdCommand.Read or NbdCommand.BlockStatus)
        {
            var msg = System.Text.Encoding.UTF8.GetBytes(message);
            var chunk = new byte[20 + 6 + msg.Length];
            WriteChunkHeader(chunk, 1, NbdChunkType.Error, r.Cookie, (uint)(6 + msg.Length));
            BinaryPrimitives.WriteUInt32BigEndian(chunk.AsSpan(20), (uint)errno);
            BinaryPrimitives.WriteUInt16BigEndian(chunk.AsSpan(24), (ushort)msg.Length);
            msg.CopyTo(chunk.AsSpan(26));
            await SendLockedAsync(chunk, ct);
        }
        else await SimpleReplyAsync(r.Cookie, errno, ct);
    }

    private async Task SimpleReplyAsync(ulong cookie, int errno, CancellationToken ct)
    {
        var reply = new byte[16];
        WriteSimpleHeader(reply, cookie, errno);
        await SendLockedAsync(reply, ct);
    }

    private static void WriteSimpleHeader(byte[] b, ulong cookie, int errno)
    {
        BinaryPrimitives.WriteUInt32BigEndian(b, NbdProtocol.SimpleReplyMagic);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(4), (uint)errno);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(8), cookie);
    }

    private static void WriteChunkHeader(byte[] b, ushort flags, NbdChunkType type, ulong cookie, uint length)
    {
        BinaryPrimitives.WriteUInt32BigEndian(b, NbdProtocol.StructuredReplyMagic);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt16BigEndian(b.AsSpan(6), (ushort)type);
        BinaryPrimitives.WriteUInt64BigEndian(b.AsSpan(8), cookie);
        BinaryPrimitives.WriteUInt32BigEndian(b.AsSpan(16), length);
    }

    private async Task SendLockedAsync(ReadOnlyMemory<byte> data, CancellationToken ct)
    {
        await _sendLock.WaitAsync(ct);
        try { await WriteAsync(data, ct); }
        finally { _sendLock.Release(); }
    }
}
