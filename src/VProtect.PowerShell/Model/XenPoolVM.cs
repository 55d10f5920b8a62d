namespace VProtect.PowerShell;

/// <summary>A VM of a pool as Get-XenPoolVM writes it; backup cmdlets take it from the pipeline.</summary>
public sealed class XenPoolVM
{
    public required string Uuid { get; init; }
    public required string Name { get; init; }
    public string Description { get; init; } = "";
    /// <summary>Halted, Paused, Running or Suspended, as XAPI reports it.</summary>
    public required string PowerState { get; init; }
    public bool IsTemplate { get; init; }
    public bool IsSnapshot { get; init; }
    public IReadOnlyList<XenPoolVMDisk> Disks { get; init; } = Array.Empty<XenPoolVMDisk>();
    public IReadOnlyList<XenPoolVMVif> Vifs { get; init; } = Array.Empty<XenPoolVMVif>();
    /// <summary>The XAPI reference (also shown as opaque_ref so XenServer SDK parameters bind).</summary>
    public required string OpaqueRef { get; init; }
    /// <summary>The session the VM was read with, so later cmdlets talk to the same pool.</summary>
    public XenPoolSession? Session { get; init; }

    /// <summary>Sum of the virtual sizes of the VM's disks, in bytes.</summary>
    public long DiskSize => Disks.Sum(d => d.VirtualSize);

    public override string ToString() => Name;
}

/// <summary>A disk (VBD of type Disk with its VDI) of a <see cref="XenPoolVM"/>.</summary>
public sealed class XenPoolVMDisk
{
    /// <summary>The VBD's device (xvda, xvdb...) or its userdevice number when not plugged.</summary>
    public required string Device { get; init; }
    public required string VdiUuid { get; init; }
    public string VdiName { get; init; } = "";
    public long VirtualSize { get; init; }
    public bool ReadOnly { get; init; }
    public string SrName { get; init; } = "";
    public required string VdiOpaqueRef { get; init; }

    public override string ToString() => $"{Device}: {VdiName} ({VirtualSize / (1024.0 * 1024 * 1024):0.##} GiB)";
}

/// <summary>A network interface of a <see cref="XenPoolVM"/>.</summary>
public sealed class XenPoolVMVif
{
    public required string Device { get; init; }
    public required string Mac { get; init; }
    public string NetworkName { get; init; } = "";
    public string NetworkUuid { get; init; } = "";

    public override string ToString() => $"{Device}: {Mac} on {NetworkName}";
}
