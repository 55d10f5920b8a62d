using VProtect.Core.Formats.Vhd;
using VProtect.Core.Formats.Xva;
using VProtect.Core.IO;
using VProtect.Simulator.Database;
using VProtect.Simulator.Http;
using VProtect.Simulator.Xapi;

namespace VProtect.Simulator.Tests.XvaStrategy;

/// <summary>
/// A stand-in for the simulator's HTTP data plane (/export, /export_raw_vdi with base, /import, /import_raw_vdi),
/// built from the project's own XVA and VHD writers/readers over the simulator's storage with xapi's task_id protocol.
/// The real handlers (DataPlane/Http) now exist, so <see cref="InstallIfMissing"/> does nothing; what remains in use is
/// <see cref="Export"/>, for the two tests that must see or damage the exact bytes the host sends.
/// </summary>
internal static class TestDataPlane
{
    public static void InstallIfMissing(XenSimulator sim)
    {
        // Prefix matching makes /export answer for /export_raw_vdi too, so the real plane is detected by its most specific route.
        if (sim.Routes.Find("PUT", "/import_raw_vdi") is not null) return;
        sim.Routes.Add("GET", "/export", (x, ct) => ExportAsync(sim, x, null, ct));
        sim.Routes.Add("GET", "/export_raw_vdi", (x, ct) => ExportRawVdiAsync(sim, x, ct));
        sim.Routes.Add("PUT", "/import", (x, ct) => ImportAsync(sim, x, ct));
        sim.Routes.Add("PUT", "/import_raw_vdi", (x, ct) => ImportRawVdiAsync(sim, x, ct));
    }

