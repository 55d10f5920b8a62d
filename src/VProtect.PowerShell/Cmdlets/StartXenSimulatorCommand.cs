using System.Management.Automation;
using System.Net;
using System.Security;
using VProtect.PowerShell.Infrastructure;
using VProtect.Simulator;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Start-XenSimulator: runs the bundled XenServer simulator in this process, on loopback.</summary>
[Cmdlet(VerbsLifecycle.Start, "XenSimulator")]
[OutputType(typeof(XenSimulatorInfo))]
public sealed class StartXenSimulatorCommand : VProtectCmdlet
{
    [Parameter]
    [ValidateRange(0, 65535)]
    public int HttpPort { get; set; }

    [Parameter]
    [ValidateRange(0, 65535)]
    public int HttpsPort { get; set; }

    [Parameter]
    [ValidateNotNullOrEmpty]
    public string? Scenario { get; set; }

    [Parameter]
    [ValidateNotNullOrEmpty]
    public string? StateDirectory { get; set; }

    [Parameter]
    [Credential]
    public PSCredential? Credential { get; set; }

    protected override void ProcessRecord()
    {
        var options = new SimulatorOptions
        {
            BindAddress = IPAddress.Loopback.ToString(),
            HttpPort = HttpPort,
            HttpsPort = HttpsPort,
        };
        if (Scenario is not null) options.Scenario = Scenario;
        if (StateDirectory is not null) options.StateDirectory = GetUnresolvedProviderPathFromPSPath(StateDirectory);
        if (Credential is not null && Credential != PSCredential.Empty)
        {
            options.User = Credential.UserName;
            options.Password = Credential.GetNetworkCredential().Password;
        }
        var simulator = RunEngine((_, ct) => XenSimulator.StartAsync(options, ct), target: null,
            failure: new ErrorMapping(ErrorIds.SimulatorStartFailed, ErrorCategory.ResourceUnavailable,
                "Choose other ports (-HttpPort/-HttpsPort, 0 picks free ones) or check -StateDirectory."));
        var credential = new PSCredential(simulator.User, ToSecureString(simulator.Password));
        var info = new XenSimulatorInfo(simulator, credential, SimulatorRegistry.CurrentRunspaceId);
        SimulatorRegistry.Add(info);
        WriteVerbose($"Simulator listening on {info.Url} and {info.HttpsUrl}; NBD on port {info.NbdPort}.");
        WriteObject(info);
    }

    private static SecureString ToSecureString(string text)
    {
        var secure = new SecureString();
        foreach (var c in text) secure.AppendChar(c);
        secure.MakeReadOnly();
        return secure;
    }
}
