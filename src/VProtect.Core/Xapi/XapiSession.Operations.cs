using VProtect.Core.Xapi.Records;

namespace VProtect.Core.Xapi;

/// <summary>A VM's disk: the VBD that attaches it and the VDI behind it.</summary>
public sealed record VmDisk(VbdRecord Vbd, VdiRecord Vdi);

public sealed partial class XapiSession
{
    /// <summary>
    /// <c>VM.snapshot</c> as a task. With <paramref name="ignoreVdis"/> it uses the 3-argument form (xapi ≥ 21.4); without,
    /// it tries that form with an empty set and falls back to 2 arguments on MESSAGE_PARAMETER_COUNT_MISMATCH, as XO does.
    /// Returns the snapshot's VM ref.
    /// </summary>
    public async Task<string> SnapshotVmAsync(string vmRef, string newName, IReadOnlyList<string>? ignoreVdis = null, IProgress<double>? progress = null,
        CancellationToken ct = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(vmRef);
        ArgumentNullException.ThrowIfNull(newName);
        var ignored = ignoreVdis?.Cast<object?>().ToArray() ?? Array.Empty<object?>();
        try
        {
            return XapiValue.AsString(await CallAsyncTaskAsync("VM.snapshot", new object?[] { vmRef, newName, ignored }, progress, ct).ConfigureAwait(false));
        }
        catch (XapiException ex) when (ex.ErrorCode == "MESSAGE_PARAMETER_COUNT_MISMATCH")
        {
            if (ignored.Length > 0)
                throw new XapiException(new[] { ex.ErrorCode }.Concat(ex.ErrorParameters).ToArray(),
                    "VM.snapshot (this host is older than xapi 21.4 and cannot leave disks out of a snapshot)");
            return XapiValue.AsString(await CallAsyncTaskAsync("VM.snapshot", new object?[] { vmRef, newName }, progress, ct).ConfigureAwait(false));
        }
    }

    /// <summary>The VM's disks in userdevice order: VBDs of type Disk that hold a VDI (CD drives and empty slots are left out).</summary>
    public async Task<IReadOnlyList<VmDisk>> GetVmDisksAsync(string vmRef, CancellationToken ct = default)
    {
        var vm = await GetRecordAsync<VmRecord>(vmRef, ct).ConfigureAwait(false);
        var disks = new List<VmDisk>();
        foreach (var vbdRef in vm.VBDs)
        {
            var vbd = await GetRecordAsync<VbdRecord>(vbdRef, ct).ConfigureAwait(false);
            if (vbd.Type != "Disk" || vbd.Empty || XapiValue.IsNullRef(vbd.VDI)) continue;
            var vdi = await GetRecordAsync<VdiRecord>(vbd.VDI, ct).ConfigureAwait(false);
            disks.Add(new VmDisk(vbd, vdi));
        }
        return disks
            .OrderBy(d => int.TryParse(d.Vbd.UserDevice, out var n) ? n : int.MaxValue)
            .ThenBy(d => d.Vbd.UserDevice, StringComparer.Ordinal)
            .ToArray();
    }
}
