using System.Management.Automation;
using VProtect.Core.Xapi;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Connect-XenPool: logs in (following a pool member to its master) and stores the current session.</summary>
[Cmdlet(VerbsCommunications.Connect, "XenPool")]
[OutputType(typeof(XenPoolSession))]
public sealed class ConnectXenPoolCommand : VProtectCmdlet
{
    [Parameter(Mandatory = true, Position = 0)]
    [ValidateNotNullOrEmpty]
    public string Url { get; set; } = "";

    [Parameter(Mandatory = true, Position = 1)]
    [Credential]
    [ValidateNotNull]
    public PSCredential Credential { get; set; } = PSCredential.Empty;

    [Parameter]
    public SwitchParameter SkipCertificateCheck { get; set; }

    [Parameter]
    [ValidateNotNullOrEmpty]
    public string? CertificateThumbprint { get; set; }

    [Parameter]
    public XapiProtocol Protocol { get; set; } = XapiProtocol.JsonRpc;

    [Parameter]
    public SwitchParameter PassThru { get; set; }

    protected override void ProcessRecord()
    {
        var uri = ParseUrl(Url);
        var options = new XapiConnectionOptions
        {
            Protocol = Protocol,
            SkipCertificateCheck = SkipCertificateCheck.IsPresent,
            CertificateThumbprint = CertificateThumbprint,
        };
        var userName = Credential.UserName;
        WriteVerbose($"Logging in to {uri} as {userName} over {Protocol}.");
        var client = RunEngine(
            // The password leaves the SecureString only here, at the engine boundary (DOMAIN\user is kept whole).
            (_, ct) => XapiSession.LoginAsync(uri, Credential.GetNetworkCredential(), options, ct),
            Url);
        if (client.RedirectedFrom is not null)
            WriteWarning($"{client.RedirectedFrom} is a pool member, not the master; connected to the pool master {client.Url} instead.");
        var session = new XenPoolSession(client, options, userName, ownsLogin: true);
        SessionStore.SetCurrent(this, session);
        WriteVerbose($"Connected to pool '{session.PoolName}' (master {session.Master}, API {session.ApiVersion}).");
        if (PassThru) WriteObject(session);
    }

    /// <summary>https://host[:port], http://host[:port], or a bare host (meaning https).</summary>
    private Uri ParseUrl(string text)
    {
        var candidate = text.Contains("://", StringComparison.Ordinal) ? text : "https://" + text;
        if (Uri.TryCreate(candidate, UriKind.Absolute, out var uri) && (uri.Scheme == Uri.UriSchemeHttp || uri.Scheme == Uri.UriSchemeHttps))
            return uri;
        ThrowTerminatingError(ErrorMap.Create(
            new ArgumentException($"'{text}' is not an http or https URL of a pool master."),
            new ErrorMapping(ErrorIds.InvalidArgument, ErrorCategory.InvalidArgument, "Pass -Url https://<pool master>."),
            text));
        return null!;
    }
}
