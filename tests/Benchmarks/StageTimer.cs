using System.Diagnostics;
using System.Globalization;
using VProtect.Core.Backup;

namespace VProtect.Benchmarks;

/// <summary>
/// A backup observer that timestamps every change of stage the engine and strategy report (snapshot, metadata, export
/// request, streaming, flush, task completion, commit, release), so a benchmark can print where a run's time went.
/// </summary>
public sealed class StageTimer : IBackupObserver
{
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private readonly List<(string Stage, TimeSpan At)> _marks = new();
    private readonly object _gate = new();
    private string? _current;
    private readonly Action<string>? _log;

    /// <param name="log">Also told each stage, warning and verbose message as it happens, with the seconds since the start.</param>
    public StageTimer(Action<string>? log = null) => _log = log;

    public void OnProgress(BackupProgress progress)
    {
        string stage = progress.Disk is null ? progress.Stage : $"{progress.Stage} ({progress.Disk})";
        lock (_gate)
        {
            if (stage == _current) return;
            _current = stage;
            _marks.Add((stage, _clock.Elapsed));
            Log("stage " + stage);
        }
    }

    public void OnWarning(string message) => Log("warning: " + message);
    public void OnVerbose(string message) => Log(message);

    private void Log(string message) => _log?.Invoke(string.Create(CultureInfo.InvariantCulture, $"{_clock.Elapsed.TotalSeconds:F3} {message}"));

    /// <summary>Call when the run returned: closes the last stage.</summary>
    public void Stop()
    {
        lock (_gate) _marks.Add(("(returned)", _clock.Elapsed));
        Log("(returned)");
    }

    /// <summary>(stage, seconds) in order; a stage seen again later (interleaved progress) is a separate row.</summary>
    public IReadOnlyList<(string Stage, double Seconds)> Steps()
    {
        lock (_gate)
        {
            var steps = new List<(string, double)>();
            if (_marks.Count > 0) steps.Add(("(before the first stage: VM record, disks, lock)", _marks[0].At.TotalSeconds));
            for (int i = 0; i + 1 < _marks.Count; i++) steps.Add((_marks[i].Stage, (_marks[i + 1].At - _marks[i].At).TotalSeconds));
            return steps;
        }
    }

    /// <summary>A markdown table of the steps with their share of the whole.</summary>
    public void WriteTable(TextWriter report, string title)
    {
        var steps = Steps();
        double total = steps.Sum(s => s.Seconds);
        var ci = CultureInfo.InvariantCulture;
        report.WriteLine($"{title} (total {total.ToString("F3", ci)} s):");
        report.WriteLine();
        report.WriteLine("| Step | Seconds | Share |");
        report.WriteLine("|---|---:|---:|");
        foreach (var (stage, seconds) in steps)
            report.WriteLine(string.Format(ci, "| {0} | {1:F3} | {2:F1} % |", stage, seconds, total > 0 ? 100 * seconds / total : 0));
        report.WriteLine();
    }
}
