using System.Security.Cryptography;
using VProtect.Core.Backup;
using VProtect.Core.IO;
using VProtect.Core.Xapi;

namespace VProtect.Simulator.Tests.Cbt;

internal sealed class RecordingObserver : IBackupObserver
{
    public List<string> Warnings { get; } = new();
    public List<string> Verbose { get; } = new();
    public void OnProgress(BackupProgress progress) { }
    public void OnWarning(string message) { lock (Warnings) Warnings.Add(message); }
    public void OnVerbose(string message) { lock (Verbose) Verbose.Add(message); }
}

internal static class CbtTestKit
{
    public static async Task<string> Sha256Async(IBlockSource source)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[1 << 20];
        for (long pos = 0; pos < source.Length; pos += buffer.Length)
        {
            int n = (int)Math.Min(buffer.Length, source.Length - pos);
            await source.ReadAsync(pos, buffer.AsMemory(0, n), default);
            sha.AppendData(buffer, 0, n);
        }
        return Convert.ToHexString(sha.GetHashAndReset());
    }

    /// <summary>A guest write: distinct bytes per seed and offset.</summary>
    public static async Task GuestWriteAsync(XenSimulator sim, string vdiUuid, long offset, int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        await sim.OpenVdi(vdiUuid).WriteAsync(offset, data, default);
    }

    /// <summary>The VM's disk VDI uuids by userdevice.</summary>
    public static async Task<Dictionary<string, string>> DisksAsync(XapiSession session, string vmRef)
    {
        var vm = await session.GetRecordAsync<Core.Xapi.Records.VmRecord>(vmRef);
        var result = new Dictionary<string, string>();
        foreach (var vbdRef in vm.VBDs)
        {
            var vbd = await session.GetRecordAsync<Core.Xapi.Records.VbdRecord>(vbdRef);
            if (vbd.Type != "Disk" || XapiValue.IsNullRef(vbd.VDI)) continue;
            result[vbd.UserDevice] = (await session.GetRecordAsync<Core.Xapi.Records.VdiRecord>(vbd.VDI)).Uuid;
        }
        return result;
    }
}
