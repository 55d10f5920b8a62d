using System.Net;
using System.Net.Sockets;
using VProtect.Core.Nbd;

namespace VProtect.Simulator.DataPlane.Nbd;

/// <summary>
/// xapi-nbd of every simulated host: the NBD library's strict xapi-nbd mode on the NBD port of each loopback IP of
/// the host's PIFs (the addresses VDI.get_nbd_info hands out), 16 connections per listener, host certificate for TLS.
/// </summary>
internal sealed class XapiNbdService : IAsyncDisposable
{
    /// <summary>xapi-nbd's connection cap (ocaml/nbd/lib/consts.ml).</summary>
    public const int MaxConnectionsPerHost = 16;

    private readonly List<(XapiNbdHost Host, NbdServer Server)> _listeners = new();

    private XapiNbdService(int port) => Port = port;

    public int Port { get; }

    public int ActiveConnections => _listeners.Sum(l => l.Server.ActiveConnections);

    /// <summary>Connections currently open on listeners of host <paramref name="hostRef"/>.</summary>
    public int ActiveConnectionsOf(string hostRef) => _listeners.Where(l => l.Host.HostRef == hostRef).Sum(l => l.Server.ActiveConnections);

    /// <summary>Binds every host address on <paramref name="port"/>; with <paramref name="portIsFixed"/> false, moves to another free port when one address has it taken.</summary>
    public static async Task<XapiNbdService> StartAsync(SimulatorCore core, int port, bool portIsFixed, TimeSpan attachDelay)
    {
        var bindings = AddressesByHost(core);
        for (int attempt = 0; ; attempt++)
        {
            var service = new XapiNbdService(port);
            try
            {
                foreach (var (hostRef, addresses) in bindings)
                {
                    var host = new XapiNbdHost(core, hostRef, attachDelay);
                    foreach (var address in addresses)
                    {
                        var server = NbdServer.Start(new NbdServerOptions
                        {
                            EndPoint = new IPEndPoint(address, port),
                            XapiNbdMode = true,
                            MaxConnections = MaxConnectionsPerHost,
                            Certificate = core.Certificate,
                            TlsMode = host.TlsMode,
                            ResolveExport = host.ResolveAsync,
                            Hooks = host,
                        });
                        service._listeners.Add((host, server));
                    }
                }
                return service;
            }
            catch (SocketException) when (!portIsFixed && attempt < 20)
            {
                await service.DisposeAsync();
                port = FreePort(core.MasterAddress);
            }
            catch
            {
                await service.DisposeAsync();
                throw;
            }
        }
    }

    /// <summary>Each host's distinct loopback IPs (PIF IPs and the host address); never a non-loopback address.</summary>
    private static List<(string HostRef, List<IPAddress> Addresses)> AddressesByHost(SimulatorCore core)
    {
        var result = new List<(string, List<IPAddress>)>();
        var taken = new HashSet<IPAddress>();
        lock (core.Db.Gate)
        {
            foreach (var host in core.Db.All("host").OrderBy(h => h.Ref == core.MasterRef ? 0 : 1))
            {
                var candidates = new List<string> { host.Str("address") };
                foreach (var pif in core.Db.Where("PIF", "host", host.Ref))
                {
                    candidates.Add(pif.Str("IP"));
                    candidates.AddRange(pif.Set("IPv6").Select(a => a.Split('/')[0]));
                }
                var addresses = candidates.Select(c => IPAddress.TryParse(c, out var a) ? a : null)
                    .OfType<IPAddress>().Where(a => IPAddress.IsLoopback(a) && taken.Add(a)).ToList();
                if (host.Ref == core.MasterRef && taken.Add(core.MasterAddress)) addresses.Insert(0, core.MasterAddress);
                if (addresses.Count > 0) result.Add((host.Ref, addresses));
            }
        }
        return result;
    }

    private static int FreePort(IPAddress address)
    {
        var l = new TcpListener(address, 0);
        l.Start();
        int port = ((IPEndPoint)l.LocalEndpoint).Port;
        l.Stop();
        return port;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var (_, server) in _listeners)
        {
            try { await server.DisposeAsync(); }
            catch (TimeoutException) { } // a connection that would not end in 10 s; the process keeps going
        }
        _listeners.Clear();
    }
}
