using VProtect.Simulator.Database;

namespace VProtect.Simulator.Xapi;

/// <summary>
/// Turns a decoded call into a result or an <see cref="XapiError"/>, in xapi's order of checks
/// (gen_server.ml): unknown method, argument count, session, removed, then the implementation.
/// Explicit methods are registered by the *Calls classes; getters, setters and the get_all family are
/// generic over <see cref="Schema"/>. <c>Async.X</c> runs X under a new task and returns the task ref.
/// </summary>
internal sealed class XapiDispatcher
{
    private readonly Dictionary<string, MethodDef> _methods = new(StringComparer.Ordinal);
    private readonly SimulatorCore _core;

    public XapiDispatcher(SimulatorCore core) => _core = core;

    private sealed record MethodDef(string Name, int Required, int Max, bool TakesSession, bool HasAsync, Func<CallContext, ValueTask<object?>> Impl, bool Removed = false)
    {
        /// <summary>When set, the number of parameters this host's version of the call takes (a scenario switch).</summary>
        public Func<int>? MaxNow { get; init; }
    }

    public void Register(string name, int required, int max, Func<CallContext, object?> impl, bool session = true, bool hasAsync = true)
        => _methods[name] = new MethodDef(name, required, max, session, hasAsync, c => ValueTask.FromResult(impl(c)));

    /// <summary>A call whose parameter count depends on the host version the scenario models (VM.snapshot's ignore_vdis).</summary>
    public void Register(string name, int required, Func<int> max, Func<CallContext, object?> impl)
        => _methods[name] = new MethodDef(name, required, int.MaxValue, true, true, c => ValueTask.FromResult(impl(c))) { MaxNow = max };

    public void RegisterAsync(string name, int required, int max, Func<CallContext, ValueTask<object?>> impl, bool session = true, bool hasAsync = true)
        => _methods[name] = new MethodDef(name, required, max, session, hasAsync, impl);

    /// <summary>A method whose lifecycle is Removed: after the session check it answers MESSAGE_REMOVED [].</summary>
    public void RegisterRemoved(string name, int required, int max)
        => _methods[name] = new MethodDef(name, required, max, true, true, _ => throw new XapiError("MESSAGE_REMOVED"), Removed: true);

    public void Override(string name, Func<CallContext, ValueTask<object?>> impl) => _methods[name] = _methods[name] with { Impl = impl, Removed = false };

    public bool IsRegistered(string name) => _methods.ContainsKey(name);

    /// <summary>system.listMethods: the explicit methods plus each class's get_all_records (XO finds its types that way).</summary>
    public object?[] ListMethods()
        => _methods.Keys.Concat(Schema.All.Where(c => c.Name != "session").SelectMany(c => new[] { $"{c.Name}.get_all_records", $"{c.Name}.get_all", $"{c.Name}.get_record", $"{c.Name}.get_by_uuid" }))
            .Distinct().Order(StringComparer.Ordinal).Select(m => (object?)m).ToArray();

    public async Task<object?> InvokeAsync(string method, object?[] args, CallOrigin origin, CancellationToken ct)
    {
        bool isAsync = method.StartsWith("Async.", StringComparison.Ordinal);
        string name = isAsync ? method["Async.".Length..] : method;
        var def = Resolve(name) ?? throw new XapiError("MESSAGE_METHOD_UNKNOWN", method);
        if (isAsync && !def.HasAsync) throw new XapiError("Fault", $"No async mode for this operation (rpc: {method})");
        int received = Math.Max(0, args.Length - (def.TakesSession ? 1 : 0));
        int max = def.MaxNow?.Invoke() ?? def.Max;
        if (received < def.Required || received > max || (def.TakesSession && args.Length == 0))
            throw new XapiError("MESSAGE_PARAMETER_COUNT_MISMATCH", method, def.Required.ToString(), received.ToString());
        string? session = null;
        if (def.TakesSession)
        {
            session = CallContext.ToStr(args[0]);
            _core.Sessions.Validate(session);
        }
        _core.Faults.ThrowIfXapiFault(name);
        var rest = def.TakesSession ? args[1..] : args;
        if (!isAsync) return await def.Impl(new CallContext(name, session, rest, origin, ct)).ConfigureAwait(false);

        var task = _core.Tasks.Create("Async." + name, "", session, origin);
        var context = new CallContext(name, session, rest, origin, CancellationToken.None) { TaskRef = task.Ref };
        _ = Task.Run(async () =>
        {
            try { _core.Tasks.Succeed(task, await def.Impl(context).ConfigureAwait(false)); }
            catch (XapiError e) { _core.Tasks.Fail(task, e.ErrorDescription); }
            catch (Exception e) { _core.Tasks.Fail(task, ["INTERNAL_ERROR", e.Message]); }
        }, CancellationToken.None);
        return task.Ref;
    }

