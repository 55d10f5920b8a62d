namespace VProtect.Simulator;

/// <summary>How to start a <see cref="XenSimulator"/>. Ports 0 mean "pick a free port".</summary>
public sealed class SimulatorOptions
{
    /// <summary>The master's address. The pool member listens on 127.0.0.2 with the same ports.</summary>
    public string BindAddress { get; set; } = "127.0.0.1";
    public int HttpPort { get; set; } = 0;
    /// <summary>null = no HTTPS listener.</summary>
    public int? HttpsPort { get; set; } = 0;
    /// <summary>Port of the simulated xapi-nbd on every host address (reported by VDI.get_nbd_info).</summary>
    public int NbdPort { get; set; } = 0;
    /// <summary>How long an NBD connect spends plugging the VDI into dom0 (xapi-nbd connects are slow).</summary>
    public TimeSpan NbdAttachDelay { get; set; } = TimeSpan.FromMilliseconds(100);
    public string User { get; set; } = "root";
    /// <summary>null = a random password (read it back from <see cref="XenSimulator.Password"/>).</summary>
    public string? Password { get; set; }
    /// <summary>"default", "empty" or the path of a .json scenario (docs/simulator.md).</summary>
    public string Scenario { get; set; } = "default";
    /// <summary>When set, the DB and VDI contents are kept there and reloaded on the next start.</summary>
    public string? StateDirectory { get; set; }
}
