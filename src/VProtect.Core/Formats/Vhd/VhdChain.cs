using System.Runtime.CompilerServices;
using VProtect.Core.IO;

namespace VProtect.Core.Formats.Vhd;

/// <summary>
/// A base image (fixed or dynamic) and its differencing children, read as one disk. A read goes to the newest
/// layer whose sector bitmap has the sector, else to its parent — per sector, not per block, so partial
/// bitmaps are honoured (Xen Orchestra's merge copies whole blocks, which is right only for full bitmaps).
/// </summary>
public sealed class VhdChain : IBlockSource, IDisposable
{
    private readonly VhdFile[] _layers; // [0] = base, last = newest

    /// <summary>Takes ownership of <paramref name="baseFirst"/> (base first, newest last) and checks the links.</summary>
    public VhdChain(IReadOnlyList<VhdFile> baseFirst)
    {
        ArgumentNullException.ThrowIfNull(baseFirst);
        if (baseFirst.Count == 0) throw new ArgumentException("A VHD chain needs at least one image.", nameof(baseFirst));
        _layers = baseFirst.ToArray();
        if (_layers[0].DiskType == VhdDiskType.Differencing)
            throw new BackupFormatException(_layers[0].Name, 60, "the oldest image of the chain is differencing; its parent is missing. Add the full (dynamic or fixed) backup it was taken against.");
        for (int i = 1; i < _layers.Length; i++)
        {
            var child = _layers[i]; var parent = _layers[i - 1];
            if (child.DiskType != VhdDiskType.Differencing)
                throw new BackupFormatException(child.Name, 60, $"image {i} of the chain is {child.DiskType}, not differencing; only the oldest image may be a full one.");
            if (child.Header!.ParentUniqueId != parent.Footer.UniqueId)
                throw new BackupFormatException(child.Name, (long)child.Footer.DataOffset + 40,
                    $"parent id {child.Header.ParentUniqueId} does not match {parent.Name} (id {parent.Footer.UniqueId}). The chain is out of order or mixes backups.");
        }
    }

