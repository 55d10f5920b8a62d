namespace VProtect.Simulator.Scenario;

/// <summary>How VM.snapshot_with_quiesce behaves: removed (current hosts), works (pre-8.1 with VSS), or fails.</summary>
public enum QuiesceMode { Removed, Works, Fails }

/// <summary>
/// How VDI.resize_online behaves: removed (released hosts: the call was removed in XS 7.3 and only reintroduced in
/// xapi after 26.16.1), unsupported (a host that has the call, on an SR whose driver does not declare
/// VDI_RESIZE_ONLINE, which no stock SM driver does), or works (the SR declares it).
/// </summary>
public enum ResizeOnlineMode { Removed, Unsupported, Works }

/// <summary>Behaviour switches a scenario can set (docs/simulator.md, "Scenario files").</summary>
public sealed class ScenarioSettings
{
    /// <summary>Pool licence lacks CBT: VDI.enable_cbt answers LICENCE_RESTRICTION ["CBT"] (pool.restrictions restrict_cbt=true).</summary>
    public bool RestrictCbt { get; set; }
    public QuiesceMode SnapshotWithQuiesce { get; set; } = QuiesceMode.Removed;
    public ResizeOnlineMode ResizeOnline { get; set; } = ResizeOnlineMode.Removed;
    /// <summary>
    /// False models a host older than xapi 21.4, whose VM.snapshot has no ignore_vdis parameter: the 3-argument form
    /// answers MESSAGE_PARAMETER_COUNT_MISMATCH ["VM.snapshot", "2", "3"].
    /// </summary>
    public bool SnapshotIgnoreVdis { get; set; } = true;
    /// <summary>SR name_label -> host name_label that sees it better; transfer handlers answer 302 to that host.</summary>
    public Dictionary<string, string> SrBetterSeenFrom { get; set; } = new(StringComparer.Ordinal);
}
