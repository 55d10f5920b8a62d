using System.Globalization;
using VProtect.Core.Repository;

namespace VProtect.Core.Backup.Xva;

/// <summary>One disk as an XVA-strategy backup records it: what the next incremental and a restore need.</summary>
public sealed record XvaDiskInfo(string Key, string? Device, string UserDevice, long VirtualSize, string SnapshotVdiUuid);

/// <summary>
/// The manifest properties the XVA strategy writes (documented in docs/xva-strategy.md). Per disk, under
/// <c>xva.disk.&lt;key&gt;.*</c>: device, userdevice, virtualSize, snapshotVdi (the snapshot VDI the data came from;
/// for a full it is the base of every cumulative incremental).
/// </summary>
public static class XvaKeys
{
    public const string Compression = "xva.compression";
    public const string XvaDisks = "xva.disks";
    public const string Cumulative = "xva.cumulative";
    private const string DiskPrefix = "xva.disk.";

    public static void WriteDisk(BackupManifest manifest, XvaDiskInfo disk)
    {
        string p = DiskPrefix + disk.Key + ".";
        if (disk.Device is not null) manifest.Properties[p + "device"] = disk.Device;
        manifest.Properties[p + "userdevice"] = disk.UserDevice;
        manifest.Properties[p + "virtualSize"] = disk.VirtualSize.ToString(CultureInfo.InvariantCulture);
        manifest.Properties[p + "snapshotVdi"] = disk.SnapshotVdiUuid;
    }

    public static Dictionary<string, XvaDiskInfo> ReadDisks(BackupManifest manifest)
    {
        var keys = manifest.Properties.Keys
            .Where(k => k.StartsWith(DiskPrefix, StringComparison.Ordinal) && k.EndsWith(".snapshotVdi", StringComparison.Ordinal))
            .Select(k => k[DiskPrefix.Length..^".snapshotVdi".Length]);
        var result = new Dictionary<string, XvaDiskInfo>(StringComparer.Ordinal);
        foreach (var key in keys)
        {
            string p = DiskPrefix + key + ".";
            string Get(string name) => manifest.Properties.TryGetValue(p + name, out var v) ? v
                : throw new RepositoryException($"Backup {manifest.Id} lacks the property {p + name}; it was not written by the XVA strategy or was edited.");
            result[key] = new XvaDiskInfo(key, manifest.Properties.GetValueOrDefault(p + "device"), Get("userdevice"),
                long.Parse(Get("virtualSize"), CultureInfo.InvariantCulture), Get("snapshotVdi"));
        }
        return result;
    }
}
