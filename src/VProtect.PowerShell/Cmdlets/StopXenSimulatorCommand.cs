using System.Management.Automation;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Stop-XenSimulator: stops the given simulators, or every simulator this runspace started.</summary>
[Cmdlet(VerbsLifecycle.Stop, "XenSimulator", SupportsShouldProcess = true)]
public sealed class StopXenSimulatorCommand : VProtectCmdlet
{
    [Parameter(Position = 0, ValueFromPipeline = true)]
    [ValidateNotNull]
    public XenSimulatorInfo[]? Simulator { get; set; }

    protected override void ProcessRecord()
    {
        var targets = Simulator ?? SimulatorRegistry.OfRunspace(SimulatorRegistry.CurrentRunspaceId).ToArray();
        foreach (var simulator in targets)
        {
            if (!simulator.IsRunning) continue;
            if (!ShouldProcess($"XenServer simulator at {simulator.Url}", "Stop")) continue;
            TryRunEngine((_, _) => SimulatorRegistry.StopAsync(simulator), simulator);
        }
    }
}
