using System.Buffers;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using VProtect.Simulator.Faults;
using VProtect.Simulator.Http;
using VProtect.Simulator.Storage;

namespace VProtect.Simulator.Control;

/// <summary>
/// Test-only JSON API on its own loopback listener (no XAPI session): inspect VMs, write guest data,
/// hash disks, inject faults, reset. See docs/simulator.md "Control API".
/// </summary>
internal sealed class ControlApi
{
    private const long MaxWriteLength = 16L << 30;
    private readonly XenSimulator _sim;
    public ControlApi(XenSimulator sim) => _sim = sim;

    public void AddRoutes(RouteTable routes)
    {
        routes.Add("GET", "/sim/vms", VmsAsync);
        routes.Add("*", "/sim/vdi/", VdiAsync);
        routes.Add("*", "/sim/faults", FaultsAsync);
        routes.Add("GET", "/sim/log", LogAsync);
        routes.Add("POST", "/sim/reset", async (ex, ct) => { _sim.Reset(); await Json(ex, new JsonObject { ["reset"] = true }, ct); });
        routes.Add("POST", "/sim/save", async (ex, ct) => { _sim.SaveState(); await Json(ex, new JsonObject { ["saved"] = true }, ct); });
    }

    private static Task Json(HttpExchange ex, JsonNode node, CancellationToken ct, int status = 200, string reason = "OK")
        => ex.RespondTextAsync(status, reason, "application/json", node.ToJsonString(), ct);

    private static Task Error(HttpExchange ex, int status, string reason, string message, CancellationToken ct)
        => Json(ex, new JsonObject { ["error"] = message }, ct, status, reason);

    private Task VmsAsync(HttpExchange ex, CancellationToken ct)
    {
        var db = _sim.Core.Db;
        var list = new JsonArray();
        lock (db.Gate)
        {
            foreach (var vm in db.All("VM").Where(v => !v.Bool("is_control_domain")).OrderBy(v => v.Str("name_label"), StringComparer.Ordinal))
            {
                var vifs = new JsonArray();
                foreach (var vif in db.Where("VIF", "VM", vm.Ref).OrderBy(v => v.Str("device")))
                    vifs.Add(new JsonObject
                    {
                        ["device"] = vif.Str("device"), ["mac"] = vif.Str("MAC"),
                        ["network"] = db.TryGet(vif.Str("network"))?.Str("name_label"), ["networkUuid"] = db.TryGet(vif.Str("network"))?.Uuid,
                    });
                var disks = new JsonArray();
                foreach (var vbd in db.Where("VBD", "VM", vm.Ref).Where(b => b.Str("type") == "Disk").OrderBy(b => b.Str("userdevice")))
                {
                    if (db.TryGet(vbd.Str("VDI")) is not { } vdi) continue;
                    var sr = db.TryGet(vdi.Str("SR"));
                    disks.Add(new JsonObject
                    {
                        ["userdevice"] = vbd.Str("userdevice"), ["vdiUuid"] = vdi.Uuid, ["name"] = vdi.Str("name_label"),
                        ["virtualSize"] = vdi.Long("virtual_size"), ["sr"] = sr?.Str("name_label"), ["srUuid"] = sr?.Uuid,
                        ["cbtEnabled"] = vdi.Bool("cbt_enabled"), ["type"] = vdi.Str("type"),
                    });
                }
                list.Add(new JsonObject
                {
                    ["uuid"] = vm.Uuid, ["ref"] = vm.Ref, ["name"] = vm.Str("name_label"), ["powerState"] = vm.Str("power_state"),
                    ["isTemplate"] = vm.Bool("is_a_template"), ["isSnapshot"] = vm.Bool("is_a_snapshot"),
                    ["vifs"] = vifs, ["disks"] = disks,
                });
            }
        }
        return Json(ex, list, ct);
    }

    private async Task VdiAsync(HttpExchange ex, CancellationToken ct)
    {
        // /sim/vdi/{uuid}/write | /sim/vdi/{uuid}/sha256
        var parts = ex.Request.Path["/sim/vdi/".Length..].Split('/');
        if (parts.Length != 2) { await Error(ex, 404, "Not Found", "Use /sim/vdi/{uuid}/write or /sim/vdi/{uuid}/sha256.", ct); return; }
        string uuid = parts[0];
        if (!_sim.Core.Storage.Exists(uuid)) { await Error(ex, 404, "Not Found", $"No VDI with uuid {uuid}.", ct); return; }
        var disk = _sim.Core.Storage.Open(uuid);
        switch (parts[1], ex.Request.Method)
        {
            case ("write", "POST"):
                if (!TryLong(ex, "offset", out var offset) || !TryLong(ex, "length", out var length) || !TryLong(ex, "seed", out var seed)
                    || offset < 0 || length < 0 || length > MaxWriteLength || offset + length > disk.Length)
                {
                    await Error(ex, 400, "Bad Request", $"Need offset, length, seed (integers) with offset+length <= {disk.Length}.", ct);
                    return;
                }
                await WriteAsync(disk, offset, length, seed, ct);
                if (_sim.Core.Db.TryGetByUuid("VDI", uuid) is { } vdi) new Xapi.ModelOps(_sim.Core).RefreshSr(vdi.Str("SR"));
                await Json(ex, new JsonObject { ["written"] = length }, ct);
                return;
            case ("sha256", "GET"):
                await Json(ex, new JsonObject { ["sha256"] = await HashAsync(disk, ct), ["length"] = disk.Length }, ct);
                return;
            default:
                await Error(ex, 405, "Method Not Allowed", "POST .../write or GET .../sha256.", ct);
                return;
        }
    }

