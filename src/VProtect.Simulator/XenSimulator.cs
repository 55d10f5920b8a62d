using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using VProtect.Simulator.Control;
using VProtect.Simulator.DataPlane.Nbd;
using VProtect.Simulator.Database;
using VProtect.Simulator.Faults;
using VProtect.Simulator.Http;
using VProtect.Simulator.Scenario;
using VProtect.Simulator.Storage;
using VProtect.Simulator.Xapi;

namespace VProtect.Simulator;

/// <summary>
/// A simulated XenServer pool (master + one member) speaking XAPI over XML-RPC and JSON-RPC on HTTP and
/// HTTPS, with a JSON control API for tests. Start it with <see cref="StartAsync"/>; dispose to stop.
/// </summary>
public sealed class XenSimulator : IAsyncDisposable
{
    /// <summary>Storage unit of the layers and of the CBT bitmaps.</summary>
    public const int UnitSize = Layer.UnitSize;

    /// <summary>Address of the pool member; loopback /8 lets it share the master's ports (Linux).</summary>
    public static readonly IPAddress MemberAddress = IPAddress.Parse("127.0.0.2");

    private readonly SimulatorCore _core;
    private readonly List<HttpServer> _servers = new();
    private readonly string? _tempDirectory;
    private readonly string? _stateDirectory;
    private int _stopped;
    private XapiNbdService? _nbd;

    private XenSimulator(SimulatorCore core, string? tempDirectory, string? stateDirectory)
    {
        _core = core;
        _tempDirectory = tempDirectory;
        _stateDirectory = stateDirectory;
    }

    public Uri Url { get; private set; } = null!;
    public Uri? HttpsUrl { get; private set; }
    public Uri ControlUrl { get; private set; } = null!;
    /// <summary>The pool member (not master): login there answers HOST_IS_SLAVE [master address].</summary>
    public Uri MemberUrl { get; private set; } = null!;
    public int NbdPort => _core.NbdPort;
    public string User => _core.User;
    public string Password => _core.Password;
    /// <summary>The host certificate (HTTPS, and NBD TLS later).</summary>
    public X509Certificate2 Certificate => _core.Certificate;

    /// <summary>Routes of the master's XAPI listeners; the data plane adds /export, /import... here.</summary>
    public RouteTable Routes { get; } = new();
    /// <summary>Routes of the member's listeners (same handlers by default).</summary>
    public RouteTable MemberRoutes { get; } = new();
    public FaultRegistry Faults => _core.Faults;
    public ScenarioSettings Settings => _core.Settings;

    internal SimulatorCore Core => _core;
    /// <summary>The simulated xapi-nbd listeners (null before start).</summary>
    internal XapiNbdService? Nbd => _nbd;

    /// <summary>Content of a VDI by uuid, as the shared block-device abstractions (writes mark CBT like guest writes).</summary>
    public VdiDisk OpenVdi(string vdiUuid)
        => _core.Storage.Exists(vdiUuid) ? _core.Storage.Open(vdiUuid) : throw new KeyNotFoundException($"No VDI with uuid {vdiUuid}.");

    /// <summary>
    /// The address of the host that sees an SR better (scenario switch srBetterSeenFrom), for the transfer handlers'
    /// 302; null when the master is fine. Accepts the SR's ref, uuid or name_label.
    /// </summary>
    public string? BetterHostAddressForSr(string sr)
    {
        var db = _core.Db;
        lock (db.Gate)
        {
            var srObj = db.TryGet(sr) is { Class: "SR" } byRef ? byRef : db.TryGetByUuid("SR", sr) ?? db.All("SR").FirstOrDefault(s => s.Str("name_label") == sr);
            if (srObj is null || !_core.Settings.SrBetterSeenFrom.TryGetValue(srObj.Str("name_label"), out var hostName)) return null;
            var host = db.All("host").FirstOrDefault(h => h.Str("name_label") == hostName);
            return host is null || host.Ref == _core.MasterRef ? null : host.Str("address");
        }
    }

    /// <summary>The VDI's layer chain, top (writable) first: layer id and allocated 64 KiB units.</summary>
    public IReadOnlyList<VdiLayerInfo> GetLayers(string vdiUuid)
        => _core.Storage.Chain(vdiUuid).Select(l => new VdiLayerInfo(l.Id, l.Frozen, l.Units())).ToList();

    /// <summary>64 KiB unit indexes allocated in the layers not shared by the two VDIs' chains (for format=vhd&amp;base=).</summary>
    public IReadOnlyList<long> GetUnitsDifferingFrom(string vdiUuid, string baseVdiUuid)
        => _core.Storage.UnitsDifferingFrom(vdiUuid, baseVdiUuid).ToList();

