namespace VProtect.Benchmarks;

/// <summary>
/// Peak memory of this process over one phase, two ways: the kernel's peak resident set (VmHWM in /proc/self/status,
/// reset at the start of the phase by writing 5 to /proc/self/clear_refs) and a 20 ms sampler of the working set and
/// of the managed heap (GC.GetTotalMemory, without forcing a collection). The process runs only the engine and the
/// benchmark driver (the simulator is another process), so this is the memory one VM's backup or restore costs,
/// runtime included.
/// </summary>
internal sealed class CbtMemoryProbe : IAsyncDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _sampler;
    private long _peakSampled, _peakManaged;

    private CbtMemoryProbe(bool hwmReset)
    {
        HwmReset = hwmReset;
        BaselineWorkingSet = Environment.WorkingSet;
        _sampler = Task.Run(async () =>
        {
            while (!_stop.IsCancellationRequested)
            {
                _peakSampled = Math.Max(_peakSampled, Environment.WorkingSet);
                _peakManaged = Math.Max(_peakManaged, GC.GetTotalMemory(false));
                try { await Task.Delay(20, _stop.Token); } catch (OperationCanceledException) { }
            }
        });
    }

    /// <summary>Whether the kernel's peak could be reset for this phase (else VmHWM is the peak since process start).</summary>
    public bool HwmReset { get; }
    public long BaselineWorkingSet { get; }
    public long PeakWorkingSet { get; private set; }
    public long PeakManagedHeap => _peakManaged;

    public static CbtMemoryProbe Start()
    {
        // Drop what earlier phases left in the managed heap, so the peak is this phase's.
        GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        bool reset;
        try
        {
            File.WriteAllText("/proc/self/clear_refs", "5");
            reset = true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { reset = false; }
        return new CbtMemoryProbe(reset);
    }

    /// <summary>Stops sampling and fixes <see cref="PeakWorkingSet"/> (the larger of VmHWM and the sampled peak).</summary>
    public async Task StopAsync()
    {
        if (_stop.IsCancellationRequested) return;
        _stop.Cancel();
        await _sampler;
        PeakWorkingSet = Math.Max(_peakSampled, ReadHwm() ?? 0);
    }

    private static long? ReadHwm()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/self/status"))
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                    return long.Parse(line["VmHWM:".Length..].Trim().Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        }
        catch (IOException) { }
        return null;
    }

    public async ValueTask DisposeAsync()
    {
        await StopAsync();
        _stop.Dispose();
    }
}
