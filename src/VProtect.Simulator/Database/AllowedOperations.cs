namespace VProtect.Simulator.Database;

/// <summary>
/// allowed_operations as xapi derives them from power state and flags (xapi_vm_lifecycle.ml l.32-120,
/// xapi_vdi.ml l.150-470), recomputed on every read. A coarse model: the calls the simulator implements plus
/// the common ones clients look for (export, copy, migrate).
/// </summary>
internal static class AllowedOperations
{
    public static object?[] Vm(Dictionary<string, object?> vm)
    {
        if (vm["is_control_domain"] is true) return [];
        bool snapshot = vm["is_a_snapshot"] is true, template = vm["is_a_template"] is true;
        string state = vm["power_state"] as string ?? "Halted";
        string[] ops;
        if (snapshot) ops = state == "Suspended" ? ["clone", "copy", "destroy", "export", "revert"] : ["clone", "copy", "destroy", "export", "revert", "create_template"];
        else if (template) ops = ["clone", "copy", "destroy", "export", "provision"];
        else ops = state switch
        {
            "Running" => ["snapshot", "checkpoint", "clean_shutdown", "hard_shutdown", "clean_reboot", "hard_reboot", "suspend", "pause", "pool_migrate", "migrate_send"],
            "Paused" => ["snapshot", "checkpoint", "unpause", "hard_shutdown", "hard_reboot"],
            "Suspended" => ["snapshot", "checkpoint", "resume", "resume_on", "hard_shutdown", "destroy", "export"],
            _ => ["start", "start_on", "clone", "copy", "snapshot", "destroy", "export", "provision", "make_into_template", "changing_memory_limits", "changing_VCPUs", "migrate_send"],
        };
        return ops.Select(o => (object?)o).ToArray();
    }

    public static object?[] Vdi(Dictionary<string, object?> vdi, bool attached)
    {
        string[] ops;
        if (vdi["type"] as string == "cbt_metadata") ops = ["destroy", "forget", "list_changed_blocks", "data_destroy", "update"];
        else
        {
            var list = new List<string> { "snapshot", "clone", "copy", "forget", "update", "enable_cbt", "disable_cbt" };
            if (!attached) list.AddRange(["destroy", "resize", "list_changed_blocks"]);
            if (vdi["is_a_snapshot"] is true)
            {
                list.Remove("enable_cbt"); list.Remove("disable_cbt");
                if (vdi["cbt_enabled"] is true) list.Add("data_destroy");
            }
            ops = [.. list];
        }
        return ops.Select(o => (object?)o).ToArray();
    }
}