    private static bool TryLong(HttpExchange ex, string name, out long value)
    {
        value = 0;
        return ex.Request.Query.TryGetValue(name, out var s) && long.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out value);
    }

    /// <summary>A guest write of DeterministicData(seed) at [offset, offset+length): marks CBT like any guest write.</summary>
    public static async Task WriteAsync(VdiDisk disk, long offset, long length, long seed, CancellationToken ct)
    {
        var buffer = ArrayPool<byte>.Shared.Rent(1 << 20);
        try
        {
            for (long done = 0; done < length;)
            {
                int n = (int)Math.Min(buffer.Length, length - done);
                DeterministicData.Fill(buffer.AsSpan(0, n), seed, offset + done);
                await disk.WriteAsync(offset + done, buffer.AsMemory(0, n), ct);
                done += n;
            }
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }

    /// <summary>SHA-256 of the whole virtual content, streamed; holes are fed from a zero buffer.</summary>
    public static async Task<string> HashAsync(VdiDisk disk, CancellationToken ct)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = ArrayPool<byte>.Shared.Rent(1 << 20);
        var zeros = new byte[1 << 20];
        try
        {
            long length = disk.Length, pos = 0;
            await foreach (var extent in disk.GetAllocatedExtentsAsync(0, length, ct))
            {
                for (; pos < extent.Offset; pos += Math.Min(zeros.Length, extent.Offset - pos))
                    sha.AppendData(zeros, 0, (int)Math.Min(zeros.Length, extent.Offset - pos));
                while (pos < extent.End)
                {
                    int n = (int)Math.Min(buffer.Length, extent.End - pos);
                    await disk.ReadAsync(pos, buffer.AsMemory(0, n), ct);
                    sha.AppendData(buffer, 0, n);
                    pos += n;
                }
            }
            for (; pos < length; pos += Math.Min(zeros.Length, length - pos))
                sha.AppendData(zeros, 0, (int)Math.Min(zeros.Length, length - pos));
            return Convert.ToHexString(sha.GetHashAndReset()).ToLowerInvariant();
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
    }

    private Task LogAsync(HttpExchange ex, CancellationToken ct)
    {
        // GET /sim/log[?since=N]: what xapi would have written to xensource.log, oldest first.
        long since = 0;
        if (ex.Request.Query.TryGetValue("since", out var s) && !long.TryParse(s, NumberStyles.None, CultureInfo.InvariantCulture, out since))
            return Error(ex, 400, "Bad Request", $"since must be a sequence number, not '{s}'.", ct);
        var list = new JsonArray();
        foreach (var e in _sim.Core.Log.Since(since))
            list.Add(new JsonObject
            {
                ["seq"] = e.Seq, ["time"] = e.Time.ToString("O", CultureInfo.InvariantCulture), ["level"] = e.Level,
                ["source"] = e.Source, ["message"] = e.Message,
            });
        return Json(ex, list, ct);
    }

    private async Task FaultsAsync(HttpExchange ex, CancellationToken ct)
    {
        var faults = _sim.Core.Faults;
        switch (ex.Request.Method)
        {
            case "DELETE":
                faults.Clear();
                await Json(ex, new JsonObject { ["cleared"] = true }, ct);
                return;
            case "GET":
                await ex.RespondTextAsync(200, "OK", "application/json", JsonSerializer.Serialize(faults.Describe()), ct);
                return;
            case "POST":
                JsonObject body;
                try
                {
                    body = (await JsonNode.ParseAsync(ex.Request.Body, cancellationToken: ct))?.AsObject() ?? throw new JsonException("empty body");
                    int count = body["count"]?.GetValue<int>() ?? 1;
                    if (body["method"] is { } m)
                        faults.AddMethodFault(new XapiMethodFault((string)m!, (string?)body["error"] ?? "INTERNAL_ERROR",
                            body["params"]?.AsArray().Select(p => (string)p!).ToArray() ?? [], count));
                    else if (body["drop"] is { } d)
                        faults.AddDrop(new TransferDropFault(Channel((string)d!), body["afterBytes"]?.GetValue<long>() ?? 0, count));
                    else if (body["latency"] is { } l)
                        faults.SetLatency(Channel((string)l!), body["ms"]?.GetValue<int>() ?? 0);
                    else if (body["readError"] is { } r)
                        faults.AddReadError(new ReadErrorFault(Channel((string)r!), body["offset"]?.GetValue<long>() ?? 0, count));
                    else throw new JsonException("Give one of: method (+error, params, count); drop (http|nbd, afterBytes, count); latency (http|nbd, ms); readError (http|nbd, offset, count).");
                }
                catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException or ArgumentException)
                {
                    await Error(ex, 400, "Bad Request", e.Message, ct);
                    return;
                }
                await ex.RespondTextAsync(200, "OK", "application/json", JsonSerializer.Serialize(faults.Describe()), ct);
                return;
            default:
                await Error(ex, 405, "Method Not Allowed", "GET, POST or DELETE /sim/faults.", ct);
                return;
        }
    }

    private static TransferChannel Channel(string s) => s.ToLowerInvariant() switch
    {
        "http" => TransferChannel.Http,
        "nbd" => TransferChannel.Nbd,
        _ => throw new ArgumentException($"Channel must be http or nbd, not '{s}'."),
    };
}
