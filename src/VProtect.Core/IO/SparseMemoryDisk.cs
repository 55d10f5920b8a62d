using System.Runtime.InteropServices;

namespace VProtect.Core.IO;

/// <summary>
/// A sparse in-memory disk (64 KiB pages, only written pages stored). For tests and small fixtures;
/// allocation is tracked per page, so a 100 GiB disk with nothing written costs nothing.
/// </summary>
public sealed class SparseMemoryDisk : IBlockSource, IBlockTarget
{
    public const int PageSize = 64 * 1024;
    private readonly SortedDictionary<long, byte[]> _pages = new();
    private readonly object _gate = new();

    public SparseMemoryDisk(long length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        Length = length;
    }

    public long Length { get; }

    public int AllocatedPageCount { get { lock (_gate) return _pages.Count; } }

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        CheckRange(offset, buffer.Length);
        var span = buffer.Span;
        lock (_gate)
        {
            int done = 0;
            while (done < span.Length)
            {
                long pos = offset + done;
                long page = pos / PageSize;
                int inPage = (int)(pos % PageSize);
                int n = Math.Min(PageSize - inPage, span.Length - done);
                if (_pages.TryGetValue(page, out var data)) data.AsSpan(inPage, n).CopyTo(span.Slice(done, n));
                else span.Slice(done, n).Clear();
                done += n;
            }
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        CheckRange(offset, data.Length);
        var span = data.Span;
        lock (_gate)
        {
            int done = 0;
            while (done < span.Length)
            {
                long pos = offset + done;
                long page = pos / PageSize;
                int inPage = (int)(pos % PageSize);
                int n = Math.Min(PageSize - inPage, span.Length - done);
                if (!_pages.TryGetValue(page, out var p)) _pages[page] = p = new byte[PageSize];
                span.Slice(done, n).CopyTo(p.AsSpan(inPage, n));
                done += n;
            }
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken)
    {
        CheckRange(offset, length);
        lock (_gate)
        {
            long end = offset + length;
            for (long pos = offset; pos < end;)
            {
                long page = pos / PageSize;
                int inPage = (int)(pos % PageSize);
                int n = (int)Math.Min(PageSize - inPage, end - pos);
                if (_pages.TryGetValue(page, out var p))
                {
                    if (n == PageSize) _pages.Remove(page);
                    else p.AsSpan(inPage, n).Clear();
                }
                pos += n;
            }
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

    public async IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        CheckRange(offset, length);
        long[] pages;
        lock (_gate) pages = _pages.Keys.ToArray();
        long end = offset + length;
        long? runStart = null; long runEnd = 0;
        foreach (var page in pages)
        {
            long s = Math.Max(page * PageSize, offset), e = Math.Min((page + 1) * PageSize, end);
            if (e <= s) continue;
            if (runStart is not null && s == runEnd) { runEnd = e; continue; }
            if (runStart is not null) yield return new Extent(runStart.Value, runEnd - runStart.Value);
            runStart = s; runEnd = e;
        }
        if (runStart is not null) yield return new Extent(runStart.Value, runEnd - runStart.Value);
        await Task.CompletedTask;
    }

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Range {offset}+{length} is outside the disk of {Length} bytes.");
    }
}
