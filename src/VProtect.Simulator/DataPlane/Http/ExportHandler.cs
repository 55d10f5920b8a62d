using System.Globalization;
using System.Text;
using VProtect.Core.Formats.Xva;
using VProtect.Simulator.Database;
using VProtect.Simulator.Xapi;

namespace VProtect.Simulator.DataPlane.Http;

/// <summary>
/// GET /export?ref|uuid=…[&amp;use_compression=true|gzip|zstd] and GET /export_metadata (export.ml l.696-1030;
/// research xapi.md §6–7). The VM must be Halted or Suspended; its record goes out without snapshot metadata
/// (is_a_template kept); CD VBDs and VDIs on ISO SRs are skipped; disks as 1 MiB chunks with .xxhash, zero
/// chunks omitted (the project's XvaWriter).
/// </summary>
internal sealed class ExportHandler(HttpDataPlane plane)
{
    // xapi's export id counter is process-wide and never reset, so ids rarely start at 0 (export.ml l.47-52).
    private static long s_nextId = 1000;

    public async Task HandleAsync(TransferScope scope, CancellationToken ct)
    {
        scope.ThrowIfFault("http/get_export");
        var vm = await FindVmAsync(scope, ct).ConfigureAwait(false);
        if (vm is null) return;
        string power = vm.Str("power_state");
        if (power is not ("Halted" or "Suspended"))
            throw new XapiError("VM_BAD_POWER_STATE", vm.Ref, "halted", power.ToLowerInvariant());
        var (metadata, disks) = BuildExport(vm, preservePowerState: scope.Request.QueryOrCookie("preserve_power_state") == "true");
        var compression = (scope.Request.QueryOrCookie("use_compression") ?? "").ToLowerInvariant() switch
        {
            "true" or "gzip" => XvaCompression.Gzip,
            "zstd" => XvaCompression.Zstd,
            _ => XvaCompression.None,
        };
        scope.Exchange.ResponseVersion = "HTTP/1.0";
        await scope.Exchange.WriteHeadAsync(200, "OK", scope.Headers("application/octet-stream", "export.xva"), ct).ConfigureAwait(false);
        var output = scope.FaultedResponse();
        var sources = disks.Select(d => new XvaDiskSource(d.Id, plane.Core.Storage.Open(d.Uuid))).ToList();
        long total = Math.Max(1, sources.Sum(s => s.Source.Length));
        try
        {
            await XvaWriter.WriteAsync(output, metadata, sources, new XvaWriteOptions
            {
                Compression = compression,
                ExportTime = DateTimeOffset.UtcNow,
                Progress = new SyncProgress(p => scope.Progress((double)p.BytesDone / total)),
            }, ct).ConfigureAwait(false);
            await output.FlushAsync(ct).ConfigureAwait(false);
            scope.Succeed("");
        }
        catch (Exception e) when (e is IOException or OperationCanceledException)
        {
            plane.Core.Tasks.Fail(scope.Task, ["CLIENT_ERROR", e.Message]);
            throw;
        }
    }

    /// <summary>A tar holding only ova.xml, with Content-Length (export.ml l.784-905).</summary>
    public async Task HandleMetadataAsync(TransferScope scope, CancellationToken ct)
    {
        scope.ThrowIfFault("http/get_export_metadata");
        var vm = await FindVmAsync(scope, ct).ConfigureAwait(false);
        if (vm is null) return;
        var (metadata, _) = BuildExport(vm, preservePowerState: true);
        var xml = Encoding.UTF8.GetBytes(XvaMetadataXml.Encode(metadata));
        using var tar = new MemoryStream();
        await V7Tar.WriteMemberAsync(tar, XvaFormat.MetadataEntryName, xml, DateTimeOffset.UtcNow.ToUnixTimeSeconds(), ct).ConfigureAwait(false);
        await V7Tar.WriteEndAsync(tar, ct).ConfigureAwait(false);
        var headers = scope.Headers("application/octet-stream", "export.xva");
        headers.Add(new("Content-Length", tar.Length.ToString(CultureInfo.InvariantCulture)));
        await scope.Exchange.WriteHeadAsync(200, "OK", headers, ct).ConfigureAwait(false);
        await scope.Exchange.ResponseBody.WriteAsync(tar.GetBuffer().AsMemory(0, (int)tar.Length), ct).ConfigureAwait(false);
        scope.Succeed("");
    }

