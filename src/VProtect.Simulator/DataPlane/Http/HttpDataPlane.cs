using VProtect.Simulator.Database;
using VProtect.Simulator.Http;
using VProtect.Simulator.Xapi;

namespace VProtect.Simulator.DataPlane.Http;

/// <summary>
/// The HTTP transfer handlers xapi serves next to XAPI on the same listener (research xapi.md §6): /export,
/// /export_metadata, /export_raw_vdi, /import, /import_raw_vdi. Each runs inside a <see cref="TransferScope"/>.
/// </summary>
internal sealed class HttpDataPlane
{
    private readonly XenSimulator _sim;

    public HttpDataPlane(XenSimulator sim) => _sim = sim;

    public SimulatorCore Core => _sim.Core;

    public void AddRoutes(RouteTable routes)
    {
        var exportRaw = new ExportRawVdiHandler(this);
        var importRaw = new ImportRawVdiHandler(this);
        var export = new ExportHandler(this);
        var import = new ImportHandler(this);
        routes.Add("GET", "/export_raw_vdi", Wrap("VDI.export_raw_vdi", exportRaw.HandleAsync));
        routes.Add("PUT", "/import_raw_vdi", Wrap("VDI.import_raw_vdi", importRaw.HandleAsync));
        routes.Add("GET", "/export_metadata", Wrap("VM.export_metadata", export.HandleMetadataAsync));
        routes.Add("GET", "/export", Wrap("VM.export", export.HandleAsync));
        routes.Add("PUT", "/import", Wrap("VM.import", import.HandleAsync));
    }

    /// <summary>Auth, task, then the handler; XAPI errors before the head become a failed task and an error status.</summary>
    private HttpHandler Wrap(string taskLabel, Func<TransferScope, CancellationToken, Task> handler) => async (ex, ct) =>
    {
        var scope = await TransferScope.BeginAsync(Core, ex, taskLabel, ct).ConfigureAwait(false);
        if (scope is null) return;
        await using var _ = scope;
        try
        {
            await handler(scope, ct).ConfigureAwait(false);
        }
        catch (XapiError e)
        {
            await scope.FailAsync(500, "Internal Server Error", e, ct).ConfigureAwait(false);
        }
        catch (Exception e) when (e is not (IOException or OperationCanceledException) && !scope.Finished)
        {
            await scope.FailAsync(500, "Internal Server Error", ["INTERNAL_ERROR", e.Message], ct).ConfigureAwait(false);
        }
        finally
        {
            ex.KeepAlive = false;
        }
    };

    public XapiObject? ResolveVdi(string? refOrUuid) => Resolve("VDI", refOrUuid);
    public XapiObject? ResolveVm(string? refOrUuid) => Resolve("VM", refOrUuid);
    public XapiObject? ResolveSr(string? refOrUuid) => Resolve("SR", refOrUuid);

    private XapiObject? Resolve(string cls, string? refOrUuid)
    {
        if (string.IsNullOrEmpty(refOrUuid)) return null;
        lock (Core.Db.Gate)
            return Core.Db.TryGet(refOrUuid) is { } o && o.Class == cls ? o : Core.Db.TryGetByUuid(cls, refOrUuid);
    }

    /// <summary>
    /// When the scenario says another host sees the SR better: 302 to the same path and query on that host's
    /// address and the same port (Importexport.return_302_redirect). True when redirected.
    /// </summary>
    public async Task<bool> RedirectIfBetterHostAsync(TransferScope scope, string srRef, CancellationToken ct)
    {
        var address = _sim.BetterHostAddressForSr(srRef);
        var local = scope.Request.LocalEndPoint.Address.ToString();
        if (address is null || address == local) return false;
        string scheme = scope.Request.IsHttps ? "https" : "http";
        var location = $"{scheme}://{address}:{scope.Request.LocalEndPoint.Port}{scope.Request.Target}";
        var headers = scope.Headers(null);
        headers.Add(new("Location", location));
        headers.Add(new("Content-Length", "0"));
        await scope.Exchange.WriteHeadAsync(302, "Found", headers, ct).ConfigureAwait(false);
        return true;
    }
}
