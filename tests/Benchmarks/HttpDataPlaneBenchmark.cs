using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text.Json;
using VProtect.Core.Xapi.Wire;
using VProtect.Simulator;
using VProtect.Simulator.Storage;

namespace VProtect.Benchmarks;

/// <summary>
/// The simulator's HTTP transfer handlers over loopback: GET /export_raw_vdi (raw and vhd) and PUT /import_raw_vdi
/// of a fully written disk, against reading the same VDI in-process through VdiDisk in 1 MiB pieces (the handlers'
/// own source). Ratio = HTTP / in-process (time): the cost of the HTTP path and the socket.
/// </summary>
public sealed class HttpDataPlaneBenchmark : IBenchmark
{
    public string Name => "sim-http";

    public async Task RunAsync(BenchmarkContext context, TextWriter report, CancellationToken ct)
    {
        long size = context.Quick ? 64L << 20 : 512L << 20;
        Directory.CreateDirectory(context.WorkDirectory);
        var scenarioPath = Path.Combine(context.WorkDirectory, "sim-http.json");
        await File.WriteAllTextAsync(scenarioPath, JsonSerializer.Serialize(new
        {
            @base = "empty",
            vms = new object[] { new { name = "bench", powerState = "Halted", disks = new object[] { new { name = "bench disk", size, fill = new object[] { new { offset = 0, length = size, seed = 7 } } } } } },
        }), ct);
        await using var sim = await XenSimulator.StartAsync(new SimulatorOptions { Scenario = scenarioPath, HttpsPort = null }, ct);
        using var http = new HttpClient { Timeout = TimeSpan.FromMinutes(10) };
        async Task<object?> Call(string method, params object?[] args)
        {
            using var r = await http.PostAsync(sim.Url, new StringContent(XmlRpc.EncodeMethodCall(method, args), System.Text.Encoding.UTF8, "text/xml"), ct);
            return XmlRpc.DecodeResponse(await r.Content.ReadAsStringAsync(ct)).Value;
        }
        var session = (string)(await Call("session.login_with_password", sim.User, sim.Password))!;
        var vdi = (string)((object?[])(await Call("VDI.get_by_name_label", session, "bench disk"))!)[0]!;
        var uuid = (string)(await Call("VDI.get_uuid", session, vdi))!;
        var disk = sim.OpenVdi(uuid);
        var buffer = new byte[1 << 20];

        var local = await MeasureAsync(async () => { for (long o = 0; o < size; o += buffer.Length) await disk.ReadAsync(o, buffer, ct); });
        async Task<long> Get(string format)
        {
            using var resp = await http.GetAsync(new Uri(sim.Url, $"export_raw_vdi?session_id={session}&vdi={uuid}&format={format}"), HttpCompletionOption.ResponseHeadersRead, ct);
            await using var s = await resp.Content.ReadAsStreamAsync(ct);
            long n = 0; int k;
            while ((k = await s.ReadAsync(buffer, ct)) > 0) n += k;
            return n;
        }
        long rawBytes = 0, vhdBytes = 0;
        var raw = await MeasureAsync(async () => rawBytes = await Get("raw"));
        var vhd = await MeasureAsync(async () => vhdBytes = await Get("vhd"));
        var put = await MeasureAsync(async () =>
        {
            var content = new StreamContent(new VdiReadStream(disk));
            content.Headers.ContentLength = size;
            content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
            using var resp = await http.PutAsync(new Uri(sim.Url, $"import_raw_vdi?session_id={session}&vdi={uuid}&format=raw"), content, ct);
            await resp.Content.ReadAsByteArrayAsync(ct);
        });

        double Mibs(long bytes, TimeSpan t) => bytes / t.TotalSeconds / (1 << 20);
        string Row(string step, long bytes, (TimeSpan Wall, TimeSpan Cpu) m) =>
            $"| {step} | {m.Wall.TotalMilliseconds:0} ms, {Mibs(bytes, m.Wall):0} MiB/s (CPU {m.Cpu.TotalMilliseconds:0} ms) | {m.Wall / local.Wall:0.00} |";
        report.WriteLine($"## sim-http: HTTP transfer handlers over loopback, {size >> 20} MiB fully written VDI");
        report.WriteLine();
        report.WriteLine("| step | time | ratio to in-process read (time) |");
        report.WriteLine("|---|---|---|");
        report.WriteLine(Row("in-process VdiDisk read, 1 MiB pieces", size, local));
        report.WriteLine(Row("GET /export_raw_vdi format=raw", rawBytes, raw));
        report.WriteLine(Row($"GET /export_raw_vdi format=vhd ({vhdBytes >> 20} MiB out)", vhdBytes, vhd));
        report.WriteLine(Row("PUT /import_raw_vdi format=raw (same content back)", size, put));
        report.WriteLine();
        if (rawBytes != size) throw new InvalidOperationException($"raw export gave {rawBytes} bytes, expected {size}.");
    }

    private static async Task<(TimeSpan Wall, TimeSpan Cpu)> MeasureAsync(Func<Task> action)
    {
        var cpu0 = Process.GetCurrentProcess().TotalProcessorTime;
        var sw = Stopwatch.StartNew();
        await action();
        return (sw.Elapsed, Process.GetCurrentProcess().TotalProcessorTime - cpu0);
    }

    /// <summary>A VDI as a forward-only stream, for the upload body.</summary>
    private sealed class VdiReadStream(VdiDisk disk) : Stream
    {
        private long _position;
        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => disk.Length;
        public override long Position { get => _position; set => throw new NotSupportedException(); }
        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            int n = (int)Math.Min(buffer.Length, disk.Length - _position);
            if (n <= 0) return 0;
            await disk.ReadAsync(_position, buffer[..n], cancellationToken);
            _position += n;
            return n;
        }
        public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();
        public override void Flush() { }
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
    }
}
