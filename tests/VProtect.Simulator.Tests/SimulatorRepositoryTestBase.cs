using VProtect.Core.Repository;
using VProtect.Core.Xapi;
using VProtect.Simulator.Scenario;

namespace VProtect.Simulator.Tests;

/// <summary>
/// A test class with its own in-process simulator (HTTP only, default scenario), a logged-in session and an empty
/// backup repository; all three are removed after the class's tests. Subclasses add their own set-up in the hooks.
/// </summary>
public abstract class SimulatorRepositoryTestBase : IAsyncLifetime
{
    protected XenSimulator Sim { get; private set; } = null!;
    protected XapiSession Session { get; private set; } = null!;
    protected BackupRepository Repo { get; private set; } = null!;
    protected string RepoPath { get; }

    protected SimulatorRepositoryTestBase() =>
        RepoPath = Path.Combine(Path.GetTempPath(), "vprotect-sim-tests", $"{GetType().Name}-{Guid.NewGuid():n}");

    /// <summary>Runs once the simulator listens, before the login (wrap routes, install handlers).</summary>
    protected virtual void ConfigureSimulator(XenSimulator sim) { }

    /// <summary>Runs once logged in, with the repository open.</summary>
    protected virtual Task InitializeTestAsync() => Task.CompletedTask;

    public async Task InitializeAsync()
    {
        Sim = await XenSimulator.StartAsync(new SimulatorOptions { HttpsPort = null });
        ConfigureSimulator(Sim);
        Session = await XapiSession.LoginAsync(Sim.Url, Sim.User, Sim.Password);
        Repo = BackupRepository.Open(RepoPath, create: true);
        await InitializeTestAsync();
    }

    public async Task DisposeAsync()
    {
        await Session.DisposeAsync();
        await Sim.DisposeAsync();
        try { Directory.Delete(RepoPath, recursive: true); } catch (DirectoryNotFoundException) { }
    }

    protected static CancellationToken Timeout() => Timeout(TimeSpan.FromMinutes(3));
    protected static CancellationToken Timeout(TimeSpan limit) => new CancellationTokenSource(limit).Token;

    /// <summary>Gives the management network an NBD purpose, as Enable-XenNbd does.</summary>
    protected async Task AddNbdPurposeAsync(string purpose = "nbd")
    {
        var net = (await Session.GetByNameLabelAsync("network", DefaultScenario.ManagementNetwork)).Single();
        await Session.CallAsync("network.add_purpose", new object?[] { net, purpose });
    }
}