    public static async Task<XenSimulator> StartAsync(SimulatorOptions options, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(options);
        var master = IPAddress.Parse(options.BindAddress);
        string? temp = null;
        string dataDir;
        if (options.StateDirectory is { Length: > 0 } state) dataDir = Path.GetFullPath(state);
        else dataDir = temp = Path.Combine(Path.GetTempPath(), "vprotect-sim-" + Guid.NewGuid().ToString("N")[..12]);
        Directory.CreateDirectory(dataDir);
        var cert = HostCertificate.Create(DefaultScenario.MasterName, [master, MemberAddress, IPAddress.Loopback]);
        string password = options.Password ?? Convert.ToHexString(RandomNumberGenerator.GetBytes(12)).ToLowerInvariant();
        var core = new SimulatorCore(dataDir, options.User, password, master, MemberAddress, cert);
        var sim = new XenSimulator(core, temp, options.StateDirectory is null ? null : dataDir);
        try
        {
            sim.LoadOrBuild(options.Scenario);
            var rpc = new RpcEndpoint(core);
            rpc.AddRoutes(sim.Routes);
            rpc.AddRoutes(sim.MemberRoutes);
            var dataPlane = new DataPlane.Http.HttpDataPlane(sim);
            dataPlane.AddRoutes(sim.Routes);
            dataPlane.AddRoutes(sim.MemberRoutes);

            var (http, memberHttp) = sim.ListenPair(master, options.HttpPort, null);
            sim.Url = new Uri($"http://{Host(master)}:{http.EndPoint.Port}/");
            sim.MemberUrl = new Uri($"http://{Host(MemberAddress)}:{memberHttp.EndPoint.Port}/");
            if (options.HttpsPort is int httpsPort)
            {
                var (https, _) = sim.ListenPair(master, httpsPort, cert);
                sim.HttpsUrl = new Uri($"https://{Host(master)}:{https.EndPoint.Port}/");
            }
            core.NbdPort = options.NbdPort != 0 ? options.NbdPort : FreePort(master);
            sim._nbd = await XapiNbdService.StartAsync(core, core.NbdPort, portIsFixed: options.NbdPort != 0, options.NbdAttachDelay).ConfigureAwait(false);
            core.NbdPort = sim._nbd.Port;

            var controlRoutes = new RouteTable();
            new ControlApi(sim).AddRoutes(controlRoutes);
            var control = new HttpServer(master, 0, controlRoutes, null, null);
            control.Start();
            sim._servers.Add(control);
            sim.ControlUrl = new Uri($"http://{Host(master)}:{control.EndPoint.Port}/");
            ct.ThrowIfCancellationRequested();
            return sim;
        }
        catch
        {
            await sim.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private static string Host(IPAddress a) => a.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{a}]" : a.ToString();

    /// <summary>Master on its address and member on 127.0.0.2, same port; retries when a free port is taken on 127.0.0.2.</summary>
    private (HttpServer Master, HttpServer Member) ListenPair(IPAddress master, int port, X509Certificate2? cert)
    {
        for (int attempt = 0; ; attempt++)
        {
            var m = new HttpServer(master, port, Routes, cert, _core.OriginFor(true));
            m.Start();
            var member = new HttpServer(MemberAddress, m.EndPoint.Port, MemberRoutes, cert, _core.OriginFor(false));
            try
            {
                member.Start();
                _servers.Add(m);
                _servers.Add(member);
                return (m, member);
            }
            catch (SocketException) when (port == 0 && attempt < 20)
            {
                m.DisposeAsync().AsTask().GetAwaiter().GetResult();
            }
        }
    }

    private static int FreePort(IPAddress address)
    {
        var l = new TcpListener(address, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    private string DbPath => Path.Combine(_core.DataDirectory, "db.json");

    private void LoadOrBuild(string scenario)
    {
        _scenario = scenario;
        if (_stateDirectory is not null && File.Exists(DbPath) && _core.Storage.Load())
        {
            _core.Settings = DbPersistence.Load(_core.Db, DbPath);
            return;
        }
        ScenarioBuilder.Build(_core, ScenarioBuilder.Load(scenario));
    }

    private string _scenario = "default";

    /// <summary>Drops all state (VMs, VDIs, sessions, faults) and rebuilds the scenario the simulator started with.</summary>
    public void Reset()
    {
        lock (_core.Db.Gate)
        {
            _core.Faults.Clear();
            _core.Log.Clear();
            _core.Db.Clear();
            _core.Storage.Clear();
            ScenarioBuilder.Build(_core, ScenarioBuilder.Load(_scenario));
        }
    }

    /// <summary>Writes db.json and storage.json (only with a state directory).</summary>
    public void SaveState()
    {
        if (_stateDirectory is null) return;
        lock (_core.Db.Gate)
        {
            _core.Storage.Save();
            DbPersistence.Save(_core.Db, _core.Settings, DbPath);
        }
    }

    public async Task StopAsync()
    {
        if (Interlocked.Exchange(ref _stopped, 1) != 0) return;
        if (_nbd is not null) await _nbd.DisposeAsync().ConfigureAwait(false);
        foreach (var s in _servers) await s.DisposeAsync().ConfigureAwait(false);
        _servers.Clear();
        SaveState();
        _core.Dispose();
        if (_tempDirectory is not null)
        {
            try { Directory.Delete(_tempDirectory, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { }
        }
    }

    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);
}

/// <summary>One layer of a VDI chain (like one VHD of a XenServer chain).</summary>
public sealed record VdiLayerInfo(string Id, bool Frozen, IReadOnlyList<long> AllocatedUnits);
