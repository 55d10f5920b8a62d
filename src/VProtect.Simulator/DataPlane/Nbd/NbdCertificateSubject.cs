using System.Security.Cryptography.X509Certificates;

namespace VProtect.Simulator.DataPlane.Nbd;

/// <summary>
/// The <c>subject</c> of VDI.get_nbd_info: the first DNS name of the host certificate, else a wildcard one, else the
/// host's hostname (xapi_vdi.ml get_nbd_info). All simulated hosts share one certificate, so all report its name.
/// </summary>
internal static class NbdCertificateSubject
{
    public static string Of(X509Certificate2 certificate, string hostname)
    {
        var san = certificate.Extensions.OfType<X509SubjectAlternativeNameExtension>().FirstOrDefault();
        var names = san?.EnumerateDnsNames().ToList() ?? [];
        return names.FirstOrDefault(n => !n.StartsWith('*')) ?? names.FirstOrDefault() ?? hostname;
    }
}
