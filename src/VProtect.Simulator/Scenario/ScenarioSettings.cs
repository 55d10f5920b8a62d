namespace VProtect.Simulator.Scenario;

/// <summary>How VM.snapshot_with_quiesce behaves: removed (current hosts), works (pre-8.1 with VSS), or fails.</summary>
public enum QuiesceMode { Removed, Works, Fails }

/// <summary>Behaviour switches a scenario can set (docs/simulator.md, "Scenario files").</summary>
public sealed class ScenarioSettings
{
    /// <summary>Pool licence lacks CBT: VDI.enable_cbt answers LICENCE_RESTRICTION ["CBT"] (pool.restrictions restrict_cbt=true).</summary>
    public bool RestrictCbt { get; set; }
    public QuiesceMode SnapshotWithQuiesce { get; set; } = QuiesceMode.Removed;
    /// <summary>SR name_label -> host name_label that sees it better; transfer handlers answer 302 to that host.</summary>
    public Dictionary<string, string> SrBetterSeenFrom { get; set; } = new(StringComparer.Ordinal);
}
