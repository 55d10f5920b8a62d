using VProtect.Simulator.Xapi;

namespace VProtect.Simulator.Database;

/// <summary>
/// The simulator's object store: XAPI objects by ref, with a generation counter per change so
/// event.from can answer "what changed since token T" and block until something does.
/// One lock (<see cref="Gate"/>) guards everything; compound operations take it around their whole body.
/// </summary>
internal sealed class XapiDatabase
{
    private const int MaxRetainedChanges = 200_000;
    private readonly Dictionary<string, XapiObject> _byRef = new(StringComparer.Ordinal);
    private readonly Dictionary<string, XapiObject> _byUuid = new(StringComparer.OrdinalIgnoreCase);
    private readonly Dictionary<string, long> _createdAt = new(StringComparer.Ordinal);
    private readonly Dictionary<string, (long Generation, string Class)> _deletedAt = new(StringComparer.Ordinal);
    private readonly List<(long Generation, string Ref)> _changes = new();
    private long _generation;
    private long _oldestRetained;
    private long _reverseGeneration = -1;
    private Dictionary<string, List<XapiObject>> _referrers = new(StringComparer.Ordinal);
    private TaskCompletionSource _changed = NewSignal();

    public object Gate { get; } = new();

    public long Generation { get { lock (Gate) return _generation; } }

    /// <summary>Generation below which change history was dropped; tokens older than it get EVENTS_LOST.</summary>
    public long OldestRetained { get { lock (Gate) return _oldestRetained; } }

    public static string NewRef() => "OpaqueRef:" + Guid.NewGuid().ToString();

    public XapiObject Create(string cls, IReadOnlyDictionary<string, object?> fields, string? reference = null)
    {
        var spec = Schema.Get(cls);
        var row = new Dictionary<string, object?>(StringComparer.Ordinal);
        foreach (var f in spec.Fields)
        {
            if (f.Inverse is not null) continue;
            row[f.Name] = fields.TryGetValue(f.Name, out var v) ? Copy(v) : f.NewDefault();
        }
        if (row["uuid"] is not string u || u.Length == 0) row["uuid"] = Guid.NewGuid().ToString();
        var obj = new XapiObject(cls, reference ?? NewRef(), row);
        lock (Gate)
        {
            _byRef.Add(obj.Ref, obj);
            _byUuid[obj.Uuid] = obj;
            long g = Bump(obj.Ref);
            _createdAt[obj.Ref] = g;
            TouchReferenced(obj);
            Signal();
        }
        return obj;
    }

    public XapiObject Get(string cls, string reference)
    {
        lock (Gate)
        {
            if (_byRef.TryGetValue(reference, out var o) && o.Class == cls) return o;
        }
        throw XapiError.HandleInvalid(cls, reference);
    }

    public XapiObject? TryGet(string reference)
    {
        lock (Gate) return _byRef.TryGetValue(reference, out var o) ? o : null;
    }

    public XapiObject? TryGetByUuid(string cls, string uuid)
    {
        lock (Gate) return _byUuid.TryGetValue(uuid, out var o) && o.Class == cls ? o : null;
    }

    public List<XapiObject> All(string cls)
    {
        lock (Gate) return _byRef.Values.Where(o => o.Class == cls).ToList();
    }

    public List<XapiObject> Where(string cls, string refField, string target)
    {
        lock (Gate) return _byRef.Values.Where(o => o.Class == cls && o.Fields.TryGetValue(refField, out var v) && v is string s && s == target).ToList();
    }

    public void Set(XapiObject obj, string field, object? value)
    {
        lock (Gate)
        {
            if (Schema.Get(obj.Class).TryGetField(field, out var spec) && spec.Type == FieldType.Ref
                && obj.Fields.TryGetValue(field, out var old) && old is string oldRef) Bump(oldRef);
            obj.Fields[field] = Copy(value);
            if (value is string newRef && newRef.StartsWith("OpaqueRef:", StringComparison.Ordinal)) Bump(newRef);
            Bump(obj.Ref);
            Signal();
        }
    }

    /// <summary>Records that <paramref name="obj"/> changed after an in-place edit (e.g. of a map).</summary>
    public void Touch(XapiObject obj)
    {
        lock (Gate) { Bump(obj.Ref); Signal(); }
    }

    public void Delete(XapiObject obj)
    {
        lock (Gate)
        {
            if (!_byRef.Remove(obj.Ref)) return;
            _byUuid.Remove(obj.Uuid);
            TouchReferenced(obj);
            long g = Bump(obj.Ref);
            _createdAt.Remove(obj.Ref);
            _deletedAt[obj.Ref] = (g, obj.Class);
            Signal();
        }
    }

    /// <summary>A deep copy of the record with the one-to-many sets filled in, as get_record returns it.</summary>
    public Dictionary<string, object?> Record(XapiObject obj)
    {
        lock (Gate)
        {
            var spec = Schema.Get(obj.Class);
            var rec = new Dictionary<string, object?>(StringComparer.Ordinal);
            foreach (var f in spec.Fields)
            {
                if (f.Inverse is { } inv)
                    rec[f.Name] = Referrers(obj.Ref).Where(o => o.Class == inv.Class && o.Fields.TryGetValue(inv.Field, out var v) && v is string s && s == obj.Ref)
                        .Select(o => (object?)o.Ref).ToArray();
                else rec[f.Name] = Copy(obj.Fields.TryGetValue(f.Name, out var v) ? v : f.NewDefault());
            }
            if (obj.Class == "VM") rec["allowed_operations"] = AllowedOperations.Vm(rec);
            else if (obj.Class == "VDI")
                rec["allowed_operations"] = AllowedOperations.Vdi(rec, Referrers(obj.Ref).Any(o => o.Class == "VBD" && o.Bool("currently_attached")
                    && o.Str("VDI") == obj.Ref && !(_byRef.TryGetValue(o.Str("VM"), out var vm) && vm.Bool("is_a_snapshot"))));
            return rec;
        }
    }

