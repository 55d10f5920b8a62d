using System.Buffers;
using System.Buffers.Binary;
using VProtect.Core.Formats;
using VProtect.Core.Formats.Vhd;
using VProtect.Simulator.Database;
using VProtect.Simulator.Storage;
using VProtect.Simulator.Xapi;

namespace VProtect.Simulator.DataPlane.Http;

/// <summary>
/// PUT /import_raw_vdi?vdi=…|sr_id=…&amp;format=raw|vhd[&amp;chunked=true] (import_raw_vdi.ml; research xapi.md §6).
/// Writes go through <see cref="VdiDisk"/>, so they mark CBT like guest writes. raw: the body is the disk from
/// offset 0; chunked: vhd-tool's framing {u64 LE offset, u32 LE length} + data, ended by {0,0}; vhd: a dynamic or
/// differencing VHD applied block by block. With sr_id (raw + Content-Length) a new "Imported VDI" of exactly the
/// body's size is created. The task result is the VDI ref.
/// </summary>
internal sealed class ImportRawVdiHandler(HttpDataPlane plane)
{
    private const int ChunkSize = 1 << 20;

    public async Task HandleAsync(TransferScope scope, CancellationToken ct)
    {
        var core = plane.Core;
        var req = scope.Request;
        scope.ThrowIfFault("http/put_import_raw_vdi");
        string format = req.QueryOrCookie("format") ?? "raw";
        bool chunked = req.QueryOrCookie("chunked") is not null;
        if (format is not ("raw" or "vhd"))
        {
            await scope.FailAsync(404, "Not Found", ["INTERNAL_ERROR", "Unknown format " + format], ct).ConfigureAwait(false);
            return;
        }
        if (chunked && format != "raw")
        {
            await scope.FailAsync(404, "Not Found", ["INTERNAL_ERROR", "Cannot handle chunked VHD"], ct).ConfigureAwait(false);
            return;
        }
        if (req.Header("Transfer-Encoding") is { } encoding)
        {
            // import_raw_vdi.ml: any transfer encoding -> 404, task INTERNAL_ERROR.
            await scope.FailAsync(404, "Not Found", ["INTERNAL_ERROR", $"import code cannot handle encoding: {encoding}"], ct).ConfigureAwait(false);
            return;
        }
        if (req.ContentLength is null)
        {
            await scope.FailAsync(404, "Not Found", ["INTERNAL_ERROR", "import code needs a Content-Length"], ct).ConfigureAwait(false);
            return;
        }

        XapiObject? vdi = plane.ResolveVdi(req.QueryOrCookie("vdi"));
        if (vdi is null && req.QueryOrCookie("vdi") is { } missing)
        {
            await scope.FailAsync(404, "Not Found", ["HANDLE_INVALID", "VDI", missing], ct).ConfigureAwait(false);
            return;
        }
        if (vdi is null)
        {
            var sr = plane.ResolveSr(req.QueryOrCookie("sr_id") ?? req.QueryOrCookie("sr_uuid"));
            if (sr is null)
            {
                await scope.FailAsync(404, "Not Found", ["HANDLE_INVALID", "SR", req.QueryOrCookie("sr_id") ?? req.QueryOrCookie("sr_uuid") ?? ""], ct).ConfigureAwait(false);
                return;
            }
            if (format != "raw" || chunked)
            {
                await scope.FailAsync(400, "Bad Request", ["INTERNAL_ERROR", $"Importing {format} straight into an SR is not yet supported; create the VDI and pass vdi="], ct).ConfigureAwait(false);
                return;
            }
            if (await plane.RedirectIfBetterHostAsync(scope, sr.Ref, ct).ConfigureAwait(false)) return;
            long size = req.ContentLength.Value;
            vdi = new ModelOps(core).CreateVdi(sr.Ref, new Dictionary<string, object?> { ["name_label"] = "Imported VDI", ["type"] = "user" }, size);
        }
        else if (await plane.RedirectIfBetterHostAsync(scope, vdi.Str("SR"), ct).ConfigureAwait(false)) return;

        await scope.Exchange.WriteHeadAsync(200, "OK", scope.Headers("application/octet-stream"), ct).ConfigureAwait(false);
        var disk = core.Storage.Open(vdi.Uuid);
        var input = scope.FaultedRequest();
        try
        {
            if (format == "vhd") await VhdStreamReader.ApplyAsync(input, disk, $"PUT /import_raw_vdi for VDI {vdi.Uuid}", null, null, ct).ConfigureAwait(false);
            else if (chunked) await ReceiveChunkedAsync(input, disk, ct).ConfigureAwait(false);
            else await ReceiveRawAsync(scope, input, disk, req.ContentLength.Value, ct).ConfigureAwait(false);
            new ModelOps(core).RefreshSr(vdi.Str("SR"));
            scope.Succeed(vdi.Ref);
        }
        catch (Exception e) when (e is BackupFormatException or InvalidDataException or EndOfStreamException or ArgumentException)
        {
            core.Tasks.Fail(scope.Task, ["VDI_IO_ERROR", e.Message]);
        }
        catch (IOException e)
        {
            core.Tasks.Fail(scope.Task, ["INTERNAL_ERROR", "Caught exception: " + e.Message]);
            throw;
        }
    }

