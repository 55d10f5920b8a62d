using VProtect.Core.IO;

namespace VProtect.Core.Nbd;

/// <summary><see cref="IBlockSource"/> over an <see cref="NbdClient"/>: reads retried, allocation from base:allocation.</summary>
internal sealed class NbdBlockSource(NbdClient client) : IBlockSource
{
    public long Length => client.Size;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
        => new(client.ReadAsync(offset, buffer, cancellationToken));

    public async IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        long? runStart = null; long runEnd = 0;
        await foreach (var a in client.GetAllocationAsync(offset, length, cancellationToken))
        {
            if (a.ReadsAsZeroes) continue;
            if (runStart is not null && a.Offset == runEnd) { runEnd += a.Length; continue; }
            if (runStart is not null) yield return new Extent(runStart.Value, runEnd - runStart.Value);
            runStart = a.Offset; runEnd = a.Offset + a.Length;
        }
        if (runStart is not null) yield return new Extent(runStart.Value, runEnd - runStart.Value);
    }
}