    /// <summary>Opens the files (base first, newest last) as a chain.</summary>
    public static async Task<VhdChain> OpenAsync(IReadOnlyList<string> baseFirstPaths, CancellationToken cancellationToken = default)
    {
        var files = new List<VhdFile>();
        try
        {
            foreach (var p in baseFirstPaths) files.Add(await VhdFile.OpenAsync(p, cancellationToken).ConfigureAwait(false));
            return new VhdChain(files);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Opens <paramref name="newestPath"/> and follows its parent locators (W2ru relative to the child, W2ku
    /// absolute, MacX file:// URL, then the parent name next to the child) down to a full image. Each parent
    /// must carry the unique id its child names, so a stale file with the right name is refused.
    /// </summary>
    public static async Task<VhdChain> OpenFromNewestAsync(string newestPath, int maxDepth = 256, CancellationToken cancellationToken = default)
    {
        var newestFirst = new List<VhdFile>();
        try
        {
            var current = await VhdFile.OpenAsync(newestPath, cancellationToken).ConfigureAwait(false);
            newestFirst.Add(current);
            while (current.DiskType == VhdDiskType.Differencing)
            {
                if (newestFirst.Count > maxDepth)
                    throw new BackupFormatException(newestPath, 0, $"chain is deeper than {maxDepth} images (a loop of parent locators?). Merge the chain or open it with an explicit list.");
                var parentPath = await FindParentAsync(current, cancellationToken).ConfigureAwait(false);
                var parent = await VhdFile.OpenAsync(parentPath, cancellationToken).ConfigureAwait(false);
                newestFirst.Add(parent);
                if (parent.Footer.UniqueId != current.Header!.ParentUniqueId)
                    throw new BackupFormatException(current.Name, (long)current.Footer.DataOffset + 40,
                        $"its parent locator points to {parentPath}, whose id {parent.Footer.UniqueId} is not the expected {current.Header.ParentUniqueId}. The parent was replaced or the files were mixed up.");
                current = parent;
            }
            newestFirst.Reverse();
            return new VhdChain(newestFirst);
        }
        catch
        {
            foreach (var f in newestFirst) f.Dispose();
            throw;
        }
    }

    private static async Task<string> FindParentAsync(VhdFile child, CancellationToken cancellationToken)
    {
        var directory = Path.GetDirectoryName(Path.GetFullPath(child.Name)) ?? ".";
        var candidates = new List<string>();
        foreach (var locator in (await child.ReadParentLocatorsAsync(cancellationToken).ConfigureAwait(false)).OrderBy(l => l.Platform switch
                 { VhdLocatorPlatform.W2ru => 0, VhdLocatorPlatform.W2ku => 1, _ => 2 }))
        {
            string path = locator.Path;
            if (locator.Platform == VhdLocatorPlatform.MacX && Uri.TryCreate(path, UriKind.Absolute, out var uri) && uri.IsFile) path = uri.LocalPath;
            path = path.Replace('\\', Path.DirectorySeparatorChar);
            candidates.Add(Path.IsPathRooted(path) ? path : Path.Combine(directory, path));
        }
        if (child.Header!.ParentUnicodeName.Length > 0)
            candidates.Add(Path.Combine(directory, Path.GetFileName(child.Header.ParentUnicodeName.Replace('\\', '/'))));
        return candidates.FirstOrDefault(File.Exists)
            ?? throw new BackupFormatException(child.Name, (long)child.Footer.DataOffset + 64,
                $"parent '{child.Header.ParentUnicodeName}' was not found (tried: {string.Join(", ", candidates.DefaultIfEmpty("no locators"))}). Put the parent next to it or open the chain with an explicit list.");
    }

    public IReadOnlyList<VhdFile> Layers => _layers;
    public VhdFile Newest => _layers[^1];
    public long Length => Newest.Length;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        if (offset < 0 || offset + buffer.Length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Range {offset}+{buffer.Length} is outside the {Length}-byte chain ending at {Newest.Name}.");
        return ReadLayerAsync(_layers.Length - 1, offset, buffer, cancellationToken);
    }

    private async ValueTask ReadLayerAsync(int layer, long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        var file = _layers[layer];
        // A parent smaller than its child (the disk grew): beyond the parent's end everything is zeros.
        long inside = Math.Clamp(file.Length - offset, 0, buffer.Length);
        buffer.Span[(int)inside..].Clear();
        buffer = buffer[..(int)inside];
        if (file.DiskType != VhdDiskType.Differencing)
        {
            if (buffer.Length > 0) await file.ReadAsync(offset, buffer, cancellationToken).ConfigureAwait(false);
            return;
        }
        while (buffer.Length > 0)
        {
            var (bytes, present) = await file.GetRunAsync(offset, buffer.Length, cancellationToken).ConfigureAwait(false);
            if (present) await file.ReadPresentAsync(offset, buffer[..bytes], cancellationToken).ConfigureAwait(false);
            else await ReadLayerAsync(layer - 1, offset, buffer[..bytes], cancellationToken).ConfigureAwait(false);
            offset += bytes; buffer = buffer[bytes..];
        }
    }

    /// <summary>Union of every layer's allocated extents, ascending and coalesced (streamed, k-way merge).</summary>
    public async IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"Range {offset}+{length} is outside the {Length}-byte chain.");
        var enumerators = new List<IAsyncEnumerator<Extent>>();
        try
        {
            foreach (var layer in _layers)
            {
                long layerLength = Math.Min(length, Math.Max(0, layer.Length - offset));
                if (layerLength == 0) continue;
                var e = layer.GetAllocatedExtentsAsync(offset, layerLength, cancellationToken).GetAsyncEnumerator(cancellationToken);
                if (await e.MoveNextAsync().ConfigureAwait(false)) enumerators.Add(e);
                else await e.DisposeAsync().ConfigureAwait(false);
            }
            long runStart = -1, runEnd = -1;
            while (enumerators.Count > 0)
            {
                int min = 0;
                for (int i = 1; i < enumerators.Count; i++)
                    if (enumerators[i].Current.Offset < enumerators[min].Current.Offset) min = i;
                var next = enumerators[min].Current;
                if (runStart >= 0 && next.Offset <= runEnd) runEnd = Math.Max(runEnd, next.End);
                else
                {
                    if (runStart >= 0) yield return new Extent(runStart, runEnd - runStart);
                    runStart = next.Offset; runEnd = next.End;
                }
                if (!await enumerators[min].MoveNextAsync().ConfigureAwait(false))
                {
                    await enumerators[min].DisposeAsync().ConfigureAwait(false);
                    enumerators.RemoveAt(min);
                }
            }
            if (runStart >= 0) yield return new Extent(runStart, runEnd - runStart);
        }
        finally
        {
            foreach (var e in enumerators) await e.DisposeAsync().ConfigureAwait(false);
        }
    }

    /// <summary>Block plan of the merged image: every sector any layer holds.</summary>
    public Task<VhdBlockPlan> PlanMergeAsync(int blockSize = VhdFormat.DefaultBlockSize, CancellationToken cancellationToken = default) =>
        VhdBlockPlan.FromSourceAsync(this, blockSize, cancellationToken);

    /// <summary>
    /// Writes the whole chain merged, sector by sector, as one dynamic VHD. By default it takes the newest
    /// layer's unique id, as a merge that replaces the chain should.
    /// </summary>
    public async Task WriteMergedAsync(Stream output, VhdWriteOptions? options = null, IProgress<TransferProgress>? progress = null,
        CancellationToken cancellationToken = default)
    {
        options ??= new VhdWriteOptions { UniqueId = Newest.Footer.UniqueId };
        var plan = await PlanMergeAsync(Newest.BlockSize, cancellationToken).ConfigureAwait(false);
        await VhdStreamWriter.WriteAsync(this, plan, output, options, progress, cancellationToken).ConfigureAwait(false);
    }

    public void Dispose()
    {
        foreach (var l in _layers) l.Dispose();
    }
}
