using System.Buffers;
using System.Text.Json;
using VProtect.Core.IO;

namespace VProtect.Simulator.Storage;

/// <summary>Where a VDI's content lives: its top (writable) layer, its size, and the CBT log it writes to.</summary>
internal sealed class VdiContent
{
    public required string TopLayerId { get; set; }
    public required long VirtualSize { get; set; }
    /// <summary>Identity of the CBT log this VDI's chain writes to; null while CBT is off. Disable ends the log.</summary>
    public string? CbtLogId { get; set; }
    /// <summary>VDI.data_destroy ran: only the CBT metadata is left.</summary>
    public bool DataDestroyed { get; set; }
}

/// <summary>
/// Sparse, on-disk VDI contents organised as XenServer organises VHDs: a tree of layers where a snapshot
/// freezes the current layer and gives the VDI and its snapshot new empty children. The files live in
/// <c>{directory}/layers</c>; <see cref="Save"/> writes <c>storage.json</c> so a state directory survives a restart.
/// </summary>
internal sealed class VdiStorage : IDisposable
{
    private readonly Dictionary<string, Layer> _layers = new(StringComparer.Ordinal);
    private readonly Dictionary<string, VdiContent> _vdis = new(StringComparer.OrdinalIgnoreCase);
    private readonly object _gate = new();
    private readonly string _layerDir;

    public VdiStorage(string directory)
    {
        Directory = directory;
        _layerDir = Path.Combine(directory, "layers");
        System.IO.Directory.CreateDirectory(_layerDir);
    }

    public string Directory { get; }
    private string StatePath => Path.Combine(Directory, "storage.json");

    public void CreateVdi(string uuid, long virtualSize)
    {
        lock (_gate) _vdis[uuid] = new VdiContent { TopLayerId = NewLayer(null).Id, VirtualSize = virtualSize };
    }

    public bool Exists(string uuid) { lock (_gate) return _vdis.ContainsKey(uuid); }

    public VdiContent Content(string uuid)
    {
        lock (_gate) return _vdis.TryGetValue(uuid, out var c) ? c : throw new KeyNotFoundException($"No storage for VDI {uuid}.");
    }

    /// <summary>
    /// VDI.snapshot / VDI.clone: freeze the current top and give both VDIs fresh children.
    /// A snapshot keeps the CBT log; a clone starts without one (quicktest_cbt.ml).
    /// </summary>
    public void Branch(string sourceUuid, string newUuid, bool keepCbt)
    {
        lock (_gate)
        {
            var src = Content(sourceUuid);
            var top = _layers[src.TopLayerId];
            top.Frozen = true;
            src.TopLayerId = NewLayer(top.Id).Id;
            _vdis[newUuid] = new VdiContent
            {
                TopLayerId = NewLayer(top.Id).Id,
                VirtualSize = src.VirtualSize,
                CbtLogId = keepCbt ? src.CbtLogId : null,
            };
        }
    }

    /// <summary>VDI.resize: the virtual size grows; nothing is written, so the new area reads zeros.</summary>
    public void Resize(string uuid, long newSize)
    {
        lock (_gate)
        {
            var c = Content(uuid);
            if (newSize < c.VirtualSize) throw new InvalidOperationException($"VDI {uuid} cannot shrink ({c.VirtualSize} -> {newSize}).");
            c.VirtualSize = newSize;
        }
    }

    public void EnableCbt(string uuid) { lock (_gate) { var c = Content(uuid); c.CbtLogId ??= Guid.NewGuid().ToString("N"); } }
    public void DisableCbt(string uuid) { lock (_gate) Content(uuid).CbtLogId = null; }
    public void DestroyData(string uuid) { lock (_gate) Content(uuid).DataDestroyed = true; }

    public void DeleteVdi(string uuid)
    {
        lock (_gate)
        {
            _vdis.Remove(uuid);
            CollectGarbage();
        }
    }

    /// <summary>Layers from the VDI's top to the root.</summary>
    public List<Layer> Chain(string uuid)
    {
        lock (_gate)
        {
            var chain = new List<Layer>();
            for (string? id = Content(uuid).TopLayerId; id is not null; id = _layers[id].ParentId) chain.Add(_layers[id]);
            return chain;
        }
    }

