using System.Text.Json;
using System.Text.Json.Nodes;
using VProtect.Simulator.Scenario;
using VProtect.Simulator.Xapi;

namespace VProtect.Simulator.Database;

/// <summary>
/// db.json in the state directory: every persistent object (not sessions or tasks, which xapi does not keep
/// across restarts either) plus the scenario switches. Values are typed back through <see cref="Schema"/> on load.
/// </summary>
internal static class DbPersistence
{
    private static readonly HashSet<string> Transient = ["session", "task"];

    public static void Save(XapiDatabase db, ScenarioSettings settings, string path)
    {
        var objects = new JsonArray();
        foreach (var o in db.Snapshot().Where(o => !Transient.Contains(o.Class)).OrderBy(o => o.Class, StringComparer.Ordinal))
        {
            var fields = new JsonObject();
            foreach (var (k, v) in o.Fields) fields[k] = ToNode(v);
            objects.Add(new JsonObject { ["class"] = o.Class, ["ref"] = o.Ref, ["fields"] = fields });
        }
        var root = new JsonObject
        {
            ["version"] = 1,
            ["settings"] = JsonSerializer.SerializeToNode(settings),
            ["objects"] = objects,
        };
        var tmp = path + ".tmp";
        File.WriteAllText(tmp, root.ToJsonString());
        File.Move(tmp, path, overwrite: true);
    }

    public static ScenarioSettings Load(XapiDatabase db, string path)
    {
        var root = JsonNode.Parse(File.ReadAllText(path))?.AsObject()
            ?? throw new InvalidDataException($"{path} is empty; delete the state directory to start afresh.");
        db.Clear();
        foreach (var node in root["objects"]!.AsArray())
        {
            var cls = (string)node!["class"]!;
            if (!Schema.TryGet(cls, out var spec)) continue;
            var fields = new Dictionary<string, object?>(StringComparer.Ordinal);
            foreach (var (k, v) in node["fields"]!.AsObject())
                if (spec.TryGetField(k, out var f) && f.Inverse is null) fields[k] = CallContext.Coerce(f, FromNode(v));
            db.Create(cls, fields, (string)node["ref"]!);
        }
        return root["settings"]?.Deserialize<ScenarioSettings>() ?? new ScenarioSettings();
    }

    private static JsonNode? ToNode(object? v) => v switch
    {
        null => null,
        string s => JsonValue.Create(s),
        long l => JsonValue.Create(l),
        bool b => JsonValue.Create(b),
        double d => JsonValue.Create(d),
        DateTime t => JsonValue.Create(VProtect.Core.Xapi.Wire.XapiDateTime.Format(t)),
        object?[] a => new JsonArray(a.Select(ToNode).ToArray()),
        Dictionary<string, object?> m => new JsonObject(m.Select(kv => KeyValuePair.Create(kv.Key, ToNode(kv.Value)))),
        _ => JsonValue.Create(v.ToString()),
    };

    private static object? FromNode(JsonNode? n) => n switch
    {
        null => null,
        JsonArray a => a.Select(FromNode).ToArray(),
        JsonObject o => o.ToDictionary(kv => kv.Key, kv => FromNode(kv.Value), StringComparer.Ordinal),
        JsonValue v when v.TryGetValue<bool>(out var b) => b,
        JsonValue v when v.TryGetValue<long>(out var l) => l,
        JsonValue v when v.TryGetValue<double>(out var d) => d,
        JsonValue v => v.ToString(),
    };
}
