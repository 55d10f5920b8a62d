using VProtect.Simulator.Database;

namespace VProtect.Simulator.Xapi;

/// <summary>
/// Task objects (datamodel.ml module Task; taskHelper.ml): pending, then success with result = the
/// XML-RPC &lt;value&gt; fragment of the return value, or failure with error_info; cancel gives
/// cancelled + TASK_CANCELLED [task]. Transfer handlers use <see cref="Create"/>/<see cref="Succeed"/>/<see cref="Fail"/> too.
/// </summary>
internal sealed class TaskManager
{
    private readonly SimulatorCore _core;
    public TaskManager(SimulatorCore core) => _core = core;

    public void Register(XapiDispatcher d)
    {
        d.Register("task.create", 2, 2, c => Create(c.Str(0), c.Str(1), c.Session, c.Origin).Ref, hasAsync: false);
        d.Register("task.cancel", 1, 1, c => { Cancel(c.Str(0)); return ""; });
        d.Register("task.destroy", 1, 1, c => { _core.Db.Delete(_core.Db.Get("task", c.Str(0))); return ""; }, hasAsync: false);
        d.Register("task.set_status", 2, 2, c => { Set(c.Str(0), "status", c.Str(1)); return ""; }, hasAsync: false);
        d.Register("task.set_progress", 2, 2, c => { Set(c.Str(0), "progress", c.Double(1)); return ""; }, hasAsync: false);
        d.Register("task.set_result", 2, 2, c => { Set(c.Str(0), "result", c.Str(1)); return ""; }, hasAsync: false);
        d.Register("task.set_error_info", 2, 2, c => { Set(c.Str(0), "error_info", c.Set(1).Select(s => (object?)s).ToArray()); return ""; }, hasAsync: false);
    }

    public XapiObject Create(string label, string description, string? session, CallOrigin origin)
        => _core.Db.Create("task", new Dictionary<string, object?>
        {
            ["name_label"] = label,
            ["name_description"] = description,
            ["created"] = DateTime.UtcNow,
            ["status"] = "pending",
            ["progress"] = 0.0,
            ["resident_on"] = _core.HostRefFor(origin),
            ["allowed_operations"] = new object?[] { "cancel", "destroy" },
            ["other_config"] = new Dictionary<string, object?> { ["session"] = session ?? "" },
        });

    public void Succeed(XapiObject task, object? result)
    {
        lock (_core.Db.Gate)
        {
            if (task.Str("status") is not ("pending" or "cancelling")) return; // cancelled first: keep that outcome
            if (task.Str("status") == "cancelling") { Cancelled(task); return; }
            task.Fields["result"] = _core.EncodeResultValue(result);
            Finish(task, "success");
        }
    }

    public void Fail(XapiObject task, string[] errorInfo)
    {
        lock (_core.Db.Gate)
        {
            if (task.Str("status") is not ("pending" or "cancelling")) return;
            task.Fields["error_info"] = errorInfo.Select(s => (object?)s).ToArray();
            Finish(task, "failure");
        }
    }

    public void SetProgress(string? taskRef, double progress)
    {
        if (taskRef is null || _core.Db.TryGet(taskRef) is not { Class: "task" } t) return;
        _core.Db.Set(t, "progress", Math.Clamp(progress, 0, 1));
    }

    /// <summary>True once a client asked to cancel; long-running work polls this.</summary>
    public bool IsCancelling(string? taskRef)
        => taskRef is not null && _core.Db.TryGet(taskRef) is { Class: "task" } t && t.Str("status") is "cancelling" or "cancelled";

    private void Cancel(string taskRef)
    {
        lock (_core.Db.Gate)
        {
            var t = _core.Db.Get("task", taskRef);
            if (t.Str("status") != "pending") return;
            Cancelled(t);
        }
    }

    private void Cancelled(XapiObject t)
    {
        t.Fields["error_info"] = new object?[] { "TASK_CANCELLED", t.Ref };
        Finish(t, "cancelled");
    }

    private void Finish(XapiObject t, string status)
    {
        t.Fields["status"] = status;
        t.Fields["progress"] = 1.0;
        t.Fields["finished"] = DateTime.UtcNow;
        t.Fields["allowed_operations"] = new object?[] { "destroy" };
        _core.Db.Touch(t);
    }

    private void Set(string taskRef, string field, object? value) => _core.Db.Set(_core.Db.Get("task", taskRef), field, value);
}
