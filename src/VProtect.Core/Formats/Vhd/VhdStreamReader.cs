using System.Buffers;
using System.Buffers.Binary;
using VProtect.Core.IO;

namespace VProtect.Core.Formats.Vhd;

/// <summary>What a streamed VHD contained and what was applied.</summary>
public sealed record VhdStreamResult(VhdFooter Footer, VhdDynamicHeader Header, int BlocksApplied, long BytesWritten);

/// <summary>Options for <see cref="VhdStreamReader.ApplyAsync"/>.</summary>
public sealed record VhdApplyOptions
{
    /// <summary>
    /// Dynamic images only: also zero every sector the VHD does not hold, so the target ends up equal to the
    /// image even if it held older data. Leave false when the target is known to be blank.
    /// </summary>
    public bool ZeroUnallocated { get; init; }
}

/// <summary>
/// Applies a dynamic or differencing VHD to an <see cref="IBlockTarget"/> while it arrives on a forward-only
/// stream (an HTTP response from /export_raw_vdi?format=vhd). Reads footer copy, header, BAT, then each block
/// in ascending file order; dynamic: sectors with their bitmap bit set are written; differencing: only those,
/// the rest stays as the parent left it. The trailing footer must equal the leading copy.
/// Memory: the BAT plus two 1 MiB chunks, whatever the disk size. Data is written as it arrives, so when this
/// throws (truncated or corrupt stream) the target holds a partial restore and must not be used.
/// </summary>
public static class VhdStreamReader
{
    private const int ChunkBytes = 1 << 20;