    private async Task<XapiObject?> FindVmAsync(TransferScope scope, CancellationToken ct)
    {
        string? arg = scope.Request.QueryOrCookie("ref") ?? scope.Request.QueryOrCookie("uuid");
        var vm = plane.ResolveVm(arg);
        if (vm is null) await scope.FailAsync(404, "Not Found", ["HANDLE_INVALID", "VM", arg ?? ""], ct).ConfigureAwait(false);
        return vm;
    }

    private (XvaMetadata Metadata, List<(string Id, string Uuid)> Disks) BuildExport(XapiObject vm, bool preservePowerState)
    {
        var db = plane.Core.Db;
        var builder = new XvaMetadataBuilder(Interlocked.Add(ref s_nextId, 1000));
        var disks = new List<(string Id, string Uuid)>();
        lock (db.Gate)
        {
            var vmRec = db.Record(vm);
            // Always without snapshot metadata; is_a_template kept, so an exported snapshot imports as a template (export.ml l.218-295).
            vmRec["is_a_snapshot"] = false;
            vmRec["snapshot_of"] = Schema.NullRef;
            vmRec["snapshots"] = Array.Empty<object?>();
            vmRec["snapshot_time"] = DateTime.UnixEpoch;
            vmRec["parent"] = Schema.NullRef;
            vmRec["children"] = Array.Empty<object?>();
            if (!preservePowerState) vmRec["power_state"] = "Halted";
            vmRec["allowed_operations"] = Array.Empty<object?>();
            vmRec["current_operations"] = new Dictionary<string, object?>();
            vmRec["resident_on"] = Schema.NullRef;
            builder.Add("VM", vm.Ref, vmRec);
            foreach (var vbd in db.Where("VBD", "VM", vm.Ref).OrderBy(b => b.Str("userdevice"), StringComparer.Ordinal))
            {
                if (vbd.Str("type") == "CD") continue;
                if (db.TryGet(vbd.Str("VDI")) is { Class: "VDI" } vdi)
                {
                    var sr = db.Get("SR", vdi.Str("SR"));
                    if (sr.Str("content_type") == "iso") continue;
                    builder.Add("VBD", vbd.Ref, db.Record(vbd));
                    var vdiRec = db.Record(vdi);
                    vdiRec["snapshot_of"] = Schema.NullRef;
                    vdiRec["is_a_snapshot"] = false;
                    vdiRec["snapshots"] = Array.Empty<object?>();
                    disks.Add((builder.Add("VDI", vdi.Ref, vdiRec), vdi.Uuid));
                    builder.Add("SR", sr.Ref, db.Record(sr));
                }
                else builder.Add("VBD", vbd.Ref, db.Record(vbd));
            }
            foreach (var vif in db.Where("VIF", "VM", vm.Ref))
            {
                builder.Add("VIF", vif.Ref, db.Record(vif));
                if (db.TryGet(vif.Str("network")) is { Class: "network" } net) builder.Add("network", net.Ref, db.Record(net));
            }
        }
        var host = plane.Core.Db.Get("host", plane.Core.MasterRef);
        var version = new XvaVersion
        {
            Hostname = host.Str("hostname"),
            Date = DateTime.UtcNow.ToString("yyyy-MM-dd", CultureInfo.InvariantCulture),
            ProductVersion = host.Map("software_version").GetValueOrDefault("product_version") as string ?? "8.4.0",
            ProductBrand = host.Map("software_version").GetValueOrDefault("product_brand") as string ?? "XenServer",
            BuildNumber = host.Map("software_version").GetValueOrDefault("build_number") as string ?? "sim",
            XapiMajor = host.Long("API_version_major"),
            XapiMinor = host.Long("API_version_minor"),
        };
        return (builder.Build(version), disks.OrderBy(d => d.Id, StringComparer.Ordinal).ToList());
    }

    /// <summary>Reports on the writer's thread (Progress&lt;T&gt; would post to the thread pool).</summary>
    private sealed class SyncProgress(Action<Core.IO.TransferProgress> report) : IProgress<Core.IO.TransferProgress>
    {
        public void Report(Core.IO.TransferProgress value) => report(value);
    }
}
