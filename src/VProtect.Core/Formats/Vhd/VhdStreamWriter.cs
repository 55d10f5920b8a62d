using System.Buffers;
using System.Buffers.Binary;
using System.Text;
using Microsoft.Win32.SafeHandles;
using VProtect.Core.IO;

namespace VProtect.Core.Formats.Vhd;

/// <summary>
/// Writes VHDs front to back without seeking, as xapi's vhd-tool does: footer copy @0, dynamic header @512,
/// parent-locator data (differencing only), BAT, the planned blocks in ascending order, footer. The output
/// can go straight into an HTTP request body: <see cref="ComputeLength"/> gives its exact size beforehand.
/// </summary>
public static class VhdStreamWriter
{
    private const long HeaderOffset = VhdFormat.FooterSize;
    private const long LocatorAreaOffset = HeaderOffset + VhdFormat.DynamicHeaderSize;

    /// <summary>Exact byte length of the dynamic or differencing VHD <see cref="WriteAsync"/> will produce.</summary>
    public static long ComputeLength(VhdBlockPlan plan, VhdWriteOptions options)
    {
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(options);
        long blockBytes = VhdFormat.BitmapBytes(plan.BlockSize) + (long)plan.BlockSize;
        return TableOffset(options) + VhdFormat.BatBytes(plan.TableEntries) + plan.Blocks.Count * blockBytes + VhdFormat.FooterSize;
    }

    /// <summary>Exact byte length of a fixed VHD of <paramref name="diskSize"/> bytes (data then footer).</summary>
    public static long ComputeFixedLength(long diskSize) => diskSize + VhdFormat.FooterSize;

    /// <summary>
    /// Writes a dynamic VHD (or differencing, when <see cref="VhdWriteOptions.Parent"/> is set) holding the
    /// planned blocks of <paramref name="source"/>. Sectors outside a block's bitmap are written as zeros, as the
    /// spec requires. Memory: the BAT and ReadAhead block buffers, whatever the disk size.
    /// </summary>
    public static async Task WriteAsync(IBlockSource source, VhdBlockPlan plan, Stream output, VhdWriteOptions? options = null,
        IProgress<TransferProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(output);
        options ??= new VhdWriteOptions();
        if (source.Length != plan.DiskSize)
            throw new ArgumentException($"The block plan is for a disk of {plan.DiskSize} bytes but the source has {source.Length}.", nameof(plan));
        long total = ComputeLength(plan, options);
        var metadata = BuildMetadata(plan, options, out var footerBytes);
        // Into a file, the kernel starts writing each 32 MiB to disk soon after it is written (see WriteBehind).
        var writeBehind = WriteBehind.For(output);
        long origin = writeBehind is null ? 0 : output.Position;
        await output.WriteAsync(metadata, cancellationToken).ConfigureAwait(false);
        long done = metadata.Length;
        writeBehind?.Written(origin, done);
        int bitmapBytes = VhdFormat.BitmapBytes(plan.BlockSize);
        long blockBytes = bitmapBytes + (long)plan.BlockSize;
        progress?.Report(new TransferProgress(done, total));

        // Blocks: up to ReadAhead blocks are read from the source while the current one is written.
        int depth = Math.Clamp(options.ReadAhead, 1, 16);
        var buffers = new byte[depth][];
        var pending = new Task?[depth];
        for (int k = 0; k < depth; k++) buffers[k] = ArrayPool<byte>.Shared.Rent((int)blockBytes);
        try
        {
            var blocks = plan.Blocks;
            for (int i = 0; i < Math.Min(depth, blocks.Count); i++)
                pending[i] = FillBlockAsync(source, plan, blocks[i], buffers[i].AsMemory(0, (int)blockBytes), bitmapBytes, cancellationToken);
            for (int i = 0; i < blocks.Count; i++)
            {
                int slot = i % depth;
                await pending[slot]!.ConfigureAwait(false);
                pending[slot] = null;
                await output.WriteAsync(buffers[slot].AsMemory(0, (int)blockBytes), cancellationToken).ConfigureAwait(false);
                writeBehind?.Written(origin + done, blockBytes);
                if (i + depth < blocks.Count)
                    pending[slot] = FillBlockAsync(source, plan, blocks[i + depth], buffers[slot].AsMemory(0, (int)blockBytes), bitmapBytes, cancellationToken);
                done += blockBytes;
                progress?.Report(new TransferProgress(done, total));
            }
        }
        finally
        {
            // Never hand a buffer back to the pool while a read may still fill it.
            foreach (var t in pending)
                if (t is not null) { try { await t.ConfigureAwait(false); } catch { /* the first failure is already propagating */ } }
            foreach (var b in buffers) ArrayPool<byte>.Shared.Return(b);
        }
        await output.WriteAsync(footerBytes, cancellationToken).ConfigureAwait(false);
        done += footerBytes.Length;
        progress?.Report(new TransferProgress(done, total));
    }