    /// <summary>A write-through stream that hashes what the host sends.</summary>
    public sealed class HashingStream(Stream inner) : Stream
    {
        private readonly System.Security.Cryptography.IncrementalHash _sha = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        public long Written { get; private set; }
        public string Sha256() => Convert.ToHexString(_sha.GetCurrentHash()).ToLowerInvariant();
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => Written; set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override Task FlushAsync(CancellationToken ct) => inner.FlushAsync(ct);
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken ct = default)
        {
            _sha.AppendData(buffer.Span);
            Written += buffer.Length;
            await inner.WriteAsync(buffer, ct);
        }
        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken ct) => WriteAsync(buffer.AsMemory(offset, count), ct).AsTask();
    }

    /// <summary>A write-through stream that flips the bits of the byte at <paramref name="position"/>.</summary>
    public sealed class FlipByteStream(Stream inner, long position) : Stream
    {
        private long _written;
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _written; set => throw new NotSupportedException(); }
        public override void Flush() => inner.Flush();
        public override Task FlushAsync(CancellationToken ct) => inner.FlushAsync(ct);
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => WriteAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
        public override async ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken ct = default)
        {
            if (position >= _written && position < _written + buffer.Length)
            {
                var copy = buffer.ToArray();
                copy[position - _written] ^= 0x5A;
                buffer = copy;
            }
            _written += buffer.Length;
            await inner.WriteAsync(buffer, ct);
        }
        public override Task WriteAsync(byte[] buffer, int offset, int count, CancellationToken ct) => WriteAsync(buffer.AsMemory(offset, count), ct).AsTask();
    }

    private static XapiObject? Task(XenSimulator sim, HttpExchange x)
        => x.Request.Query.TryGetValue("task_id", out var t) ? sim.Core.Db.TryGet(t) : null;

    private static async Task RunAsync(XenSimulator sim, HttpExchange x, Func<Task<object?>> body, CancellationToken ct)
    {
        var task = Task(sim, x);
        try
        {
            var result = await body();
            if (task is not null) sim.Core.Tasks.Succeed(task, result);
        }
        catch (Exception ex) when (ex is not OperationCanceledException)
        {
            if (task is not null) sim.Core.Tasks.Fail(task, ["INTERNAL_ERROR", ex.Message]);
            if (!x.HeadWritten) await x.RespondErrorAsync(500, "Internal Server Error", ex.Message, ct);
            else x.KeepAlive = false;
        }
    }

    /// <summary>An /export handler whose output passes through <paramref name="wrap"/> (to damage it in tests).</summary>
    public static HttpHandler Export(XenSimulator sim, Func<Stream, Stream> wrap) => (x, ct) => ExportAsync(sim, x, wrap, ct);

    private static Task ExportAsync(XenSimulator sim, HttpExchange x, Func<Stream, Stream>? wrap, CancellationToken ct) => RunAsync(sim, x, async () =>
    {
        var db = sim.Core.Db;
        string vmRef = x.Request.Query.GetValueOrDefault("ref") ?? db.TryGetByUuid("VM", x.Request.Query["uuid"])!.Ref;
        var vm = db.Get("VM", vmRef);
        var builder = new XvaMetadataBuilder(1000);
        builder.Add("VM", vm.Ref, db.Record(vm));
        var disks = new List<XvaDiskSource>();
        foreach (var vbd in db.Where("VBD", "VM", vm.Ref))
        {
            builder.Add("VBD", vbd.Ref, db.Record(vbd));
            if (vbd.Str("type") != "Disk") continue;
            var vdi = db.Get("VDI", vbd.Str("VDI"));
            builder.Add("VDI", vdi.Ref, db.Record(vdi));
            disks.Add(new XvaDiskSource(builder.ExportIdOf(vdi.Ref)!, sim.OpenVdi(vdi.Uuid)));
        }
        var metadata = builder.Build(new XvaVersion { Hostname = "xen-sim-01" });
        var compression = x.Request.Query.GetValueOrDefault("use_compression") == "zstd" ? XvaCompression.Zstd : XvaCompression.None;
        await x.WriteHeadAsync(200, "OK", [new("Content-Type", "application/octet-stream")], ct);
        var output = wrap is null ? x.ResponseBody : wrap(x.ResponseBody);
        await XvaWriter.WriteAsync(output, metadata, disks, new XvaWriteOptions { Compression = compression, KeepAliveInterval = null, ExportTime = DateTimeOffset.FromUnixTimeSeconds(1_700_000_000) }, ct);
        await x.ResponseBody.FlushAsync(ct);
        return "";
    }, ct);

    private static Task ExportRawVdiAsync(XenSimulator sim, HttpExchange x, CancellationToken ct) => RunAsync(sim, x, async () =>
    {
        var db = sim.Core.Db;
        var vdi = db.Get("VDI", x.Request.Query["vdi"]);
        var baseVdi = db.Get("VDI", x.Request.Query["base"]);
        if (x.Request.Query.GetValueOrDefault("format") != "vhd") throw new NotSupportedException("this stand-in serves format=vhd with a base only");
        long size = vdi.Long("virtual_size");
        var extents = sim.GetUnitsDifferingFrom(vdi.Uuid, baseVdi.Uuid)
            .Select(u => new Extent(u * XenSimulator.UnitSize, Math.Min(XenSimulator.UnitSize, size - u * XenSimulator.UnitSize)));
        var plan = VhdBlockPlan.FromExtents(size, extents);
        await x.WriteHeadAsync(200, "OK", [new("Content-Type", "application/octet-stream")], ct);
        await VhdStreamWriter.WriteAsync(sim.OpenVdi(vdi.Uuid), plan, x.ResponseBody, VhdWriteOptions.LikeXapiExport(), null, ct);
        await x.ResponseBody.FlushAsync(ct);
        return "";
    }, ct);

    private static Task ImportAsync(XenSimulator sim, HttpExchange x, CancellationToken ct) => RunAsync(sim, x, async () =>
    {
        var core = sim.Core;
        var db = core.Db;
        var ops = new ModelOps(core);
        string srRef = x.Request.Query.GetValueOrDefault("sr_id") ?? db.All("pool").Single().Str("default_SR");
        XapiObject? vm = null;
        var targets = new Dictionary<string, IBlockTarget>();
        try
        {
            await XvaReader.ReadAsync(x.Request.Body, "PUT /import", new XvaReadOptions
            {
                OnMetadata = (md, _) =>
                {
                    var v = md.Vm!;
                    vm = db.Create("VM", new Dictionary<string, object?>
                    {
                        ["name_label"] = v.GetString("name_label") ?? "", ["name_description"] = v.GetString("name_description") ?? "",
                        ["is_a_template"] = true, ["power_state"] = "Halted",
                        ["memory_static_max"] = v.GetInt64("memory_static_max") ?? 0, ["memory_dynamic_max"] = v.GetInt64("memory_dynamic_max") ?? 0,
                        ["VCPUs_max"] = v.GetInt64("VCPUs_max") ?? 1, ["VCPUs_at_startup"] = v.GetInt64("VCPUs_at_startup") ?? 1,
                    });
                    foreach (var vbd in md.OfClass("VBD").Where(b => b.GetString("type") == "Disk"))
                    {
                        var src = md.Find(vbd.GetString("VDI")!)!;
                        var vdi = ops.CreateVdi(srRef, new Dictionary<string, object?> { ["name_label"] = src.GetString("name_label") ?? "", ["type"] = "user" },
                            src.GetInt64("virtual_size")!.Value);
                        ops.CreateVbd(vm.Ref, vdi.Ref, vbd.GetString("userdevice") ?? "autodetect", "Disk", "RW", vbd.Snapshot.GetValueOrDefault("bootable") is true, false);
                        targets[src.Id] = sim.OpenVdi(vdi.Uuid);
                    }
                    return ValueTask.CompletedTask;
                },
                OpenTarget = (disk, _) => ValueTask.FromResult<IBlockTarget?>(targets[disk.VdiId]),
            }, ct);
        }
        catch
        {
            if (vm is not null)
            {
                foreach (var vbd in db.Where("VBD", "VM", vm.Ref)) { var vdi = db.TryGet(vbd.Str("VDI")); db.Delete(vbd); if (vdi is not null) ops.DestroyVdi(vdi); }
                db.Delete(vm);
            }
            throw;
        }
        await x.RespondAsync(200, "OK", "text/plain", ReadOnlyMemory<byte>.Empty, ct);
        return new object?[] { vm!.Ref };
    }, ct);

    private static Task ImportRawVdiAsync(XenSimulator sim, HttpExchange x, CancellationToken ct) => RunAsync(sim, x, async () =>
    {
        var vdi = sim.Core.Db.Get("VDI", x.Request.Query["vdi"]);
        if (x.Request.Query.GetValueOrDefault("format") != "vhd") throw new NotSupportedException("this stand-in takes format=vhd only");
        await VhdStreamReader.ApplyAsync(x.Request.Body, sim.OpenVdi(vdi.Uuid), "PUT /import_raw_vdi", null, null, ct);
        await x.RespondAsync(200, "OK", "text/plain", ReadOnlyMemory<byte>.Empty, ct);
        return vdi.Ref;
    }, ct);
}