    /// <summary>
    /// The 64 KiB units changed between snapshot <paramref name="fromUuid"/> and the later VDI
    /// <paramref name="toUuid"/>: the OR of the CBT logs of the layers written after <paramref name="fromUuid"/>'s
    /// snapshot point. Null when the two do not share a CBT log or <paramref name="fromUuid"/> is not earlier
    /// (SM's "Source and target VDI are unrelated").
    /// </summary>
    public HashSet<long>? ChangedUnits(string fromUuid, string toUuid)
    {
        lock (_gate)
        {
            var from = Content(fromUuid); var to = Content(toUuid);
            if (from.CbtLogId is null || from.CbtLogId != to.CbtLogId) return null;
            var fromTop = _layers[from.TopLayerId];
            // The snapshot point of `from` is the frozen layer its own (private) top hangs off.
            string point = fromTop.Frozen || fromTop.ParentId is null ? fromTop.Id : fromTop.ParentId;
            var changed = new HashSet<long>();
            foreach (var layer in Chain(toUuid))
            {
                if (layer.Id == point) return changed;
                foreach (var u in layer.CbtChanged()) changed.Add(u);
            }
            return fromUuid.Equals(toUuid, StringComparison.OrdinalIgnoreCase) ? new HashSet<long>() : null;
        }
    }

    /// <summary>
    /// 64 KiB units allocated in any layer of the symmetric difference of the two chains, as vhd-tool computes a
    /// differencing VHD against a base (export_raw_vdi format=vhd&amp;base=). Content may be unchanged inside them.
    /// </summary>
    public SortedSet<long> UnitsDifferingFrom(string uuid, string baseUuid)
    {
        lock (_gate)
        {
            var a = Chain(uuid); var b = Chain(baseUuid);
            var aIds = a.Select(l => l.Id).ToHashSet(); var bIds = b.Select(l => l.Id).ToHashSet();
            var units = new SortedSet<long>();
            foreach (var l in a.Where(l => !bIds.Contains(l.Id)).Concat(b.Where(l => !aIds.Contains(l.Id))))
                foreach (var u in l.Units()) units.Add(u);
            return units;
        }
    }

    /// <summary>Read/write view of a VDI's virtual content.</summary>
    public VdiDisk Open(string uuid) => new(this, uuid);

    internal void Read(string uuid, long offset, Span<byte> buffer)
    {
        var chain = Chain(uuid);
        int done = 0;
        while (done < buffer.Length)
        {
            long pos = offset + done;
            long unit = pos / Layer.UnitSize;
            int inUnit = (int)(pos % Layer.UnitSize);
            int n = Math.Min(Layer.UnitSize - inUnit, buffer.Length - done);
            var dst = buffer.Slice(done, n);
            bool found = false;
            foreach (var layer in chain) if (layer.TryRead(unit, inUnit, dst)) { found = true; break; }
            if (!found) dst.Clear();
            done += n;
        }
    }

    internal void Write(string uuid, long offset, ReadOnlySpan<byte> data)
    {
        var chain = Chain(uuid);
        var top = chain[0];
        bool cbt;
        lock (_gate) cbt = Content(uuid).CbtLogId is not null;
        byte[]? unitBuffer = null;
        try
        {
            int done = 0;
            while (done < data.Length)
            {
                long pos = offset + done;
                long unit = pos / Layer.UnitSize;
                int inUnit = (int)(pos % Layer.UnitSize);
                int n = Math.Min(Layer.UnitSize - inUnit, data.Length - done);
                var src = data.Slice(done, n);
                if (top.Has(unit) || n == Layer.UnitSize) top.Write(unit, inUnit, src);
                else
                {
                    // Copy-up: the new unit starts as what the chain below shows, like a VHD child's first write.
                    unitBuffer ??= ArrayPool<byte>.Shared.Rent(Layer.UnitSize);
                    var whole = unitBuffer.AsSpan(0, Layer.UnitSize);
                    whole.Clear();
                    for (int i = 1; i < chain.Count; i++) if (chain[i].TryRead(unit, 0, whole)) break;
                    src.CopyTo(whole[inUnit..]);
                    top.Write(unit, 0, whole);
                }
                if (cbt) top.MarkCbt(unit);
                done += n;
            }
        }
        finally
        {
            if (unitBuffer is not null) ArrayPool<byte>.Shared.Return(unitBuffer);
        }
    }

    /// <summary>Units that may hold data: the union over the chain.</summary>
    internal SortedSet<long> AllocatedUnits(string uuid)
    {
        var set = new SortedSet<long>();
        foreach (var layer in Chain(uuid)) foreach (var u in layer.Units()) set.Add(u);
        return set;
    }

    public void Save()
    {
        lock (_gate)
        {
            var state = new StorageState(_layers.Values.Select(l => l.Save()).ToList(), new Dictionary<string, VdiContent>(_vdis));
            var tmp = StatePath + ".tmp";
            File.WriteAllText(tmp, JsonSerializer.Serialize(state));
            File.Move(tmp, StatePath, overwrite: true);
        }
    }

