namespace VProtect.Simulator;

/// <summary>One line of the simulator's log: what xapi would write to xensource.log for the same event.</summary>
internal sealed record SimulatorLogEntry(long Seq, DateTimeOffset Time, string Level, string Source, string Message);

/// <summary>
/// A bounded in-memory stand-in for xapi's xensource.log, for things xapi only logs (e.g. checksum failures ignored by
/// <c>PUT /import?force=true</c>). Keeps the last <see cref="Capacity"/> entries; <c>GET /sim/log</c> shows them.
/// </summary>
internal sealed class SimulatorLog
{
    public const int Capacity = 1000;
    private readonly Queue<SimulatorLogEntry> _entries = new();
    private readonly object _gate = new();
    private long _seq;

    public void Write(string level, string source, string message)
    {
        lock (_gate)
        {
            _entries.Enqueue(new SimulatorLogEntry(++_seq, DateTimeOffset.UtcNow, level, source, message));
            while (_entries.Count > Capacity) _entries.Dequeue();
        }
    }

    /// <summary>Entries with a sequence number above <paramref name="afterSeq"/>, oldest first.</summary>
    public IReadOnlyList<SimulatorLogEntry> Since(long afterSeq)
    {
        lock (_gate) return _entries.Where(e => e.Seq > afterSeq).ToArray();
    }

    public void Clear()
    {
        lock (_gate) _entries.Clear();
    }
}
