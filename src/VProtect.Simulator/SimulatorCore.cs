using System.Net;
using System.Security.Cryptography.X509Certificates;
using VProtect.Core.Xapi.Wire;
using VProtect.Simulator.Database;
using VProtect.Simulator.Faults;
using VProtect.Simulator.Scenario;
using VProtect.Simulator.Storage;
using VProtect.Simulator.Xapi;

namespace VProtect.Simulator;

/// <summary>
/// The simulated pool behind every listener: object DB, VDI storage, sessions, tasks, events, faults and
/// the dispatcher with every call registered. Listeners (XAPI on master and member, control API) share it.
/// </summary>
internal sealed class SimulatorCore : IDisposable
{
    public SimulatorCore(string dataDirectory, string user, string password, IPAddress masterAddress, IPAddress memberAddress, X509Certificate2 certificate)
    {
        DataDirectory = dataDirectory;
        User = user;
        Password = password;
        MasterAddress = masterAddress;
        MemberAddress = memberAddress;
        Certificate = certificate;
        Db = new XapiDatabase();
        Storage = new VdiStorage(dataDirectory);
        Sessions = new SessionManager(this);
        Tasks = new TaskManager(this);
        Events = new EventManager(this);
        Dispatcher = new XapiDispatcher(this);
        Sessions.Register(Dispatcher);
        Tasks.Register(Dispatcher);
        Events.Register(Dispatcher);
        new PoolCalls(this).Register(Dispatcher);
        new VmCalls(this).Register(Dispatcher);
        new VdiCalls(this).Register(Dispatcher);
        new NetworkCalls(this).Register(Dispatcher);
    }

    public string DataDirectory { get; }
    public string User { get; }
    public string Password { get; set; }
    public IPAddress MasterAddress { get; }
    public IPAddress MemberAddress { get; }
    public X509Certificate2 Certificate { get; }
    public int NbdPort { get; set; } = 10809;
    public XapiDatabase Db { get; }
    public VdiStorage Storage { get; }
    public SessionManager Sessions { get; }
    public TaskManager Tasks { get; }
    public EventManager Events { get; }
    public XapiDispatcher Dispatcher { get; }
    public FaultRegistry Faults { get; } = new();
    public SimulatorLog Log { get; } = new();
    public ScenarioSettings Settings { get; set; } = new();

    public string MasterRef => (string)Db.All("pool").Single().Fields["master"]!;
    public string MemberRef => Db.All("host").First(h => h.Ref != MasterRef).Ref;

    /// <summary>task.result is the XML-RPC &lt;value&gt; fragment of the return value (taskHelper.ml).</summary>
    public string EncodeResultValue(object? value) => XmlRpc.EncodeValue(value ?? "");

    public CallOrigin OriginFor(bool master) => new(master);

    public string HostRefFor(CallOrigin origin) => origin.IsMaster ? MasterRef : MemberRef;

    public void Dispose() => Storage.Dispose();
}