    /// <summary>Objects with a ref field pointing at <paramref name="target"/>; the index is rebuilt once per generation.</summary>
    private List<XapiObject> Referrers(string target)
    {
        if (_reverseGeneration != _generation)
        {
            var index = new Dictionary<string, List<XapiObject>>(StringComparer.Ordinal);
            foreach (var o in _byRef.Values)
                foreach (var v in o.Fields.Values)
                    if (v is string s && s.StartsWith("OpaqueRef:", StringComparison.Ordinal) && s != o.Ref)
                    {
                        if (!index.TryGetValue(s, out var list)) index[s] = list = new List<XapiObject>();
                        if (list.Count == 0 || !ReferenceEquals(list[^1], o)) list.Add(o);
                    }
            _referrers = index;
            _reverseGeneration = _generation;
        }
        return _referrers.TryGetValue(target, out var found) ? found : [];
    }

    public object? Field(XapiObject obj, string field)
    {
        var spec = Schema.Get(obj.Class);
        if (!spec.TryGetField(field, out var f)) throw new InvalidOperationException($"{obj.Class} has no field {field}");
        if (f.Inverse is not null || field == "allowed_operations") return Record(obj)[field];
        lock (Gate) return Copy(obj.Fields.TryGetValue(field, out var v) ? v : f.NewDefault());
    }

    /// <summary>Every object, for persistence.</summary>
    public List<XapiObject> Snapshot()
    {
        lock (Gate) return _byRef.Values.ToList();
    }

    /// <summary>Drops everything (reset / reload) without keeping history: old tokens become EVENTS_LOST.</summary>
    public void Clear()
    {
        lock (Gate)
        {
            _byRef.Clear(); _byUuid.Clear(); _createdAt.Clear(); _deletedAt.Clear(); _changes.Clear();
            _generation++;
            _oldestRetained = _generation;
            Signal();
        }
    }

    public readonly record struct Change(long Generation, string Class, string Ref, string Operation, XapiObject? Object);

    /// <summary>One change per object (the latest) since <paramref name="afterGeneration"/>, oldest first.</summary>
    public List<Change> ChangesSince(long afterGeneration)
    {
        lock (Gate)
        {
            var latest = new Dictionary<string, long>(StringComparer.Ordinal);
            for (int i = _changes.Count - 1; i >= 0 && _changes[i].Generation > afterGeneration; i--)
                latest.TryAdd(_changes[i].Ref, _changes[i].Generation);
            var result = new List<Change>(latest.Count);
            foreach (var (r, g) in latest.OrderBy(kv => kv.Value))
            {
                if (_byRef.TryGetValue(r, out var o))
                    result.Add(new Change(g, o.Class, r, _createdAt.TryGetValue(r, out var c) && c > afterGeneration ? "add" : "mod", o));
                else if (_deletedAt.TryGetValue(r, out var d))
                    result.Add(new Change(g, d.Class, r, "del", null));
            }
            return result;
        }
    }

    /// <summary>Completes when the generation moves past <paramref name="generation"/> (or is already past it).</summary>
    public Task WaitForChangeAsync(long generation)
    {
        lock (Gate) return _generation > generation ? Task.CompletedTask : _changed.Task;
    }

    private long Bump(string reference)
    {
        long g = ++_generation;
        _changes.Add((g, reference));
        if (_changes.Count > MaxRetainedChanges)
        {
            int drop = _changes.Count / 2;
            _oldestRetained = _changes[drop - 1].Generation;
            _changes.RemoveRange(0, drop);
            foreach (var k in _deletedAt.Where(kv => kv.Value.Generation <= _oldestRetained).Select(kv => kv.Key).ToList()) _deletedAt.Remove(k);
        }
        return g;
    }

    private void TouchReferenced(XapiObject obj)
    {
        var spec = Schema.Get(obj.Class);
        foreach (var f in spec.Fields)
            if (f.Type == FieldType.Ref && obj.Fields.TryGetValue(f.Name, out var v) && v is string r && r != Schema.NullRef && _byRef.ContainsKey(r))
                Bump(r);
    }

    private void Signal()
    {
        var old = _changed;
        _changed = NewSignal();
        old.TrySetResult();
    }

    private static TaskCompletionSource NewSignal() => new(TaskCreationOptions.RunContinuationsAsynchronously);

    /// <summary>Deep copy so callers never alias the stored maps and sets.</summary>
    public static object? Copy(object? value) => value switch
    {
        Dictionary<string, object?> m => m.ToDictionary(kv => kv.Key, kv => Copy(kv.Value), StringComparer.Ordinal),
        object?[] a => a.Select(Copy).ToArray(),
        _ => value,
    };
}
