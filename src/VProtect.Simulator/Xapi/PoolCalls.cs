using VProtect.Simulator.Http;

namespace VProtect.Simulator.Xapi;

/// <summary>pool and host calls beyond the generic getters.</summary>
internal sealed class PoolCalls
{
    private readonly SimulatorCore _core;
    public PoolCalls(SimulatorCore core) => _core = core;

    public void Register(XapiDispatcher d)
    {
        d.Register("system.listMethods", 0, 0, _ => d.ListMethods(), session: false, hasAsync: false);
        d.Register("host.get_server_certificate", 1, 1, c => { _core.Db.Get("host", c.Str(0)); return HostCertificate.ToPem(_core.Certificate); }, hasAsync: false);
        d.Register("host.get_servertime", 1, 1, c => { _core.Db.Get("host", c.Str(0)); return DateTime.UtcNow; }, hasAsync: false);
        d.Register("host.get_server_localtime", 1, 1, c => { _core.Db.Get("host", c.Str(0)); return DateTime.UtcNow; }, hasAsync: false);
        d.Register("pool.get_license_state", 1, 1, c =>
        {
            _core.Db.Get("pool", c.Str(0));
            return new Dictionary<string, object?> { ["edition"] = _core.Settings.RestrictCbt ? "standard" : "premium", ["expiry"] = "never" };
        }, hasAsync: false);
    }
}