    public static async Task<VhdStreamResult> ApplyAsync(Stream input, IBlockTarget target, string sourceName, VhdApplyOptions? options = null,
        IProgress<TransferProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(input);
        ArgumentNullException.ThrowIfNull(target);
        options ??= new VhdApplyOptions();
        var reader = new ForwardReader(input, sourceName);

        var footerCopy = new byte[VhdFormat.FooterSize];
        await reader.ReadExactlyAsync(footerCopy, "the VHD footer copy", cancellationToken).ConfigureAwait(false);
        if (!VhdFooter.HasCookie(footerCopy))
            throw new BackupFormatException(sourceName, 0, "stream does not start with a VHD footer copy ('conectix'). It is not a dynamic or differencing VHD; a fixed VHD must be read as a file (VhdFile).");
        var footer = VhdFooter.Parse(footerCopy, sourceName, 0);
        if (footer.DiskType == VhdDiskType.Fixed)
            throw new BackupFormatException(sourceName, 60, "a fixed VHD has no block table to stream; read it as a file (VhdFile) or as raw data.");
        long diskSize = (long)footer.CurrentSize;
        if (footer.DataOffset < VhdFormat.FooterSize || footer.DataOffset % VhdFormat.SectorSize != 0 || footer.DataOffset > 1 << 30)
            throw new BackupFormatException(sourceName, 16, $"VHD footer data offset {footer.DataOffset} does not point to a dynamic header.");

        await reader.SkipToAsync((long)footer.DataOffset, "the dynamic header", cancellationToken).ConfigureAwait(false);
        var headerBytes = new byte[VhdFormat.DynamicHeaderSize];
        await reader.ReadExactlyAsync(headerBytes, "the VHD dynamic header", cancellationToken).ConfigureAwait(false);
        var header = VhdDynamicHeader.Parse(headerBytes, diskSize, sourceName, (long)footer.DataOffset);
        if (target.Length < diskSize)
            throw new ArgumentException($"The target disk has {target.Length} bytes but the VHD {sourceName} describes {diskSize}; resize the target first.", nameof(target));

        long tableOffset = (long)header.TableOffset;
        await reader.SkipToAsync(tableOffset, "the block table", cancellationToken).ConfigureAwait(false);
        int entries = (int)header.MaxTableEntries;
        var batBytes = ArrayPool<byte>.Shared.Rent(entries * 4);
        BlockLocation[] blocks;
        try
        {
            await reader.ReadExactlyAsync(batBytes.AsMemory(0, entries * 4), "the VHD block table", cancellationToken).ConfigureAwait(false);
            blocks = VhdLayout.CollectAllocatedBlocks(batBytes.AsSpan(0, entries * 4), header, diskSize, tableOffset, fileLength: null, sourceName);
        }
        finally { ArrayPool<byte>.Shared.Return(batBytes); }

        int bitmapBytes = header.BitmapBytes;
        int sectorsPerBlock = header.SectorsPerBlock;
        bool differencing = footer.DiskType == VhdDiskType.Differencing;
        long totalBytes = blocks.Length * (long)header.BlockSize;
        long written = 0, processed = 0;
        var bitmap = new byte[bitmapBytes];
        // Two chunk buffers: the next chunk arrives from the stream while the previous one is written to the target.
        var buffers = new[] { ArrayPool<byte>.Shared.Rent(ChunkBytes), ArrayPool<byte>.Shared.Rent(ChunkBytes) };
        int which = 0;
        Task pendingWrites = Task.CompletedTask;
        try
        {
            foreach (var block in blocks)
            {
                await reader.SkipToAsync(block.FileOffset, $"block {block.Index}", cancellationToken).ConfigureAwait(false);
                await reader.ReadExactlyAsync(bitmap, $"the sector bitmap of block {block.Index}", cancellationToken).ConfigureAwait(false);
                long blockStart = (long)block.Index * header.BlockSize;
                int sectorsInDisk = (int)Math.Min(sectorsPerBlock, (diskSize - blockStart) / VhdFormat.SectorSize);
                int chunkSectors = ChunkBytes / VhdFormat.SectorSize;
                for (int first = 0; first < sectorsPerBlock; first += chunkSectors)
                {
                    int count = Math.Min(chunkSectors, sectorsPerBlock - first);
                    var chunk = buffers[which];
                    await reader.ReadExactlyAsync(chunk.AsMemory(0, count * VhdFormat.SectorSize), $"the data of block {block.Index}", cancellationToken).ConfigureAwait(false);
                    int limit = Math.Min(first + count, sectorsInDisk);
                    var chunkRuns = new List<(long Offset, int BufferOffset, int Bytes, bool Set)>();
                    for (int s = first; s < limit;)
                    {
                        int run = VhdSectorBitmap.RunLength(bitmap, s, limit - s, out bool set);
                        if (set || (!differencing && options.ZeroUnallocated))
                            chunkRuns.Add((blockStart + (long)s * VhdFormat.SectorSize, (s - first) * VhdFormat.SectorSize, run * VhdFormat.SectorSize, set));
                        if (set) written += run * VhdFormat.SectorSize;
                        s += run;
                    }
                    await pendingWrites.ConfigureAwait(false);
                    pendingWrites = WriteRunsAsync(target, chunk, chunkRuns, cancellationToken);
                    which ^= 1;
                    processed += count * VhdFormat.SectorSize;
                    progress?.Report(new TransferProgress(processed, totalBytes));
                }
            }
            await pendingWrites.ConfigureAwait(false);
            if (!differencing && options.ZeroUnallocated)
                await ZeroUnallocatedBlocksAsync(target, blocks, header.BlockSize, diskSize, cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            // Never return a buffer to the pool while a write may still read it.
            try { await pendingWrites.ConfigureAwait(false); } catch { /* the first failure is already propagating */ }
            ArrayPool<byte>.Shared.Return(buffers[0]);
            ArrayPool<byte>.Shared.Return(buffers[1]);
        }

        await ExpectTrailingFooterAsync(reader, footerCopy, sourceName, cancellationToken).ConfigureAwait(false);
        await target.FlushAsync(cancellationToken).ConfigureAwait(false);
        return new VhdStreamResult(footer, header, blocks.Length, written);
    }

    private static async Task WriteRunsAsync(IBlockTarget target, byte[] chunk, List<(long Offset, int BufferOffset, int Bytes, bool Set)> runs, CancellationToken cancellationToken)
    {
        foreach (var r in runs)
        {
            if (r.Set) await target.WriteAsync(r.Offset, chunk.AsMemory(r.BufferOffset, r.Bytes), cancellationToken).ConfigureAwait(false);
            else await target.WriteZeroesAsync(r.Offset, r.Bytes, cancellationToken).ConfigureAwait(false);
        }
    }

    private static async Task ZeroUnallocatedBlocksAsync(IBlockTarget target, BlockLocation[] blocks, uint blockSize, long diskSize, CancellationToken cancellationToken)
    {
        var allocated = blocks.Select(b => b.Index).ToHashSet();
        long entries = (diskSize + blockSize - 1) / blockSize;
        for (long i = 0; i < entries;)
        {
            if (allocated.Contains((uint)i)) { i++; continue; }
            long start = i;
            while (i < entries && !allocated.Contains((uint)i)) i++;
            long from = start * blockSize, to = Math.Min(i * blockSize, diskSize);
            await target.WriteZeroesAsync(from, to - from, cancellationToken).ConfigureAwait(false);
        }
    }

    private static async Task ExpectTrailingFooterAsync(ForwardReader reader, byte[] footerCopy, string sourceName, CancellationToken cancellationToken)
    {
        // The footer ends the stream; allow a few padding sectors before it but never unbounded data.
        var tail = new byte[VhdFormat.FooterSize * 16];
        long start = reader.Position;
        int got = await reader.ReadToEndOrFullAsync(tail, cancellationToken).ConfigureAwait(false);
        if (got == tail.Length)
        {
            var probe = new byte[1];
            if (await reader.ReadToEndOrFullAsync(probe, cancellationToken).ConfigureAwait(false) != 0)
                throw new BackupFormatException(sourceName, start, "unexpected data after the last VHD block (more than 8 KiB before the end). The stream is not a VHD written in block order, or it is corrupt.");
        }
        if (got < VhdFormat.FooterSize)
            throw new BackupFormatException(sourceName, start + got, $"stream ended without the closing VHD footer ({got} of 512 bytes after the last block). The transfer was cut short; download again.");
        var trailer = tail.AsSpan(got - VhdFormat.FooterSize, VhdFormat.FooterSize);
        if (!trailer.SequenceEqual(footerCopy))
        {
            long at = start + got - VhdFormat.FooterSize;
            VhdFooter.Parse(trailer, sourceName, at); // names checksum or cookie problems precisely
            throw new BackupFormatException(sourceName, at, "the closing VHD footer differs from the copy at offset 0. The image is inconsistent; do not trust it.");
        }
    }
}
