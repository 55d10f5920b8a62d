namespace VProtect.Core.Formats.Vhd;

/// <summary>A parent path stored in a differencing VHD's parent locators.</summary>
/// <param name="Platform">W2ku (absolute), W2ru (relative) are written UTF-16LE; MacX is a UTF-8 file:// URL.</param>
public readonly record struct VhdParentPath(VhdLocatorPlatform Platform, string Path);

/// <summary>Who a differencing VHD's parent is: its footer unique id, its modification time, its name.</summary>
public sealed record VhdParentIdentity(Guid UniqueId, DateTimeOffset ModificationTime, string Name)
{
    /// <summary>Paths written as parent locators (the spec asks for W2ku and W2ru when possible).</summary>
    public IReadOnlyList<VhdParentPath> Locators { get; init; } = Array.Empty<VhdParentPath>();
}

/// <summary>Identity and layout of a VHD we write.</summary>
public sealed record VhdWriteOptions
{
    /// <summary>
    /// Creator application written to the footer. We write "qem2" by default. Why: qemu derives the disk size
    /// from the CHS geometry (which rounds down, losing up to ~8 MiB of a restored disk) unless the creator is
    /// one of "win ", "qem2", "d2v ", "CTXS", "tap\0" — then it uses current_size, as XenServer, blktap, Hyper-V
    /// and vhd-lib always do. "qem2" is qemu's own marker for exactly that meaning ("current_size is the size"),
    /// whereas "tap\0" would make blktap apply tapdisk-private rules (batmap, old bitmaps) and "caml" (what
    /// xapi's vhd-tool writes) makes qemu report a truncated size. Tested with qemu-img in tests/Interop.
    /// </summary>
    public string CreatorApplication { get; init; } = "qem2";
    public uint CreatorVersion { get; init; } = 0x00010000;
    /// <summary>"Wi2k", as qemu writes.</summary>
    public uint CreatorHostOs { get; init; } = 0x5769326B;
    public Guid UniqueId { get; init; } = Guid.NewGuid();
    public DateTimeOffset Timestamp { get; init; } = DateTimeOffset.UtcNow;
    /// <summary>
    /// Block buffers in flight (1..16). 2 (default): the next block is read while the current one is written,
    /// source reads stay sequential. Above 2 the source sees concurrent reads, so use it only with sources that
    /// allow them (files, VHDs, NBD). Memory: ReadAhead x (block size + bitmap).
    /// </summary>
    public int ReadAhead { get; init; } = 2;
    /// <summary>Set to write a differencing VHD (disk type 4) instead of a dynamic one.</summary>
    public VhdParentIdentity? Parent { get; init; }

    /// <summary>
    /// Options that reproduce what xapi's vhd-tool emits for /export_raw_vdi?format=vhd (research notes 4.5):
    /// creator "caml" version 1, host OS 0, timestamp 0, a fresh unique id, and for a delta one MacX
    /// "file://" locator naming the parent path. For the simulator; note qemu reports a CHS-rounded size for
    /// "caml" images (see <see cref="CreatorApplication"/>).
    /// </summary>
    public static VhdWriteOptions LikeXapiExport(Guid? parentUniqueId = null, string? parentPath = null, DateTimeOffset? parentModified = null) => new()
    {
        CreatorApplication = "caml",
        CreatorVersion = 0x00000001,
        CreatorHostOs = 0,
        Timestamp = VhdFormat.FromTimestamp(0),
        Parent = parentUniqueId is Guid id
            ? new VhdParentIdentity(id, parentModified ?? VhdFormat.FromTimestamp(0), parentPath ?? "")
            {
                Locators = parentPath is null ? Array.Empty<VhdParentPath>() : new[] { new VhdParentPath(VhdLocatorPlatform.MacX, "file://" + parentPath) },
            }
            : null,
    };
}
