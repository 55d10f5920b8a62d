using System.Collections.Concurrent;
using System.Globalization;
using VProtect.Simulator.Database;

namespace VProtect.Simulator.Xapi;

/// <summary>
/// event.from and the older event.register/next (xapi_event.ml; event_types.ml). A token is the DB
/// generation as "%020d,%020d"; "" means "everything now" (each object as an add). event.from blocks until a
/// matching change or the timeout; one event per object (its latest), as xapi coalesces.
/// </summary>
internal sealed class EventManager
{
    private readonly SimulatorCore _core;
    private readonly ConcurrentDictionary<string, Subscription> _subscriptions = new(StringComparer.Ordinal);

    private sealed class Subscription
    {
        public readonly HashSet<string> Classes = new(StringComparer.OrdinalIgnoreCase);
        public long Generation;
    }

    public EventManager(SimulatorCore core) => _core = core;

    public void Register(XapiDispatcher d)
    {
        d.RegisterAsync("event.from", 3, 3, From, hasAsync: false);
        d.Register("event.register", 1, 1, c =>
        {
            var s = _subscriptions.GetOrAdd(c.Session!, _ => new Subscription { Generation = _core.Db.Generation });
            lock (s) foreach (var cls in c.Set(0)) s.Classes.Add(cls);
            return "";
        }, hasAsync: false);
        d.Register("event.unregister", 1, 1, c =>
        {
            if (_subscriptions.TryGetValue(c.Session!, out var s)) lock (s) foreach (var cls in c.Set(0)) s.Classes.Remove(cls);
            return "";
        }, hasAsync: false);
        d.RegisterAsync("event.next", 0, 0, Next, hasAsync: false);
        d.Register("event.get_current_id", 0, 0, _ => _core.Db.Generation.ToString(CultureInfo.InvariantCulture), hasAsync: false);
        d.Register("event.inject", 2, 2, c =>
        {
            var o = _core.Db.TryGet(c.Str(1)) ?? throw XapiError.HandleInvalid(c.Str(0), c.Str(1));
            _core.Db.Touch(o);
            return Token(_core.Db.Generation);
        }, hasAsync: false);
    }

    public void Unregister(string session) => _subscriptions.TryRemove(session, out _);

    private async ValueTask<object?> From(CallContext c)
    {
        var classes = c.Set(0);
        string token = c.Str(1);
        double timeout = c.Double(2);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(Math.Clamp(timeout, 0, 3600));
        bool fromStart = token.Length == 0;
        long since = fromStart ? 0 : ParseToken(token);
        if (!fromStart && since < _core.Db.OldestRetained) throw new XapiError("EVENTS_LOST");
        while (true)
        {
            List<object?> events;
            long now;
            Task changed;
            lock (_core.Db.Gate)
            {
                now = _core.Db.Generation;
                changed = _core.Db.WaitForChangeAsync(now);
                events = fromStart
                    ? _core.Db.Snapshot().Where(o => Matches(classes, o.Class, o.Ref)).OrderBy(o => o.Class)
                        .Select(o => (object?)Event(now, o.Class, o.Ref, "add", o)).ToList()
                    : Collect(classes, since);
            }
            var remaining = deadline - DateTime.UtcNow;
            if (events.Count > 0 || fromStart || remaining <= TimeSpan.Zero)
                return new Dictionary<string, object?>
                {
                    ["events"] = events.ToArray(),
                    ["valid_ref_counts"] = ValidRefCounts(classes),
                    ["token"] = Token(now),
                };
            since = now;
            try { await changed.WaitAsync(remaining, c.CancellationToken).ConfigureAwait(false); }
            catch (TimeoutException) { }
        }
    }

    private async ValueTask<object?> Next(CallContext c)
    {
        if (!_subscriptions.TryGetValue(c.Session!, out var sub)) throw new XapiError("SESSION_NOT_REGISTERED", c.Session!);
        while (true)
        {
            List<object?> events; long now; Task changed; List<string> classes;
            lock (sub) classes = sub.Classes.ToList();
            lock (_core.Db.Gate)
            {
                now = _core.Db.Generation;
                changed = _core.Db.WaitForChangeAsync(now);
                if (sub.Generation < _core.Db.OldestRetained) throw new XapiError("EVENTS_LOST");
                events = Collect(classes, sub.Generation);
            }
            sub.Generation = now;
            if (events.Count > 0) return events.ToArray();
            await changed.WaitAsync(c.CancellationToken).ConfigureAwait(false);
        }
    }

    private List<object?> Collect(List<string> classes, long since)
        => _core.Db.ChangesSince(since).Where(ch => Matches(classes, ch.Class, ch.Ref))
            .Select(ch => (object?)Event(ch.Generation, ch.Class, ch.Ref, ch.Operation, ch.Object)).ToList();

    private Dictionary<string, object?> Event(long id, string cls, string reference, string op, XapiObject? obj)
    {
        var e = new Dictionary<string, object?>
        {
            ["id"] = id,
            ["timestamp"] = (DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0).ToString("F6", CultureInfo.InvariantCulture),
            ["class"] = cls.ToLowerInvariant(),
            ["operation"] = op,
            ["ref"] = reference,
        };
        if (obj is not null) e["snapshot"] = _core.Db.Record(obj);
        return e;
    }

    private Dictionary<string, object?> ValidRefCounts(List<string> classes)
    {
        var counts = new Dictionary<string, object?>();
        foreach (var spec in Schema.All)
        {
            string lower = spec.Name.ToLowerInvariant();
            if (classes.Any(c => c == "*" || c.Equals(lower, StringComparison.OrdinalIgnoreCase)) && lower != "session")
                counts[lower] = (long)_core.Db.All(spec.Name).Count;
        }
        return counts;
    }

    private static bool Matches(List<string> classes, string cls, string reference)
    {
        foreach (var c in classes)
        {
            if (c == "*") { if (cls != "session") return true; continue; }
            int slash = c.IndexOf('/');
            if (slash < 0 ? c.Equals(cls, StringComparison.OrdinalIgnoreCase)
                          : c[..slash].Equals(cls, StringComparison.OrdinalIgnoreCase) && c[(slash + 1)..] == reference) return true;
        }
        return false;
    }

    private static string Token(long generation) => $"{generation:D20},{0:D20}";

    private static long ParseToken(string token)
    {
        var first = token.Split(',')[0];
        return long.TryParse(first, NumberStyles.Integer, CultureInfo.InvariantCulture, out var g) && g >= 0
            ? g : throw new XapiError("INVALID_VALUE", "token", token);
    }
}