    private MethodDef? Resolve(string name)
    {
        if (_methods.TryGetValue(name, out var def)) return def;
        int dot = name.IndexOf('.');
        if (dot <= 0 || !Schema.TryGet(name[..dot], out var cls)) return null;
        string msg = name[(dot + 1)..];
        var db = _core.Db;
        string c = cls.Name;
        switch (msg)
        {
            case "get_all_records":
                return Generic(name, 0, _ => db.All(c).ToDictionary(o => o.Ref, o => (object?)db.Record(o)));
            case "get_all":
                return Generic(name, 0, _ => db.All(c).Select(o => (object?)o.Ref).ToArray());
            case "get_record":
                return Generic(name, 1, x => db.Record(db.Get(c, x.Str(0))));
            case "get_by_uuid":
                return Generic(name, 1, x => (db.TryGetByUuid(c, x.Str(0)) ?? throw new XapiError("UUID_INVALID", c, x.Str(0))).Ref);
            case "get_by_name_label" when cls.TryGetField("name_label", out _):
                return Generic(name, 1, x => db.All(c).Where(o => o.Str("name_label") == x.Str(0)).Select(o => (object?)o.Ref).ToArray());
        }
        if (msg.StartsWith("get_", StringComparison.Ordinal) && cls.TryGetField(msg[4..], out var gf))
            return Generic(name, 1, x => db.Field(db.Get(c, x.Str(0)), gf.Name));
        if (msg.StartsWith("set_", StringComparison.Ordinal) && cls.TryGetField(msg[4..], out var sf) && sf.Writable)
            return Generic(name, 2, x => { db.Set(db.Get(c, x.Str(0)), sf.Name, CallContext.Coerce(sf, x.Args[1])); return ""; });
        if (msg.StartsWith("add_to_", StringComparison.Ordinal) && cls.TryGetField(msg[7..], out var af) && af.Writable && af.Type == FieldType.Map)
            return Generic(name, 3, x =>
            {
                lock (db.Gate)
                {
                    var o = db.Get(c, x.Str(0));
                    var map = o.Map(af.Name);
                    if (map.ContainsKey(x.Str(1))) throw new XapiError("MAP_DUPLICATE_KEY", c, af.Name, x.Str(0), x.Str(1));
                    map[x.Str(1)] = x.Str(2);
                    db.Touch(o);
                }
                return "";
            });
        if (msg.StartsWith("remove_from_", StringComparison.Ordinal) && cls.TryGetField(msg[12..], out var rf) && rf.Writable && rf.Type == FieldType.Map)
            return Generic(name, 2, x =>
            {
                lock (db.Gate) { var o = db.Get(c, x.Str(0)); o.Map(rf.Name).Remove(x.Str(1)); db.Touch(o); }
                return "";
            });
        if ((msg.StartsWith("add_", StringComparison.Ordinal) || msg.StartsWith("remove_", StringComparison.Ordinal))
            && cls.TryGetField(msg[(msg.IndexOf('_') + 1)..], out var tf) && tf.Writable && tf.Type == FieldType.StringSet)
        {
            bool add = msg.StartsWith("add_", StringComparison.Ordinal);
            return Generic(name, 2, x =>
            {
                lock (db.Gate)
                {
                    var o = db.Get(c, x.Str(0));
                    var set = o.Set(tf.Name).ToList();
                    if (add) { if (!set.Contains(x.Str(1))) set.Add(x.Str(1)); }
                    else set.Remove(x.Str(1));
                    db.Set(o, tf.Name, set.Select(s => (object?)s).ToArray());
                }
                return "";
            });
        }
        return null;
    }

    // Getters and setters have no Async form (wire-protocol.md §Synchronous and Asynchronous).
    private static MethodDef Generic(string name, int args, Func<CallContext, object?> impl)
        => new(name, args, args, true, false, c => ValueTask.FromResult(impl(c)));
}
