using VProtect.Core.Xapi;
using VProtect.Core.Xapi.Records;

namespace VProtect.PowerShell.Infrastructure;

/// <summary>Reads the pool's VMs with their disks and VIFs in a handful of get_all_records calls.</summary>
internal static class PoolInventory
{
    public static async Task<IReadOnlyList<XenPoolVM>> ReadVmsAsync(XenPoolSession session, PipelineSink sink, CancellationToken ct)
    {
        var client = session.Client;
        var vmsTask = client.GetAllRecordsAsync<VmRecord>(ct);
        var vbdsTask = client.GetAllRecordsAsync<VbdRecord>(ct);
        var vdisTask = client.GetAllRecordsAsync<VdiRecord>(ct);
        var vifsTask = client.GetAllRecordsAsync<VifRecord>(ct);
        var networksTask = client.GetAllRecordsAsync<NetworkRecord>(ct);
        var srsTask = client.GetAllRecordsAsync<SrRecord>(ct);
        await Task.WhenAll(vmsTask, vbdsTask, vdisTask, vifsTask, networksTask, srsTask).ConfigureAwait(false);
        sink.WriteVerbose($"Read {vmsTask.Result.Count} VM, {vbdsTask.Result.Count} VBD, {vdisTask.Result.Count} VDI and {vifsTask.Result.Count} VIF records from pool '{session.PoolName}'.");

        var vdis = vdisTask.Result.ToDictionary(v => v.OpaqueRef);
        var networks = networksTask.Result.ToDictionary(n => n.OpaqueRef);
        var srs = srsTask.Result.ToDictionary(s => s.OpaqueRef);
        var vbdsByVm = vbdsTask.Result.ToLookup(v => v.VM);
        var vifsByVm = vifsTask.Result.ToLookup(v => v.VM);

        return vmsTask.Result
            .Where(vm => !vm.IsControlDomain)
            .Select(vm => new XenPoolVM
            {
                Uuid = vm.Uuid,
                Name = vm.NameLabel,
                Description = vm.NameDescription,
                PowerState = vm.PowerState,
                IsTemplate = vm.IsATemplate,
                IsSnapshot = vm.IsASnapshot,
                OpaqueRef = vm.OpaqueRef,
                Session = session,
                Disks = vbdsByVm[vm.OpaqueRef]
                    .Where(vbd => string.Equals(vbd.Type, "Disk", StringComparison.OrdinalIgnoreCase) && !vbd.Empty && vdis.ContainsKey(vbd.VDI))
                    .OrderBy(vbd => int.TryParse(vbd.UserDevice, out var n) ? n : int.MaxValue)
                    .Select(vbd =>
                    {
                        var vdi = vdis[vbd.VDI];
                        return new XenPoolVMDisk
                        {
                            Device = string.IsNullOrEmpty(vbd.Device) ? vbd.UserDevice : vbd.Device,
                            VdiUuid = vdi.Uuid,
                            VdiName = vdi.NameLabel,
                            VirtualSize = vdi.VirtualSize,
                            ReadOnly = vdi.ReadOnly || string.Equals(vbd.Mode, "RO", StringComparison.OrdinalIgnoreCase),
                            SrName = srs.TryGetValue(vdi.SR, out var sr) ? sr.NameLabel : "",
                            VdiOpaqueRef = vdi.OpaqueRef,
                        };
                    })
                    .ToList(),
                Vifs = vifsByVm[vm.OpaqueRef]
                    .OrderBy(vif => int.TryParse(vif.Device, out var n) ? n : int.MaxValue)
                    .Select(vif => new XenPoolVMVif
                    {
                        Device = vif.Device,
                        Mac = vif.MAC,
                        NetworkName = networks.TryGetValue(vif.Network, out var net) ? net.NameLabel : "",
                        NetworkUuid = networks.TryGetValue(vif.Network, out var net2) ? net2.Uuid : "",
                    })
                    .ToList(),
            })
            .OrderBy(vm => vm.Name, StringComparer.OrdinalIgnoreCase)
            .ToList();
    }
}
