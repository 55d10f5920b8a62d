using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;

namespace VProtect.Benchmarks;

/// <summary>
/// The simulator as its own process (<c>dotnet VProtect.Simulator.dll</c>, as <c>Start-XenSimulator</c> runs it), so
/// the benchmark process holds only the engine: its peak working set is the engine's memory, and the host's work
/// (VHD export, xapi-nbd, import) competes for the CPU as a separate process, as a real host's would not at all.
/// Guest writes and hashes go through the control API over HTTP.
/// </summary>
internal sealed class CbtSimulatorProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly Task _stderr;
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromMinutes(30) };

    private CbtSimulatorProcess(Process process, JsonObject info)
    {
        _process = process;
        _stderr = Task.Run(async () => { while (await process.StandardError.ReadLineAsync() is { } line) Console.Error.WriteLine("  [simulator] " + line); });
        Url = new Uri((string)info["url"]!);
        ControlUrl = new Uri((string)info["controlUrl"]!);
        NbdPort = (int)info["nbdPort"]!;
        User = (string)info["user"]!;
        Password = (string)info["password"]!;
    }

    public Uri Url { get; }
    public Uri ControlUrl { get; }
    public int NbdPort { get; }
    public string User { get; }
    public string Password { get; }
    public int ProcessId => _process.Id;

    /// <summary>Starts the simulator with <paramref name="scenario"/> (a .json path) and waits for its endpoints line (the scenario's fills run first).</summary>
    public static async Task<CbtSimulatorProcess> StartAsync(string scenario, CancellationToken ct)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "VProtect.Simulator.dll");
        if (!File.Exists(dll)) throw new FileNotFoundException("The simulator is not next to the benchmarks; build tests/Benchmarks.", dll);
        var psi = new ProcessStartInfo("dotnet")
        {
            UseShellExecute = false, RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true,
        };
        foreach (var a in new[] { dll, "--scenario", scenario, "--https-port", "none" }) psi.ArgumentList.Add(a);
        var p = Process.Start(psi) ?? throw new InvalidOperationException("Could not start dotnet.");
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(TimeSpan.FromMinutes(20));
            string? line = await p.StandardOutput.ReadLineAsync(timeout.Token);
            if (line is null) throw new InvalidOperationException("The simulator exited at start: " + await p.StandardError.ReadToEndAsync(ct));
            return new CbtSimulatorProcess(p, JsonNode.Parse(line)!.AsObject());
        }
        catch
        {
            try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            p.Dispose();
            throw;
        }
    }

    /// <summary>A guest write of the simulator's deterministic data (marks CBT like any guest write).</summary>
    public async Task WriteAsync(string vdiUuid, long offset, long length, long seed, CancellationToken ct)
    {
        var uri = new Uri(ControlUrl, string.Create(CultureInfo.InvariantCulture, $"sim/vdi/{vdiUuid}/write?offset={offset}&length={length}&seed={seed}"));
        using var r = await _http.PostAsync(uri, null, ct);
        if (!r.IsSuccessStatusCode) throw new InvalidOperationException($"Control API write failed: {(int)r.StatusCode} {await r.Content.ReadAsStringAsync(ct)}");
    }

    /// <summary>SHA-256 (hex, upper case) of a VDI's whole virtual content, computed by the simulator.</summary>
    public async Task<string> Sha256Async(string vdiUuid, CancellationToken ct)
    {
        var json = JsonNode.Parse(await _http.GetStringAsync(new Uri(ControlUrl, $"sim/vdi/{vdiUuid}/sha256"), ct))!;
        return ((string)json["sha256"]!).ToUpperInvariant();
    }

    /// <summary>Resident set of the simulator process (for the report: it is the host's memory, not ours).</summary>
    public long PeakWorkingSet()
    {
        _process.Refresh();
        return _process.PeakWorkingSet64;
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        try
        {
            _process.StandardInput.Close(); // the simulator stops when stdin closes
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await _process.WaitForExitAsync(cts.Token);
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or InvalidOperationException)
        {
            try { _process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
        }
        try { await _stderr.WaitAsync(TimeSpan.FromSeconds(5)); } catch (TimeoutException) { }
        _process.Dispose();
    }
}
