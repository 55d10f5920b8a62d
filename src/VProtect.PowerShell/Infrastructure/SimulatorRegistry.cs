using System.Collections.Concurrent;
using System.Management.Automation;
using System.Management.Automation.Runspaces;

namespace VProtect.PowerShell.Infrastructure;

/// <summary>
/// Simulators started in this process, by runspace. They are stopped by Stop-XenSimulator, when the module is
/// removed from the runspace, when the runspace closes, and when the process exits.
/// </summary>
internal static class SimulatorRegistry
{
    private static readonly ConcurrentDictionary<XenSimulatorInfo, byte> Running = new();
    private static readonly ConcurrentDictionary<Guid, byte> WatchedRunspaces = new();
    private static int _exitHookInstalled;
    private static readonly TimeSpan StopTimeout = TimeSpan.FromSeconds(10);

    public static void Add(XenSimulatorInfo simulator)
    {
        if (Interlocked.Exchange(ref _exitHookInstalled, 1) == 0)
            AppDomain.CurrentDomain.ProcessExit += (_, _) => StopAll(_ => true);
        Running[simulator] = 0;
        var runspace = Runspace.DefaultRunspace;
        if (runspace is not null && WatchedRunspaces.TryAdd(runspace.InstanceId, 0))
        {
            runspace.StateChanged += (_, e) =>
            {
                if (e.RunspaceStateInfo.State is RunspaceState.Closed or RunspaceState.Broken)
                {
                    StopAll(s => s.RunspaceId == runspace.InstanceId);
                    WatchedRunspaces.TryRemove(runspace.InstanceId, out byte _);
                }
            };
        }
    }

    public static IReadOnlyList<XenSimulatorInfo> OfRunspace(Guid runspaceId) =>
        Running.Keys.Where(s => s.RunspaceId == runspaceId).ToList();

    public static async Task StopAsync(XenSimulatorInfo simulator)
    {
        if (!Running.TryRemove(simulator, out _)) return; // already stopped: nothing to do
        simulator.IsRunning = false;
        await simulator.Simulator.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>Synchronous best effort for cleanup paths that cannot await (module removal, process exit).</summary>
    public static void StopAll(Func<XenSimulatorInfo, bool> which)
    {
        foreach (var simulator in Running.Keys.Where(which).ToList())
        {
            try { StopAsync(simulator).Wait(StopTimeout); }
            catch (Exception) { /* shutting down: nothing useful to report to */ }
        }
    }

    public static Guid CurrentRunspaceId => Runspace.DefaultRunspace?.InstanceId ?? Guid.Empty;
}

/// <summary>Stops the simulators of the runspace that removes the module (Remove-Module).</summary>
public sealed class ModuleLifetime : IModuleAssemblyCleanup
{
    public void OnRemove(PSModuleInfo psModuleInfo)
    {
        var runspaceId = SimulatorRegistry.CurrentRunspaceId;
        SimulatorRegistry.StopAll(s => s.RunspaceId == runspaceId);
    }
}
