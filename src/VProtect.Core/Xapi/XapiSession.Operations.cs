using VProtect.Core.Xapi.Records;

namespace VProtect.Core.Xapi;

/// <summary>A VM's disk: the VBD that attaches it and the VDI behind it.</summary>
public sealed record VmDisk(VbdRecord Vbd, VdiRecord Vdi);

/// <summary>A snapshot just taken, and the snapshot disks destroyed because the host could not leave them out.</summary>
public sealed record VmSnapshotTaken(string SnapshotRef, IReadOnlyList<string> DiscardedVdis)
{
    /// <summary>The host has no <c>ignore_vdis</c> (before xapi 21.4): every disk was snapshotted, then the left-out ones destroyed.</summary>
    public bool IgnoreVdisUnsupported { get; init; }
}

public sealed partial class XapiSession
{
    /// <summary>
    /// <c>VM.snapshot</c> as a task; returns the snapshot's VM ref. See <see cref="TakeVmSnapshotAsync"/> for how disks
    /// to leave out are handled on hosts without <c>ignore_vdis</c>.
    /// </summary>
    public async Task<string> SnapshotVmAsync(string vmRef, string newName, IReadOnlyList<string>? ignoreVdis = null, IProgress<double>? progress = null,
        CancellationToken ct = default)
        => (await TakeVmSnapshotAsync(vmRef, newName, ignoreVdis, progress, ct).ConfigureAwait(false)).SnapshotRef;

    /// <summary>
    /// <c>VM.snapshot</c> as a task, leaving out <paramref name="ignoreVdis"/> (VDI refs of the VM's disks). It uses the
    /// 3-argument form (<c>ignore_vdis</c>, xapi ≥ 21.4) and falls back to 2 arguments on
    /// MESSAGE_PARAMETER_COUNT_MISMATCH, as Xen Orchestra does. Such an older host snapshots every disk; the copies of
    /// the ignored ones are then destroyed at once (<see cref="DiscardSnapshotDisksAsync"/>), before anyone can read
    /// them, so what comes back never holds a disk the caller left out. If that fails, the whole snapshot is destroyed
    /// and the error thrown.
    /// </summary>
    public async Task<VmSnapshotTaken> TakeVmSnapshotAsync(string vmRef, string newName, IReadOnlyList<string>? ignoreVdis = null,
        IProgress<double>? progress = null, CancellationToken ct = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(vmRef);
        ArgumentNullException.ThrowIfNull(newName);
        var ignored = ignoreVdis?.Cast<object?>().ToArray() ?? Array.Empty<object?>();
        try
        {
            var snapshotRef = XapiValue.AsString(await CallAsyncTaskAsync("VM.snapshot", new object?[] { vmRef, newName, ignored }, progress, ct).ConfigureAwait(false));
            return new VmSnapshotTaken(snapshotRef, Array.Empty<string>());
        }
        catch (XapiException ex) when (ex.ErrorCode == "MESSAGE_PARAMETER_COUNT_MISMATCH")
        {
            var snapshotRef = XapiValue.AsString(await CallAsyncTaskAsync("VM.snapshot", new object?[] { vmRef, newName }, progress, ct).ConfigureAwait(false));
            if (ignored.Length == 0) return new VmSnapshotTaken(snapshotRef, Array.Empty<string>());
            var discarded = await DiscardSnapshotDisksAsync(snapshotRef, ignoreVdis!, ct).ConfigureAwait(false);
            return new VmSnapshotTaken(snapshotRef, discarded) { IgnoreVdisUnsupported = true };
        }
    }

    /// <summary>
    /// Destroys the disks of snapshot <paramref name="snapshotRef"/> that are copies of <paramref name="sourceVdis"/>
    /// (for snapshots that could not leave them out: hosts before xapi 21.4, <c>VM.snapshot_with_quiesce</c>). Returns
    /// the snapshot VDI refs destroyed. On any failure the whole snapshot (VM and disks) is destroyed, best effort, and
    /// the error rethrown: a snapshot holding a disk that was to be left out is never handed back.
    /// </summary>
    public async Task<IReadOnlyList<string>> DiscardSnapshotDisksAsync(string snapshotRef, IReadOnlyCollection<string> sourceVdis, CancellationToken ct = default)
    {
        var discarded = new List<string>();
        if (sourceVdis.Count == 0) return discarded;
        var wanted = new HashSet<string>(sourceVdis, StringComparer.Ordinal);
        try
        {
            foreach (var disk in await GetVmDisksAsync(snapshotRef, ct).ConfigureAwait(false))
            {
                if (!wanted.Contains(disk.Vdi.SnapshotOf)) continue;
                await CallAsyncTaskAsync("VDI.destroy", new object?[] { disk.Vdi.OpaqueRef }, null, ct).ConfigureAwait(false);
                discarded.Add(disk.Vdi.OpaqueRef);
            }
            return discarded;
        }
        catch (Exception ex) when (ex is XapiException or XapiConnectionException or OperationCanceledException)
        {
            using var cleanup = new CancellationTokenSource(TimeSpan.FromMinutes(2));
            try { await DestroySnapshotAsync(snapshotRef, cleanup.Token).ConfigureAwait(false); }
            catch (Exception) { /* the first error is the one to report */ }
            throw;
        }
    }

    /// <summary>
    /// Destroys a snapshot VM and every disk it holds (VM first: VDI.destroy refuses VDIs in use, and the snapshot's
    /// VBDs go with the VM). A ref that is no longer valid is fine; a VM that is not a snapshot is refused.
    /// </summary>
    public async Task DestroySnapshotAsync(string snapshotRef, CancellationToken ct = default)
    {
        VmRecord snapshot;
        try { snapshot = await GetRecordAsync<VmRecord>(snapshotRef, ct).ConfigureAwait(false); }
        catch (XapiException ex) when (ex.ErrorCode == "HANDLE_INVALID") { return; }
        if (!snapshot.IsASnapshot) throw new InvalidOperationException($"{snapshotRef} is not a snapshot; refusing to remove it.");
        var vdis = new List<string>();
        foreach (var vbdRef in snapshot.VBDs)
        {
            var vbd = await GetRecordAsync<VbdRecord>(vbdRef, ct).ConfigureAwait(false);
            if (vbd.Type == "Disk" && !XapiValue.IsNullRef(vbd.VDI)) vdis.Add(vbd.VDI);
        }
        await IgnoreGoneAsync(() => CallAsyncTaskAsync("VM.destroy", new object?[] { snapshotRef }, null, ct)).ConfigureAwait(false);
        foreach (var vdi in vdis)
            await IgnoreGoneAsync(() => CallAsyncTaskAsync("VDI.destroy", new object?[] { vdi }, null, ct)).ConfigureAwait(false);
    }

    private static async Task IgnoreGoneAsync(Func<Task> action)
    {
        try { await action().ConfigureAwait(false); }
        catch (XapiException ex) when (ex.ErrorCode is "HANDLE_INVALID" or "UUID_INVALID") { }
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
