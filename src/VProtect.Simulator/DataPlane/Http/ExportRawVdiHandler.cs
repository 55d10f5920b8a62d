using System.Buffers;
using VProtect.Core.Formats.Vhd;
using VProtect.Core.Formats.Xva;
using VProtect.Simulator.Database;
using VProtect.Simulator.Storage;
using VProtect.Simulator.Xapi;

namespace VProtect.Simulator.DataPlane.Http;

/// <summary>
/// GET /export_raw_vdi?vdi=…&amp;format=raw|vhd|tar[&amp;base=…] (export_raw_vdi.ml, vhd_tool_wrapper.ml; research
/// xapi.md §6 and nbd-vhd.md §4.5). raw: the whole virtual size; vhd: a dynamic VHD of the allocated 2 MiB blocks, or
/// with base a differencing VHD of whole blocks allocated in any layer of the symmetric difference of the two layer
/// chains, data from the current image; tar: the XVA chunk format under "vdi/". Streams end with connection close.
/// </summary>
internal sealed class ExportRawVdiHandler(HttpDataPlane plane)
{
    /// <summary>xapi's limit for VHD output (constants.ml max_vhd_size: 2040 GiB).</summary>
    public const long MaxVhdSize = 2040L << 30;
    private const int ChunkSize = XvaFormat.ChunkSize;

    public async Task HandleAsync(TransferScope scope, CancellationToken ct)
    {
        var core = plane.Core;
        var req = scope.Request;
        scope.ThrowIfFault("http/get_export_raw_vdi");
        var vdi = plane.ResolveVdi(req.Query.GetValueOrDefault("vdi"));
        if (vdi is null)
        {
            await scope.FailAsync(404, "Not Found", ["HANDLE_INVALID", "VDI", req.Query.GetValueOrDefault("vdi") ?? ""], ct).ConfigureAwait(false);
            return;
        }
        if (await plane.RedirectIfBetterHostAsync(scope, vdi.Str("SR"), ct).ConfigureAwait(false)) return;

        string format = req.Query.GetValueOrDefault("format") ?? "raw";
        if (format is not ("raw" or "vhd" or "tar"))
        {
            // export_raw_vdi.ml: Importexport.Format.of_req -> `Unknown x: task INTERNAL_ERROR, 404.
            await scope.FailAsync(404, "Not Found", ["INTERNAL_ERROR", "Unknown format " + format], ct).ConfigureAwait(false);
            return;
        }
        XapiObject? baseVdi = null;
        if (req.Query.TryGetValue("base", out var baseArg))
        {
            baseVdi = plane.ResolveVdi(baseArg);
            if (baseVdi is null)
            {
                await scope.FailAsync(404, "Not Found", ["HANDLE_INVALID", "VDI", baseArg], ct).ConfigureAwait(false);
                return;
            }
            if (format != "vhd")
            {
                // vhd-tool computes differences only for VHD output; XO never sends base with raw (vdi.mjs l.222-265).
                await scope.FailAsync(500, "Internal Server Error", ["INTERNAL_ERROR", $"base is only supported with format=vhd, not {format}"], ct).ConfigureAwait(false);
                return;
            }
        }
        long size = vdi.Long("virtual_size");
        if (format == "vhd" && size > MaxVhdSize)
        {
            await scope.FailAsync(500, "Internal Server Error", ["VDI_TOO_LARGE", vdi.Ref, MaxVhdSize.ToString(System.Globalization.CultureInfo.InvariantCulture)], ct).ConfigureAwait(false);
            return;
        }
        var disk = core.Storage.Open(vdi.Uuid);
        string contentType = format switch { "vhd" => "application/vhd", "tar" => "application/x-tar", _ => "application/octet-stream" };
        await scope.Exchange.WriteHeadAsync(200, "OK", scope.Headers(contentType, $"{vdi.Uuid}.{format}"), ct).ConfigureAwait(false);
        var output = scope.FaultedResponse();
        try
        {
            switch (format)
            {
                case "raw": await WriteRawAsync(scope, disk, output, ct).ConfigureAwait(false); break;
                case "tar": await WriteTarAsync(scope, disk, output, ct).ConfigureAwait(false); break;
                default: await WriteVhdAsync(scope, vdi, baseVdi, disk, output, ct).ConfigureAwait(false); break;
            }
            await output.FlushAsync(ct).ConfigureAwait(false);
            scope.Succeed("");
        }
        catch (Exception e) when (e is IOException or OperationCanceledException)
        {
            // The client hung up or a fault dropped the stream: xapi fails the task with CLIENT_ERROR.
            core.Tasks.Fail(scope.Task, ["CLIENT_ERROR", e.Message]);
            throw;
        }
    }