    private static async Task ReceiveRawAsync(TransferScope scope, Stream input, VdiDisk disk, long length, CancellationToken ct)
    {
        if (length > disk.Length) throw new InvalidDataException($"The body has {length} bytes but VDI {disk.Uuid} has only {disk.Length}.");
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkSize);
        var existing = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            for (long pos = 0; pos < length;)
            {
                int want = (int)Math.Min(ChunkSize, length - pos);
                int n = await ReadFullAsync(input, buffer.AsMemory(0, want), ct).ConfigureAwait(false);
                if (n < want) throw new EndOfStreamException($"The body ended after {pos + n} of {length} bytes.");
                await WriteSparseAsync(disk, pos, buffer.AsMemory(0, n), existing, ct).ConfigureAwait(false);
                pos += n;
                scope.Progress((double)pos / length);
            }
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
            ArrayPool<byte>.Shared.Return(existing);
        }
    }

    /// <summary>vhd-tool's chunked framing (chunked.ml): {offset u64 LE, length u32 LE} + data, ended by {0,0}.</summary>
    private static async Task ReceiveChunkedAsync(Stream input, VdiDisk disk, CancellationToken ct)
    {
        var header = new byte[12];
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            while (true)
            {
                if (await ReadFullAsync(input, header, ct).ConfigureAwait(false) < header.Length)
                    throw new EndOfStreamException("The chunked body ended before its {0,0} terminator.");
                ulong offset = BinaryPrimitives.ReadUInt64LittleEndian(header);
                uint length = BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(8));
                if (offset == 0 && length == 0) return;
                if (offset + length > (ulong)disk.Length)
                    throw new InvalidDataException($"Chunk [{offset}, +{length}) is outside VDI {disk.Uuid} of {disk.Length} bytes.");
                for (uint done = 0; done < length;)
                {
                    int want = (int)Math.Min(ChunkSize, length - done);
                    int n = await ReadFullAsync(input, buffer.AsMemory(0, want), ct).ConfigureAwait(false);
                    if (n < want) throw new EndOfStreamException($"The chunk at {offset} ended after {done + n} of {length} bytes.");
                    await disk.WriteAsync((long)offset + done, buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                    done += (uint)n;
                }
            }
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }

    /// <summary>Writes data, skipping all-zero pieces where the disk already reads zero (vhd-tool leaves holes for zeros).</summary>
    private static async Task WriteSparseAsync(VdiDisk disk, long offset, ReadOnlyMemory<byte> data, byte[] scratch, CancellationToken ct)
    {
        if (data.Span.ContainsAnyExcept((byte)0))
        {
            await disk.WriteAsync(offset, data, ct).ConfigureAwait(false);
            return;
        }
        await disk.ReadAsync(offset, scratch.AsMemory(0, data.Length), ct).ConfigureAwait(false);
        if (scratch.AsSpan(0, data.Length).ContainsAnyExcept((byte)0)) await disk.WriteAsync(offset, data, ct).ConfigureAwait(false);
    }

    internal static async Task<int> ReadFullAsync(Stream input, Memory<byte> buffer, CancellationToken ct)
    {
        int total = 0;
        while (total < buffer.Length)
        {
            int n = await input.ReadAsync(buffer[total..], ct).ConfigureAwait(false);
            if (n == 0) break;
            total += n;
        }
        return total;
    }
}
