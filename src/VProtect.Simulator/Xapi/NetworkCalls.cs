using VProtect.Simulator.Database;

namespace VProtect.Simulator.Xapi;

/// <summary>network.add_purpose/remove_purpose (xapi_network.ml l.410-461): nbd and insecure_nbd never coexist.</summary>
internal sealed class NetworkCalls
{
    private readonly SimulatorCore _core;
    public NetworkCalls(SimulatorCore core) => _core = core;

    public void Register(XapiDispatcher d)
    {
        d.Register("network.add_purpose", 2, 2, c => { AddPurpose(_core.Db.Get("network", c.Str(0)), c.Str(1)); return ""; });
        d.Register("network.remove_purpose", 2, 2, c =>
        {
            lock (_core.Db.Gate)
            {
                var n = _core.Db.Get("network", c.Str(0));
                _core.Db.Set(n, "purpose", n.Set("purpose").Where(p => p != c.Str(1)).Select(p => (object?)p).ToArray());
            }
            return "";
        });
    }

    private void AddPurpose(XapiObject network, string purpose)
    {
        if (purpose is not ("nbd" or "insecure_nbd")) throw new XapiError("INVALID_VALUE", "purpose", purpose);
        lock (_core.Db.Gate)
        {
            string conflicting = purpose == "nbd" ? "insecure_nbd" : "nbd";
            if (_core.Db.All("network").Any(n => n.Set("purpose").Contains(conflicting)))
                throw new XapiError("NETWORK_INCOMPATIBLE_PURPOSES", purpose, conflicting);
            var set = network.Set("purpose").ToList();
            if (!set.Contains(purpose)) set.Add(purpose);
            _core.Db.Set(network, "purpose", set.Select(p => (object?)p).ToArray());
        }
    }
}