    private static async Task WriteRawAsync(TransferScope scope, VdiDisk disk, Stream output, CancellationToken ct)
    {
        long size = disk.Length;
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            for (long pos = 0; pos < size;)
            {
                int n = (int)Math.Min(ChunkSize, size - pos);
                await disk.ReadAsync(pos, buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                await output.WriteAsync(buffer.AsMemory(0, n), ct).ConfigureAwait(false);
                pos += n;
                scope.Progress((double)pos / size);
            }
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }

    /// <summary>
    /// XVA chunk format (stream_vdi.ml): 1 MiB chunks "vdi/%08d" each followed by "vdi/%08d.xxhash"; all-zero chunks
    /// omitted except the first and the last; the last chunk may be short; then the end-of-archive blocks.
    /// </summary>
    private static async Task WriteTarAsync(TransferScope scope, VdiDisk disk, Stream output, CancellationToken ct)
    {
        long size = disk.Length;
        long chunks = (size + ChunkSize - 1) / ChunkSize;
        var buffer = ArrayPool<byte>.Shared.Rent(ChunkSize);
        try
        {
            for (long i = 0; i < chunks; i++)
            {
                long pos = i * ChunkSize;
                int n = (int)Math.Min(ChunkSize, size - pos);
                var data = buffer.AsMemory(0, n);
                await disk.ReadAsync(pos, data, ct).ConfigureAwait(false);
                bool edge = i == 0 || i == chunks - 1;
                if (edge || data.Span.ContainsAnyExcept((byte)0))
                {
                    string name = XvaFormat.ChunkEntryName("vdi", i);
                    await V7Tar.WriteMemberAsync(output, name, data, 0, ct).ConfigureAwait(false);
                    var sum = System.Text.Encoding.ASCII.GetBytes(XvaFormat.FormatChecksum(data.Span, XvaChecksumKind.XxHash64));
                    await V7Tar.WriteMemberAsync(output, XvaFormat.ChecksumEntryName(name, XvaChecksumKind.XxHash64), sum, 0, ct).ConfigureAwait(false);
                }
                scope.Progress((double)(i + 1) / chunks);
            }
            await V7Tar.WriteEndAsync(output, ct).ConfigureAwait(false);
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }

    private async Task WriteVhdAsync(TransferScope scope, XapiObject vdi, XapiObject? baseVdi, VdiDisk disk, Stream output, CancellationToken ct)
    {
        var storage = plane.Core.Storage;
        IEnumerable<long> units = baseVdi is null ? storage.AllocatedUnits(vdi.Uuid) : storage.UnitsDifferingFrom(vdi.Uuid, baseVdi.Uuid);
        const int unitsPerBlock = VhdFormat.DefaultBlockSize / Layer.UnitSize;
        var blocks = units.Select(u => (uint)(u / unitsPerBlock)).Distinct().Select(b => new VhdPlannedBlock(b, null)).ToList();
        var plan = VhdBlockPlan.FromBlocks(disk.Length, blocks);
        VhdWriteOptions options;
        if (baseVdi is null) options = VhdWriteOptions.LikeXapiExport();
        else
        {
            // vhd-tool names the base VHD: its footer uid and its path on the host (nbd-vhd.md §4.5). Our base "VHD"
            // is the base VDI's top layer, whose id is a GUID.
            var parentId = Guid.ParseExact(storage.Chain(baseVdi.Uuid)[0].Id, "N");
            string sr = plane.Core.Db.TryGet(baseVdi.Str("SR"))?.Uuid ?? "sr";
            options = VhdWriteOptions.LikeXapiExport(parentId, $"/var/run/sr-mount/{sr}/{baseVdi.Str("location")}.vhd");
        }
        await VhdStreamWriter.WriteAsync(disk, plan, output, options, null, ct).ConfigureAwait(false);
    }
}
