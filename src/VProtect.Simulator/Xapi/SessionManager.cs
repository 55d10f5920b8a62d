using System.Security.Cryptography;
using System.Text;
using VProtect.Simulator.Database;

namespace VProtect.Simulator.Xapi;

/// <summary>
/// session.* as xapi answers them (datamodel.ml l.32-82, session_check.ml): login on the master only
/// (a member answers HOST_IS_SLAVE [master address]), SESSION_AUTHENTICATION_FAILED on a bad password,
/// SESSION_INVALID for an unknown ref. Sessions are objects of class "session" and are not persisted.
/// </summary>
internal sealed class SessionManager
{
    private readonly SimulatorCore _core;
    public SessionManager(SimulatorCore core) => _core = core;

    public static readonly string[] RbacPermissions =
    [
        "vm.snapshot", "vm.export", "vm.import", "vdi.enable_cbt", "vdi.disable_cbt", "vdi.list_changed_blocks",
        "vdi.data_destroy", "vdi.get_nbd_info", "http/get_export", "http/put_import", "http/get_export_raw_vdi", "http/put_import_raw_vdi",
    ];

    public const int MaxSessionsPerOriginator = 500;
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, long> _loginOrder = new(StringComparer.Ordinal);
    private long _logins;

    public void Register(XapiDispatcher d)
    {
        d.Register("session.login_with_password", 2, 4, c => Login(c), session: false, hasAsync: false);
        d.Register("session.slave_local_login_with_password", 2, 2, c => Login(c), session: false, hasAsync: false);
        d.Register("session.logout", 0, 0, c => { Logout(c.Session!); return ""; }, hasAsync: false);
        d.Register("session.local_logout", 0, 0, c => { Logout(c.Session!); return ""; }, hasAsync: false);
        d.Register("session.get_all_subject_identifiers", 0, 0, _ => Array.Empty<object?>(), hasAsync: false);
        d.Register("session.change_password", 2, 2, c =>
        {
            if (!FixedTimeEquals(c.Str(0), _core.Password)) throw new XapiError("SESSION_AUTHENTICATION_FAILED");
            _core.Password = c.Str(1);
            return "";
        }, hasAsync: false);
    }

    private string Login(CallContext c)
    {
        if (!c.Origin.IsMaster)
            throw new XapiError("HOST_IS_SLAVE", _core.MasterAddress.ToString());
        if (c.Str(0) != _core.User || !FixedTimeEquals(c.Str(1), _core.Password))
            throw new XapiError("SESSION_AUTHENTICATION_FAILED");
        var now = DateTime.UtcNow;
        string originator = c.Count >= 4 ? c.Str(3) : "";
        // xapi keeps at most 500 sessions per originator and destroys the oldest beyond that (xapi_globs.ml l.289-297).
        lock (_core.Db.Gate)
        {
            var same = _core.Db.All("session").Where(x => x.Str("originator") == originator)
                .OrderBy(x => _loginOrder.TryGetValue(x.Ref, out var n) ? n : 0).ToList();
            foreach (var old in same.Take(Math.Max(0, same.Count - (MaxSessionsPerOriginator - 1)))) _core.Db.Delete(old);
        }
        var s = _core.Db.Create("session", new Dictionary<string, object?>
        {
            ["this_host"] = _core.HostRefFor(c.Origin),
            ["last_active"] = now,
            ["validation_time"] = now,
            ["is_local_superuser"] = true,
            ["auth_user_name"] = c.Str(0),
            ["rbac_permissions"] = RbacPermissions.Select(p => (object?)p).ToArray(),
            ["originator"] = originator,
        }, reference: "OpaqueRef:" + Guid.NewGuid());
        _loginOrder[s.Ref] = Interlocked.Increment(ref _logins);
        return s.Ref;
    }

    public void Validate(string sessionRef)
    {
        var s = _core.Db.TryGet(sessionRef);
        if (s is null || s.Class != "session") throw new XapiError("SESSION_INVALID", sessionRef);
        s.Fields["last_active"] = DateTime.UtcNow; // no event: xapi does not signal session activity either
    }

    public bool IsValid(string sessionRef) => _core.Db.TryGet(sessionRef) is { Class: "session" };

    private void Logout(string sessionRef)
    {
        var s = _core.Db.TryGet(sessionRef);
        if (s is not null) _core.Db.Delete(s);
        _loginOrder.TryRemove(sessionRef, out _);
        _core.Events.Unregister(sessionRef);
    }

    private static bool FixedTimeEquals(string a, string b)
        => CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(a), Encoding.UTF8.GetBytes(b));
}
