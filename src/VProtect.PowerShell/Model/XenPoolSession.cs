using VProtect.Core.Xapi;

namespace VProtect.PowerShell;

/// <summary>
/// A logged-in pool session as Connect-XenPool writes it. Also exposes opaque_ref (Types.ps1xml) and Url,
/// the two properties XenServerPSModule sessions have, so it binds where those do.
/// </summary>
public sealed class XenPoolSession
{
    internal XenPoolSession(XapiSession client, XapiConnectionOptions options, string userName, bool ownsLogin)
    {
        Client = client;
        Options = options;
        UserName = userName;
        OwnsLogin = ownsLogin;
    }

    /// <summary>The engine's session; cmdlets pass it to the engine.</summary>
    internal XapiSession Client { get; }
    internal XapiConnectionOptions Options { get; }
    /// <summary>False for a session adopted from another module's session object (we did not log it in).</summary>
    internal bool OwnsLogin { get; }

    public string Url => Client.Url.ToString();
    public string PoolName => Client.PoolName ?? "";
    /// <summary>Host name of the pool master.</summary>
    public string Master => Client.MasterHostName ?? "";
    public string MasterAddress => Client.MasterAddress ?? "";
    public string ApiVersion => $"{Client.ApiVersionMajor}.{Client.ApiVersionMinor}";
    public string UserName { get; }
    public XapiProtocol Protocol => Options.Protocol;
    public string OpaqueRef => Client.OpaqueRef;
    /// <summary>The pool member URL that was given when Connect-XenPool followed it to the master; else empty.</summary>
    public string RedirectedFrom => Client.RedirectedFrom?.ToString() ?? "";

    public override string ToString() => $"{UserName}@{Url}";
}
