using System.Collections.Concurrent;
using VProtect.Core.Nbd;
using VProtect.Simulator.Database;
using VProtect.Simulator.Faults;

namespace VProtect.Simulator.DataPlane.Nbd;

/// <summary>
/// The per-connection decisions of one host's xapi-nbd (xen-api ocaml/nbd/src/main.ml): TLS policy from the network
/// purposes, export name -> session check -> dom0 VBD plug (slow) -> the VDI, VBD removed on disconnect; fault hooks.
/// </summary>
internal sealed class XapiNbdHost : INbdServerHooks
{
    private readonly SimulatorCore _core;
    private readonly TimeSpan _attachDelay;
    private readonly ConcurrentDictionary<long, string> _sessionOfConnection = new();

    public XapiNbdHost(SimulatorCore core, string hostRef, TimeSpan attachDelay)
    {
        _core = core;
        HostRef = hostRef;
        _attachDelay = attachDelay;
    }

    public string HostRef { get; }

    /// <summary>
    /// Decided per connection, as xapi-nbd reads network.purpose for each one: only <c>nbd</c> -> FORCEDTLS, only
    /// <c>insecure_nbd</c> -> no TLS, both or neither -> the connection is closed (main.ml).
    /// </summary>
    public NbdTlsMode TlsMode(NbdConnectionInfo connection)
    {
        bool secure = false, insecure = false;
        lock (_core.Db.Gate)
        {
            foreach (var network in _core.Db.All("network"))
                foreach (var purpose in network.Set("purpose"))
                {
                    if (purpose == "nbd") secure = true;
                    else if (purpose == "insecure_nbd") insecure = true;
                }
        }
        return (secure, insecure) switch
        {
            (true, false) => NbdTlsMode.Required,
            (false, true) => NbdTlsMode.Off,
            _ => NbdTlsMode.RefuseConnection,
        };
    }

    /// <summary>
    /// Any failure returns null, which closes the connection without an NBD error (xapi-nbd has no error channel
    /// after EXPORT_NAME). Never throws: the library would log nothing and the client would see the same close.
    /// </summary>
    public async ValueTask<NbdExport?> ResolveAsync(NbdExportRequest request, CancellationToken ct)
    {
        if (!XapiNbdExportName.TryParse(request.Name, out var name)) return null;
        XapiObject vdi, dom0;
        lock (_core.Db.Gate)
        {
            if (!_core.Sessions.IsValid(name.SessionRef)) return null;
            _core.Sessions.Validate(name.SessionRef); // Session.get_uuid: also refreshes last_active
            if (_core.Db.TryGetByUuid("VDI", name.VdiUuid) is not { } found) return null;
            vdi = found;
            if (vdi.Str("type") == "cbt_metadata" || !_core.Storage.Exists(vdi.Uuid)) return null;
            // The VBD is plugged into this host's dom0, which needs the SR attached here.
            if (!_core.Db.Where("PBD", "SR", vdi.Str("SR")).Any(p => p.Str("host") == HostRef && p.Bool("currently_attached"))) return null;
            if (_core.Db.All("VM").FirstOrDefault(v => v.Bool("is_control_domain") && v.Str("resident_on") == HostRef) is not { } d) return null;
            dom0 = d;
        }

        // VBD.create then VBD.plug: the plug is what makes a real connect slow.
        var vbd = CreateDom0Vbd(dom0, vdi);
        try
        {
            if (_attachDelay > TimeSpan.Zero) await Task.Delay(_attachDelay, ct);
            lock (_core.Db.Gate)
            {
                if (_core.Db.TryGet(vbd.Ref) is null || _core.Db.TryGet(vdi.Ref) is null || !_core.Storage.Exists(vdi.Uuid)) { RemoveVbd(vbd); return null; }
                _core.Db.Set(vbd, "device", "xvd" + (char)('a' + (int)(long.Parse(vbd.Str("userdevice")) % 26)));
                _core.Db.Set(vbd, "currently_attached", true);
            }
        }
        catch (Exception)
        {
            RemoveVbd(vbd);
            return null;
        }

        _sessionOfConnection[request.Connection.Id] = name.SessionRef;
        long connectionId = request.Connection.Id;
        return new NbdExport(_core.Storage.Open(vdi.Uuid))
        {
            MultiConn = false,
            OnClosed = () =>
            {
                _sessionOfConnection.TryRemove(connectionId, out _);
                RemoveVbd(vbd);
                return ValueTask.CompletedTask;
            },
        };
    }

    private XapiObject CreateDom0Vbd(XapiObject dom0, XapiObject vdi)
    {
        lock (_core.Db.Gate)
        {
            // dom0 has far more than 16 device slots; pick the lowest free userdevice.
            var used = _core.Db.Where("VBD", "VM", dom0.Ref).Select(b => b.Str("userdevice")).ToHashSet();
            long slot = 0;
            while (used.Contains(slot.ToString(System.Globalization.CultureInfo.InvariantCulture))) slot++;
            return _core.Db.Create("VBD", new Dictionary<string, object?>
            {
                ["VM"] = dom0.Ref, ["VDI"] = vdi.Ref, ["userdevice"] = slot.ToString(System.Globalization.CultureInfo.InvariantCulture),
                ["device"] = "", ["type"] = "Disk", ["mode"] = "RO", ["bootable"] = false, ["empty"] = false,
                ["currently_attached"] = false, ["unpluggable"] = true,
            });
        }
    }

    /// <summary>VBD.unplug + VBD.destroy; the record may already be gone (simulator reset).</summary>
    private void RemoveVbd(XapiObject vbd)
    {
        lock (_core.Db.Gate)
        {
            if (_core.Db.TryGet(vbd.Ref) is null) return;
            _core.Db.Set(vbd, "currently_attached", false);
            _core.Db.Delete(vbd);
        }
    }

    async ValueTask INbdServerHooks.OnRequestAsync(NbdRequestInfo request, CancellationToken ct)
    {
        // The connection uses the session: keep it active (it is not re-validated; a logout does not cut the connection).
        if (_sessionOfConnection.TryGetValue(request.Connection.Id, out var session))
            lock (_core.Db.Gate) if (_core.Sessions.IsValid(session)) _core.Sessions.Validate(session);
        int ms = _core.Faults.LatencyMs(TransferChannel.Nbd);
        if (ms > 0) await Task.Delay(ms, ct);
    }

    int INbdServerHooks.GetReadError(NbdRequestInfo request)
        => request.Command == NbdCommand.Read && _core.Faults.TakeReadError(TransferChannel.Nbd, request.Offset, request.Length) ? NbdErrno.EIO : 0;

    long? INbdServerHooks.DropConnectionAfterBytes(NbdConnectionInfo connection) => _core.Faults.TakeDrop(TransferChannel.Nbd);
}
