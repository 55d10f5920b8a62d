using System.Management.Automation;
using VProtect.Simulator;

namespace VProtect.PowerShell;

/// <summary>A simulator started by Start-XenSimulator in this process.</summary>
public sealed class XenSimulatorInfo
{
    internal XenSimulatorInfo(XenSimulator simulator, PSCredential credential, Guid runspaceId)
    {
        Simulator = simulator;
        Credential = credential;
        RunspaceId = runspaceId;
    }

    internal XenSimulator Simulator { get; }
    /// <summary>The runspace that started it; Stop-XenSimulator without arguments stops only its own.</summary>
    internal Guid RunspaceId { get; }

    public string Url => Simulator.Url.ToString();
    public string HttpsUrl => Simulator.HttpsUrl?.ToString() ?? "";
    /// <summary>A pool member: logging in there answers HOST_IS_SLAVE with the master's address.</summary>
    public string MemberUrl => Simulator.MemberUrl.ToString();
    /// <summary>The simulator's control API (GET /sim/vms ...), for tests and the demo.</summary>
    public string ControlUrl => Simulator.ControlUrl.ToString();
    public int NbdPort => Simulator.NbdPort;
    public PSCredential Credential { get; }
    /// <summary>SHA-256 thumbprint of the simulator's self-signed HTTPS certificate (for -CertificateThumbprint).</summary>
    public string CertificateThumbprint => Convert.ToHexString(Simulator.Certificate.GetCertHash(System.Security.Cryptography.HashAlgorithmName.SHA256));
    public bool IsRunning { get; internal set; } = true;

    public override string ToString() => Url;
}
