using Microsoft.Win32.SafeHandles;

namespace VProtect.Simulator.Storage;

/// <summary>
/// One node of a VDI's layer tree, like one VHD in a XenServer chain. It stores only the 64 KiB units
/// written while it was on top, packed in a slot file (unit -> slot index), so a 100 GiB disk with nothing
/// written costs nothing on any file system. Reads of units it lacks fall through to its parent.
/// <see cref="CbtChanged"/> holds units written while the writing VDI had CBT on: the CBT log for this span of time.
/// </summary>
internal sealed class Layer : IDisposable
{
    public const int UnitSize = 64 * 1024;
    private readonly Dictionary<long, long> _slots = new();
    private readonly HashSet<long> _cbtChanged = new();
    private readonly object _gate = new();
    private SafeFileHandle? _file;
    private long _nextSlot;

    public Layer(string id, string? parentId, string dataPath)
    {
        Id = id;
        ParentId = parentId;
        DataPath = dataPath;
    }

    public string Id { get; }
    public string? ParentId { get; }
    public string DataPath { get; }
    /// <summary>Frozen layers belong to a snapshot point and are never written again.</summary>
    public bool Frozen { get; set; }

    public int AllocatedUnits { get { lock (_gate) return _slots.Count; } }

    public bool Has(long unit) { lock (_gate) return _slots.ContainsKey(unit); }

    public long[] Units() { lock (_gate) return _slots.Keys.Order().ToArray(); }

    public long[] CbtChanged() { lock (_gate) return _cbtChanged.Order().ToArray(); }

    public void MarkCbt(long unit) { lock (_gate) _cbtChanged.Add(unit); }

    /// <summary>Reads part of a unit this layer holds; false when it does not hold it.</summary>
    public bool TryRead(long unit, int offsetInUnit, Span<byte> destination)
    {
        long slot;
        lock (_gate) if (!_slots.TryGetValue(unit, out slot)) return false;
        int n = RandomAccess.Read(Handle(), destination, slot * UnitSize + offsetInUnit);
        if (n < destination.Length) destination[n..].Clear(); // the slot file may end early after a partial write
        return true;
    }

    /// <summary>Writes into a unit; a unit not yet held must be written whole (the caller copies it up first).</summary>
    public void Write(long unit, int offsetInUnit, ReadOnlySpan<byte> data)
    {
        if (Frozen) throw new InvalidOperationException($"Layer {Id} is frozen (a snapshot point); writes go to the VDI's top layer.");
        long slot;
        lock (_gate)
        {
            if (!_slots.TryGetValue(unit, out slot))
            {
                if (offsetInUnit != 0 || data.Length != UnitSize) throw new InvalidOperationException("A new unit must be written whole.");
                slot = _nextSlot++;
                _slots[unit] = slot;
            }
        }
        RandomAccess.Write(Handle(), data, slot * UnitSize + offsetInUnit);
    }

    /// <summary>Forgets a unit (zeroing a unit this layer holds); its slot is simply left unused.</summary>
    public void Remove(long unit) { lock (_gate) _slots.Remove(unit); }

    public LayerState Save() { lock (_gate) return new LayerState(Id, ParentId, Frozen, _nextSlot, _slots.SelectMany(kv => new[] { kv.Key, kv.Value }).ToArray(), _cbtChanged.Order().ToArray()); }

    public static Layer Load(LayerState s, string dataPath)
    {
        var l = new Layer(s.Id, s.ParentId, dataPath) { Frozen = s.Frozen, _nextSlot = s.NextSlot };
        for (int i = 0; i + 1 < s.Slots.Length; i += 2) l._slots[s.Slots[i]] = s.Slots[i + 1];
        foreach (var u in s.CbtChanged) l._cbtChanged.Add(u);
        return l;
    }

    private SafeFileHandle Handle()
    {
        var h = _file;
        if (h is not null) return h;
        lock (_gate)
        {
            return _file ??= File.OpenHandle(DataPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.ReadWrite, FileOptions.RandomAccess);
        }
    }

    public void Dispose()
    {
        lock (_gate) { _file?.Dispose(); _file = null; }
    }

    public void DeleteFiles()
    {
        Dispose();
        try { File.Delete(DataPath); } catch (IOException) { }
    }
}

/// <summary>Persisted form of a layer (storage.json). Slots is a flat [unit, slot, unit, slot...] array.</summary>
internal sealed record LayerState(string Id, string? ParentId, bool Frozen, long NextSlot, long[] Slots, long[] CbtChanged);