    /// <summary>
    /// Writes the same image as <see cref="WriteAsync"/> into a new, empty file, faster: up to
    /// <paramref name="concurrency"/> blocks are read from the source at once (it must allow concurrent reads) while
    /// one writer puts them in the file front to back; the file is pre-sized, so what reads as zeros (sectors a
    /// partial block does not carry, all-zero 64 KiB pieces of the data) is left as holes instead of being written;
    /// and on Linux the kernel is asked to start writing each 32 MiB to disk as soon as it is written (see
    /// <see cref="WriteBehind"/>), so the caller's closing fsync has little left to do. The file's bytes are
    /// exactly the stream writer's. Memory: <paramref name="concurrency"/> x (block size + bitmap).
    /// </summary>
    public static Task WriteFileAsync(IBlockSource source, VhdBlockPlan plan, SafeFileHandle file, VhdWriteOptions? options = null,
        int concurrency = 4, IProgress<TransferProgress>? progress = null, CancellationToken cancellationToken = default) =>
        WriteFileAsync(source, plan, file, options, concurrency, WriteBehind.DefaultWindow, progress, cancellationToken);

    internal static async Task WriteFileAsync(IBlockSource source, VhdBlockPlan plan, SafeFileHandle file, VhdWriteOptions? options,
        int concurrency, long writeBehindWindow, IProgress<TransferProgress>? progress, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(plan);
        ArgumentNullException.ThrowIfNull(file);
        ArgumentOutOfRangeException.ThrowIfLessThan(concurrency, 1);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(concurrency, 64);
        options ??= new VhdWriteOptions();
        if (source.Length != plan.DiskSize)
            throw new ArgumentException($"The block plan is for a disk of {plan.DiskSize} bytes but the source has {source.Length}.", nameof(plan));
        long total = ComputeLength(plan, options);
        var metadata = BuildMetadata(plan, options, out var footerBytes);
        int bitmapBytes = VhdFormat.BitmapBytes(plan.BlockSize);
        int blockBytes = bitmapBytes + plan.BlockSize;
        if (RandomAccess.GetLength(file) != 0)
            throw new ArgumentException("WriteFileAsync needs a new, empty file: it relies on unwritten ranges reading as zeros.", nameof(file));
        RandomAccess.SetLength(file, total);
        var writeBehind = WriteBehind.For(file, writeBehindWindow);
        await RandomAccess.WriteAsync(file, metadata, 0, cancellationToken).ConfigureAwait(false);
        writeBehind?.Written(0, metadata.Length);
        long done = metadata.Length;
        progress?.Report(new TransferProgress(done, total));

        // A bounded pipeline: block i + depth is read while block i is written; writes stay in file order.
        var blocks = plan.Blocks;
        int depth = Math.Min(concurrency, Math.Max(1, blocks.Count));
        var buffers = new byte[depth][];
        var pending = new Task?[depth];
        for (int k = 0; k < depth; k++) buffers[k] = ArrayPool<byte>.Shared.Rent(blockBytes);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        try
        {
            for (int i = 0; i < Math.Min(depth, blocks.Count); i++)
                pending[i] = FillBlockAsync(source, plan, blocks[i], buffers[i].AsMemory(0, blockBytes), bitmapBytes, linked.Token);
            for (int i = 0; i < blocks.Count; i++)
            {
                int slot = i % depth;
                await pending[slot]!.ConfigureAwait(false);
                pending[slot] = null;
                long at = metadata.Length + (long)i * blockBytes;
                await WriteBlockToFileAsync(file, plan, blocks[i], buffers[slot].AsMemory(0, blockBytes), at, bitmapBytes, linked.Token).ConfigureAwait(false);
                writeBehind?.Written(at, blockBytes);
                if (i + depth < blocks.Count)
                    pending[slot] = FillBlockAsync(source, plan, blocks[i + depth], buffers[slot].AsMemory(0, blockBytes), bitmapBytes, linked.Token);
                done += blockBytes;
                progress?.Report(new TransferProgress(done, total));
            }
        }
        finally
        {
            linked.Cancel(); // reads still in flight after a failure: stop them, and wait before the buffers go back
            foreach (var t in pending)
                if (t is not null) { try { await t.ConfigureAwait(false); } catch { /* the first failure is already propagating */ } }
            foreach (var b in buffers) ArrayPool<byte>.Shared.Return(b);
        }
        await RandomAccess.WriteAsync(file, footerBytes, total - VhdFormat.FooterSize, cancellationToken).ConfigureAwait(false);
        progress?.Report(new TransferProgress(total, total));
    }

