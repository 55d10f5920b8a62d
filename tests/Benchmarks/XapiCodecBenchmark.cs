using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Xml.Linq;
using VProtect.Core.Xapi.Wire;

namespace VProtect.Benchmarks;

/// <summary>
/// Decoding a pool-sized VM.get_all_records answer with our XML-RPC and JSON-RPC codecs, against a plain parse of the
/// same bytes by the framework (XDocument / JsonDocument: the floor any decoder pays). Ratio = ours / plain parse time.
/// </summary>
public sealed class XapiCodecBenchmark : IBenchmark
{
    public string Name => "xapi-codec";

    public Task RunAsync(BenchmarkContext context, TextWriter report, CancellationToken cancellationToken)
    {
        var vms = context.Quick ? 200 : 2000;
        var iterations = context.Quick ? 5 : 20;
        var records = BuildRecords(vms);
        var xml = XmlRpc.EncodeSuccess(records);
        var json = JsonRpc.EncodeSuccess(records, 1L, JsonRpcVersion.V2);

        var xmlOurs = Measure(iterations, () => XmlRpc.DecodeResponse(xml), cancellationToken);
        var xmlPlain = Measure(iterations, () => XDocument.Parse(xml), cancellationToken);
        var jsonOurs = Measure(iterations, () => JsonRpc.DecodeResponse(json), cancellationToken);
        var jsonPlain = Measure(iterations, () => { using var d = JsonDocument.Parse(json); return d; }, cancellationToken);
        var xmlEncode = Measure(iterations, () => XmlRpc.EncodeSuccess(records), cancellationToken);
        var jsonEncode = Measure(iterations, () => JsonRpc.EncodeSuccess(records, 1L, JsonRpcVersion.V2), cancellationToken);

        double Mbps(int bytes, TimeSpan t) => bytes / t.TotalSeconds / (1 << 20);
        var xmlBytes = Encoding.UTF8.GetByteCount(xml);
        var jsonBytes = Encoding.UTF8.GetByteCount(json);
        report.WriteLine($"## xapi-codec: VM.get_all_records with {vms} VMs (median of {iterations})");
        report.WriteLine();
        report.WriteLine("| step | size | ours | plain framework parse | ratio |");
        report.WriteLine("|---|---|---|---|---|");
        report.WriteLine($"| XML-RPC decode | {xmlBytes >> 10} KiB | {xmlOurs.TotalMilliseconds:0.0} ms ({Mbps(xmlBytes, xmlOurs):0} MiB/s) | XDocument {xmlPlain.TotalMilliseconds:0.0} ms | {xmlOurs / xmlPlain:0.00} |");
        report.WriteLine($"| JSON-RPC decode | {jsonBytes >> 10} KiB | {jsonOurs.TotalMilliseconds:0.0} ms ({Mbps(jsonBytes, jsonOurs):0} MiB/s) | JsonDocument {jsonPlain.TotalMilliseconds:0.0} ms | {jsonOurs / jsonPlain:0.00} |");
        report.WriteLine($"| XML-RPC encode | {xmlBytes >> 10} KiB | {xmlEncode.TotalMilliseconds:0.0} ms ({Mbps(xmlBytes, xmlEncode):0} MiB/s) | | |");
        report.WriteLine($"| JSON-RPC encode | {jsonBytes >> 10} KiB | {jsonEncode.TotalMilliseconds:0.0} ms ({Mbps(jsonBytes, jsonEncode):0} MiB/s) | | |");
        report.WriteLine();
        return Task.CompletedTask;
    }

    private static TimeSpan Measure(int iterations, Func<object> action, CancellationToken ct)
    {
        GC.KeepAlive(action()); // warm-up (JIT)
        var times = new List<TimeSpan>(iterations);
        for (var i = 0; i < iterations; i++)
        {
            ct.ThrowIfCancellationRequested();
            var sw = Stopwatch.StartNew();
            GC.KeepAlive(action());
            times.Add(sw.Elapsed);
        }
        times.Sort();
        return times[times.Count / 2];
    }

    private static Dictionary<string, object?> BuildRecords(int count)
    {
        var all = new Dictionary<string, object?>(count);
        for (var i = 0; i < count; i++)
        {
            all[$"OpaqueRef:{Guid.NewGuid()}"] = new Dictionary<string, object?>
            {
                ["uuid"] = Guid.NewGuid().ToString(), ["name_label"] = $"vm-{i:00000} <web & db>", ["name_description"] = "",
                ["power_state"] = i % 3 == 0 ? "Running" : "Halted", ["is_a_template"] = false, ["is_a_snapshot"] = false,
                ["memory_static_max"] = 4294967296L, ["memory_dynamic_max"] = 4294967296L, ["memory_dynamic_min"] = 2147483648L,
                ["VCPUs_max"] = 4L, ["VCPUs_at_startup"] = 4L, ["snapshot_time"] = DateTime.UnixEpoch,
                ["VBDs"] = new object?[] { $"OpaqueRef:{Guid.NewGuid()}", $"OpaqueRef:{Guid.NewGuid()}", $"OpaqueRef:{Guid.NewGuid()}" },
                ["VIFs"] = new object?[] { $"OpaqueRef:{Guid.NewGuid()}" }, ["snapshots"] = Array.Empty<object?>(), ["tags"] = Array.Empty<object?>(),
                ["other_config"] = new Dictionary<string, object?> { ["base_template_name"] = "Debian Bookworm 12", ["mac_seed"] = Guid.NewGuid().ToString() },
                ["platform"] = new Dictionary<string, object?> { ["timeoffset"] = "0", ["device-model"] = "qemu-upstream-compat", ["secureboot"] = "false" },
                ["HVM_boot_policy"] = "BIOS order", ["HVM_boot_params"] = new Dictionary<string, object?> { ["order"] = "cdn" },
                ["domain_type"] = "hvm", ["resident_on"] = "OpaqueRef:NULL", ["affinity"] = "OpaqueRef:NULL",
                ["allowed_operations"] = new object?[] { "snapshot", "clone", "copy", "export", "start", "destroy" },
                ["current_operations"] = new Dictionary<string, object?>(), ["blocked_operations"] = new Dictionary<string, object?>(),
                ["HVM_shadow_multiplier"] = 1.0,
            };
        }
        return all;
    }
}