    /// <summary>Loads storage.json when present; returns false for a fresh directory.</summary>
    public bool Load()
    {
        lock (_gate)
        {
            if (!File.Exists(StatePath)) return false;
            var state = JsonSerializer.Deserialize<StorageState>(File.ReadAllText(StatePath))
                ?? throw new InvalidDataException($"{StatePath} is empty; delete the state directory to start afresh.");
            foreach (var l in _layers.Values) l.Dispose();
            _layers.Clear(); _vdis.Clear();
            foreach (var l in state.Layers) _layers[l.Id] = Layer.Load(l, LayerPath(l.Id));
            foreach (var (k, v) in state.Vdis) _vdis[k] = v;
            return true;
        }
    }

    /// <summary>Drops every VDI and layer file (control API reset).</summary>
    public void Clear()
    {
        lock (_gate)
        {
            foreach (var l in _layers.Values) l.DeleteFiles();
            _layers.Clear(); _vdis.Clear();
        }
    }

    private Layer NewLayer(string? parent)
    {
        var id = Guid.NewGuid().ToString("N");
        var layer = new Layer(id, parent, LayerPath(id));
        _layers[id] = layer;
        return layer;
    }

    private string LayerPath(string id) => Path.Combine(_layerDir, id + ".units");

    private void CollectGarbage()
    {
        var live = new HashSet<string>(StringComparer.Ordinal);
        foreach (var c in _vdis.Values)
            for (string? id = c.TopLayerId; id is not null && live.Add(id); id = _layers[id].ParentId) { }
        foreach (var dead in _layers.Keys.Where(k => !live.Contains(k)).ToList())
        {
            _layers[dead].DeleteFiles();
            _layers.Remove(dead);
        }
    }

    public void Dispose()
    {
        lock (_gate) foreach (var l in _layers.Values) l.Dispose();
    }

    private sealed record StorageState(List<LayerState> Layers, Dictionary<string, VdiContent> Vdis);
}

/// <summary>A VDI's content as the shared block-device abstractions; writes act as guest writes (they mark CBT).</summary>
public sealed class VdiDisk : IBlockSource, IBlockTarget
{
    private readonly VdiStorage _storage;
    internal VdiDisk(VdiStorage storage, string uuid)
    {
        _storage = storage;
        Uuid = uuid;
    }

    public string Uuid { get; }
    public long Length => _storage.Content(Uuid).VirtualSize;

    public ValueTask ReadAsync(long offset, Memory<byte> buffer, CancellationToken cancellationToken)
    {
        CheckRange(offset, buffer.Length);
        if (_storage.Content(Uuid).DataDestroyed) throw new IOException($"VDI {Uuid} holds only CBT metadata (data_destroy ran); it has no data to read.");
        _storage.Read(Uuid, offset, buffer.Span);
        return ValueTask.CompletedTask;
    }

    public async IAsyncEnumerable<Extent> GetAllocatedExtentsAsync(long offset, long length, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await Task.CompletedTask;
        long end = Math.Min(offset + length, Length);
        long curStart = -1, curEnd = -1;
        foreach (var unit in _storage.AllocatedUnits(Uuid))
        {
            long s = Math.Max(unit * Layer.UnitSize, offset), e = Math.Min((unit + 1) * Layer.UnitSize, end);
            if (e <= s) continue;
            if (s == curEnd) { curEnd = e; continue; }
            if (curStart >= 0) yield return new Extent(curStart, curEnd - curStart);
            cancellationToken.ThrowIfCancellationRequested();
            curStart = s; curEnd = e;
        }
        if (curStart >= 0) yield return new Extent(curStart, curEnd - curStart);
    }

    public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
    {
        CheckRange(offset, data.Length);
        _storage.Write(Uuid, offset, data.Span);
        return ValueTask.CompletedTask;
    }

    public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken)
    {
        CheckRange(offset, length);
        var zeros = ArrayPool<byte>.Shared.Rent(Layer.UnitSize);
        try
        {
            Array.Clear(zeros, 0, Layer.UnitSize);
            for (long done = 0; done < length;)
            {
                cancellationToken.ThrowIfCancellationRequested();
                int n = (int)Math.Min(Layer.UnitSize - (offset + done) % Layer.UnitSize, length - done);
                _storage.Write(Uuid, offset + done, zeros.AsSpan(0, n));
                done += n;
            }
        }
        finally { ArrayPool<byte>.Shared.Return(zeros); }
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

    private void CheckRange(long offset, long length)
    {
        if (offset < 0 || length < 0 || offset + length > Length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, +{length}) is outside VDI {Uuid} of {Length} bytes.");
    }
}