    /// <summary>Zero detection granularity of the file writer: all-zero pieces of this size are left as holes.</summary>
    private const int ZeroPiece = 64 * 1024;

    /// <summary>
    /// Writes one filled block buffer at <paramref name="at"/> of a pre-sized file whose range is still a hole:
    /// the bitmap, then the carried sectors except all-zero 64 KiB pieces, adjacent pieces in one write.
    /// </summary>
    private static async Task WriteBlockToFileAsync(SafeFileHandle file, VhdBlockPlan plan, VhdPlannedBlock block, ReadOnlyMemory<byte> buffer,
        long at, int bitmapBytes, CancellationToken cancellationToken)
    {
        int sectors = plan.SectorsInDisk(block.Index);
        int runStart = 0, runEnd = bitmapBytes; // the pending write, as buffer offsets; the bitmap always goes
        for (int s = 0; s < sectors;)
        {
            int run;
            bool carried = true;
            if (block.SectorBitmap is not { } bitmap) run = sectors - s;
            else run = VhdSectorBitmap.RunLength(bitmap, s, sectors - s, out carried);
            if (carried)
            {
                int from = bitmapBytes + s * VhdFormat.SectorSize, to = bitmapBytes + (s + run) * VhdFormat.SectorSize;
                for (int pos = from; pos < to;)
                {
                    int pieceEnd = Math.Min(to, bitmapBytes + ((pos - bitmapBytes) / ZeroPiece + 1) * ZeroPiece);
                    bool zero = buffer.Span[pos..pieceEnd].IndexOfAnyExcept((byte)0) < 0;
                    if (!zero)
                    {
                        if (pos != runEnd)
                        {
                            await RandomAccess.WriteAsync(file, buffer[runStart..runEnd], at + runStart, cancellationToken).ConfigureAwait(false);
                            runStart = pos;
                        }
                        runEnd = pieceEnd;
                    }
                    pos = pieceEnd;
                }
            }
            s += run;
        }
        await RandomAccess.WriteAsync(file, buffer[runStart..runEnd], at + runStart, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Footer copy, dynamic header, parent-locator data and BAT: everything before the first block.</summary>
    private static byte[] BuildMetadata(VhdBlockPlan plan, VhdWriteOptions options, out byte[] footerBytes)
    {
        footerBytes = BuildFooter(plan.DiskSize, options, options.Parent is null ? VhdDiskType.Dynamic : VhdDiskType.Differencing, HeaderOffset).ToArray();
        long tableOffset = TableOffset(options);
        var locatorData = EncodeLocators(options.Parent, out var locators);
        var header = new VhdDynamicHeader
        {
            TableOffset = (ulong)tableOffset,
            MaxTableEntries = plan.TableEntries,
            BlockSize = (uint)plan.BlockSize,
            ParentUniqueId = options.Parent?.UniqueId ?? Guid.Empty,
            ParentTimestamp = options.Parent is null ? 0 : VhdFormat.ToTimestamp(options.Parent.ModificationTime),
            ParentUnicodeName = options.Parent?.Name ?? "",
            ParentLocators = locators,
        };
        long batBytes = VhdFormat.BatBytes(plan.TableEntries);
        var metadata = new byte[tableOffset + batBytes];
        footerBytes.CopyTo(metadata, 0);
        header.WriteTo(metadata.AsSpan(VhdFormat.FooterSize));
        long at = LocatorAreaOffset;
        foreach (var data in locatorData) { data.CopyTo(metadata, at); at += data.Length; }
        var bat = metadata.AsSpan((int)tableOffset, (int)batBytes);
        bat.Fill(0xFF);
        long blockBytes = VhdFormat.BitmapBytes(plan.BlockSize) + (long)plan.BlockSize;
        long nextSector = (tableOffset + batBytes) / VhdFormat.SectorSize;
        foreach (var b in plan.Blocks)
        {
            if (nextSector > uint.MaxValue - 1)
                throw new ArgumentException("The planned VHD would exceed the 2 TiB addressable by its 32-bit block table.", nameof(plan));
            BinaryPrimitives.WriteUInt32BigEndian(bat[((int)b.Index * 4)..], (uint)nextSector);
            nextSector += blockBytes / VhdFormat.SectorSize;
        }
        return metadata;
    }

    /// <summary>Writes a fixed VHD: the raw disk followed by the footer. Holes are written as zeros.</summary>
    public static async Task WriteFixedAsync(IBlockSource source, Stream output, VhdWriteOptions? options = null,
        IProgress<TransferProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(source);
        ArgumentNullException.ThrowIfNull(output);
        options ??= new VhdWriteOptions();
        if (options.Parent is not null) throw new ArgumentException("A fixed VHD cannot have a parent; write a differencing VHD instead.", nameof(options));
        long size = source.Length;
        if (size <= 0 || size % VhdFormat.SectorSize != 0 || size > VhdFormat.MaxDiskSize)
            throw new ArgumentOutOfRangeException(nameof(source), $"A VHD disk size must be a positive multiple of 512 bytes up to 2040 GiB, got {size}.");
        long total = ComputeFixedLength(size);
        const int chunk = 1 << 20;
        var buffer = ArrayPool<byte>.Shared.Rent(chunk);
        try
        {
            long pos = 0;
            await foreach (var e in source.GetAllocatedExtentsAsync(0, size, cancellationToken).ConfigureAwait(false))
            {
                await WriteZerosAsync(output, e.Offset - pos, buffer, cancellationToken).ConfigureAwait(false);
                for (pos = e.Offset; pos < e.End;)
                {
                    int n = (int)Math.Min(chunk, e.End - pos);
                    await source.ReadAsync(pos, buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
                    await output.WriteAsync(buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
                    pos += n;
                    progress?.Report(new TransferProgress(pos, total));
                }
            }
            await WriteZerosAsync(output, size - pos, buffer, cancellationToken).ConfigureAwait(false);
        }
        finally { ArrayPool<byte>.Shared.Return(buffer); }
        await output.WriteAsync(BuildFooter(size, options, VhdDiskType.Fixed, ulong.MaxValue).ToArray(), cancellationToken).ConfigureAwait(false);
        progress?.Report(new TransferProgress(total, total));
    }

    internal static VhdFooter BuildFooter(long diskSize, VhdWriteOptions options, VhdDiskType type, ulong dataOffset) => new()
    {
        DataOffset = dataOffset,
        Timestamp = VhdFormat.ToTimestamp(options.Timestamp),
        CreatorApplication = options.CreatorApplication,
        CreatorVersion = options.CreatorVersion,
        CreatorHostOs = options.CreatorHostOs,
        OriginalSize = (ulong)diskSize,
        CurrentSize = (ulong)diskSize,
        Geometry = VhdGeometry.ForSize(diskSize),
        DiskType = type,
        UniqueId = options.UniqueId,
    };

    private static long TableOffset(VhdWriteOptions options)
    {
        long locatorBytes = 0;
        if (options.Parent is not null)
            foreach (var l in options.Parent.Locators) locatorBytes += PaddedLength(EncodeLocatorPath(l).Length);
        return LocatorAreaOffset + locatorBytes;
    }

    private static byte[] EncodeLocatorPath(VhdParentPath path) => path.Platform switch
    {
        VhdLocatorPlatform.W2ku or VhdLocatorPlatform.W2ru => Encoding.Unicode.GetBytes(path.Path), // UTF-16LE, as Microsoft and blktap write
        VhdLocatorPlatform.MacX => Encoding.UTF8.GetBytes(path.Path),
        _ => throw new ArgumentException($"Parent locator platform {path.Platform} is not supported for writing; use W2ku, W2ru or MacX."),
    };

    private static long PaddedLength(int bytes) => Math.Max(1, (bytes + VhdFormat.SectorSize - 1) / VhdFormat.SectorSize) * (long)VhdFormat.SectorSize;

    private static List<byte[]> EncodeLocators(VhdParentIdentity? parent, out VhdParentLocator[] locators)
    {
        var data = new List<byte[]>();
        locators = Array.Empty<VhdParentLocator>();
        if (parent is null) return data;
        if (parent.Locators.Count > VhdDynamicHeader.LocatorCount)
            throw new ArgumentException($"A VHD holds at most {VhdDynamicHeader.LocatorCount} parent locators.", nameof(parent));
        locators = new VhdParentLocator[parent.Locators.Count];
        long offset = LocatorAreaOffset;
        for (int i = 0; i < parent.Locators.Count; i++)
        {
            var bytes = EncodeLocatorPath(parent.Locators[i]);
            long space = PaddedLength(bytes.Length);
            // Data space in bytes (what Microsoft and blktap write); readers treat values >= 512 as bytes.
            locators[i] = new VhdParentLocator(parent.Locators[i].Platform, (uint)space, (uint)bytes.Length, (ulong)offset);
            var padded = new byte[space];
            bytes.CopyTo(padded, 0);
            data.Add(padded);
            offset += space;
        }
        return data;
    }

    private static async Task FillBlockAsync(IBlockSource source, VhdBlockPlan plan, VhdPlannedBlock block, Memory<byte> buffer,
        int bitmapBytes, CancellationToken cancellationToken)
    {
        var bitmap = buffer[..bitmapBytes];
        var data = buffer[bitmapBytes..];
        long blockStart = (long)block.Index * plan.BlockSize;
        int sectorsInDisk = plan.SectorsInDisk(block.Index);
        if (block.SectorBitmap is null)
        {
            bitmap.Span.Fill(0xFF);
            int bytes = sectorsInDisk * VhdFormat.SectorSize;
            await source.ReadAsync(blockStart, data[..bytes], cancellationToken).ConfigureAwait(false);
            data.Span[bytes..].Clear();
            return;
        }
        block.SectorBitmap.AsSpan(0, bitmapBytes).CopyTo(bitmap.Span);
        data.Span.Clear();
        for (int s = 0; s < sectorsInDisk;)
        {
            int run = VhdSectorBitmap.RunLength(block.SectorBitmap, s, sectorsInDisk - s, out bool set);
            if (set)
                await source.ReadAsync(blockStart + (long)s * VhdFormat.SectorSize,
                    data.Slice(s * VhdFormat.SectorSize, run * VhdFormat.SectorSize), cancellationToken).ConfigureAwait(false);
            s += run;
        }
    }

    private static async Task WriteZerosAsync(Stream output, long count, byte[] buffer, CancellationToken cancellationToken)
    {
        if (count <= 0) return;
        Array.Clear(buffer);
        while (count > 0)
        {
            int n = (int)Math.Min(buffer.Length, count);
            await output.WriteAsync(buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
            count -= n;
        }
    }
}
