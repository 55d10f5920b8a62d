namespace VProtect.Core.IO;

/// <summary>A byte range of a disk. Offsets and lengths are in bytes.</summary>
public readonly record struct Extent(long Offset, long Length)
{
    public long End => Offset + Length;
    public override string ToString() => $"[{Offset}, +{Length})";
}

/// <summary>
/// Random-access, read-only view of a virtual disk. Every data path (NBD server, VHD/XVA writers,
/// the simulator's VDI store, the backup repository) speaks this so the pieces plug together.
/// </summary>
public interface IBlockSource
{
    /// <summary>Virtual size in bytes.</summary>
    long Length { get; }

    /// <summary>Fills <paramref name="buffer"/> from <paramref name="offset"/>; unallocated ranges read as zeros.</summary>
    ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken);

    /// <summary>
    /// Extents that may hold data within [offset, offset+length), ascending and coalesced.
    /// A source that cannot tell returns the whole range; everything outside the result reads as zeros.
    /// </summary>
    IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, CancellationToken cancellationToken);
}

/// <summary>Writable disk; restores and the simulator's import handlers write through this.</summary>
public interface IBlockTarget
{
    long Length { get; }
    ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken);
    /// <summary>Makes [offset, offset+length) read as zeros (may deallocate).</summary>
    ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken);
    ValueTask FlushAsync(CancellationToken cancellationToken);
}

/// <summary>Progress of a transfer, reported through <see cref="IProgress{T}"/>.</summary>
public readonly record struct TransferProgress(long BytesDone, long BytesTotal);
