using System.Management.Automation;
using VProtect.Core.Cbt;
using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Get-ChangedBlock: the ranges VDI.list_changed_blocks reports between two VDIs of one CBT chain.</summary>
[Cmdlet(VerbsCommon.Get, "ChangedBlock")]
[Alias("Get-ChangedBlocks")]
[OutputType(typeof(ChangedBlockRange), typeof(ChangedBlockSummary))]
public sealed class GetChangedBlockCommand : VProtectCmdlet
{
    [Parameter(Mandatory = true, Position = 0)]
    [ValidateNotNull]
    public object VDI { get; set; } = "";

    [Parameter(Mandatory = true, Position = 1)]
    [ValidateNotNull]
    public object BaseVDI { get; set; } = "";

    [Parameter]
    public SwitchParameter Summary { get; set; }

    [Parameter]
    public object? Session { get; set; }

    protected override void ProcessRecord()
    {
        var session = SessionStore.Resolve(this, Session).Client;
        var (extents, size) = RunEngine(async (sink, ct) =>
        {
            var to = await ResolveAsync(session, VDI, ct).ConfigureAwait(false);
            var from = await ResolveAsync(session, BaseVDI, ct).ConfigureAwait(false);
            var record = await session.GetRecordAsync<VdiRecord>(to, ct).ConfigureAwait(false);
            var bitmap = XapiValue.AsString(await session.CallAsyncTaskAsync("VDI.list_changed_blocks", new object?[] { from, to }, null, ct).ConfigureAwait(false));
            return (ChangedBlockBitmap.Decode(bitmap, record.VirtualSize), record.VirtualSize);
        }, VDI);
        if (Summary)
        {
            long changed = extents.Sum(e => e.Length);
            WriteObject(new ChangedBlockSummary(extents.Count, changed, size, size == 0 ? 0 : Math.Round(100.0 * changed / size, 3)));
            return;
        }
        foreach (var e in extents) WriteObject(new ChangedBlockRange(e.Offset, e.Length));
    }

    /// <summary>A VDI uuid, an opaque ref, or an object with a VdiUuid / uuid / opaque_ref property.</summary>
    private static async Task<string> ResolveAsync(XapiSession session, object value, CancellationToken ct)
    {
        var v = value is PSObject p ? p.BaseObject : value;
        if (v is XenPoolVMDisk disk) return disk.VdiOpaqueRef;
        if (v is string s)
            return s.StartsWith("OpaqueRef:", StringComparison.Ordinal) ? s : await session.GetByUuidAsync("VDI", s, ct).ConfigureAwait(false);
        var pso = PSObject.AsPSObject(value);
        var opaque = pso.Properties["opaque_ref"]?.Value?.ToString();
        if (!string.IsNullOrEmpty(opaque)) return opaque;
        var uuid = pso.Properties["VdiUuid"]?.Value?.ToString() ?? pso.Properties["uuid"]?.Value?.ToString();
        if (!string.IsNullOrEmpty(uuid)) return await session.GetByUuidAsync("VDI", uuid, ct).ConfigureAwait(false);
        throw new ArgumentException($"Give a VDI uuid, an opaque ref or a disk object; got {v?.GetType().FullName ?? "null"}.");
    }
}

/// <summary>One changed range (bytes).</summary>
public sealed record ChangedBlockRange(long Offset, long Length);

/// <summary>-Summary: how much changed.</summary>
public sealed record ChangedBlockSummary(int Ranges, long ChangedBytes, long VirtualSize, double ChangedPercent);
