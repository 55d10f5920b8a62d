using System.Management.Automation;
using VProtect.Core.Xapi;
using VProtect.PowerShell.Infrastructure;

namespace VProtect.PowerShell.Cmdlets;

/// <summary>Get-XenPoolVM: the pool's VMs (never dom0) with their disks and VIFs.</summary>
[Cmdlet(VerbsCommon.Get, "XenPoolVM", DefaultParameterSetName = ByNameSet)]
[OutputType(typeof(XenPoolVM))]
public sealed class GetXenPoolVMCommand : VProtectCmdlet
{
    private const string ByNameSet = "ByName";
    private const string ByUuidSet = "ByUuid";

    [Parameter(ParameterSetName = ByNameSet, Position = 0)]
    [SupportsWildcards]
    [ValidateNotNullOrEmpty]
    public string[]? Name { get; set; }

    [Parameter(ParameterSetName = ByUuidSet, Mandatory = true, ValueFromPipelineByPropertyName = true)]
    [ValidateNotNullOrEmpty]
    public string[] Uuid { get; set; } = Array.Empty<string>();

    [Parameter]
    public SwitchParameter IncludeTemplates { get; set; }

    [Parameter]
    public SwitchParameter IncludeSnapshots { get; set; }

    [Parameter]
    public object? Session { get; set; }

    // Read once per invocation: piped uuids reuse it.
    private XenPoolSession? _session;
    private IReadOnlyList<XenPoolVM>? _vms;

    protected override void BeginProcessing()
    {
        _session = SessionStore.Resolve(this, Session);
    }

    protected override void ProcessRecord()
    {
        var session = _session!;
        _vms ??= RunEngine((sink, ct) => PoolInventory.ReadVmsAsync(session, sink, ct), session);
        var visible = _vms.Where(IsWanted).ToList();
        if (ParameterSetName == ByUuidSet)
        {
            foreach (var uuid in Uuid)
            {
                var vm = _vms.FirstOrDefault(v => string.Equals(v.Uuid, uuid, StringComparison.OrdinalIgnoreCase));
                if (vm is null) WriteNotFound($"No VM with uuid {uuid} in pool '{session.PoolName}'.", uuid);
                else WriteObject(vm);
            }
            return;
        }
        if (Name is null)
        {
            WriteObject(visible, enumerateCollection: true);
            return;
        }
        var written = new HashSet<string>();
        foreach (var name in Name)
        {
            var pattern = new WildcardPattern(name, WildcardOptions.IgnoreCase);
            var matches = visible.Where(v => pattern.IsMatch(v.Name)).ToList();
            // Like Get-Process: a literal name that matches nothing is an error, an unmatched wildcard is not.
            if (matches.Count == 0 && !WildcardPattern.ContainsWildcardCharacters(name))
                WriteNotFound($"No VM named '{name}' in pool '{session.PoolName}'.", name);
            foreach (var vm in matches.Where(v => written.Add(v.Uuid)))
                WriteObject(vm);
        }
    }

    private bool IsWanted(XenPoolVM vm) =>
        vm.IsSnapshot ? IncludeSnapshots.IsPresent
        : !vm.IsTemplate || IncludeTemplates.IsPresent;

    private void WriteNotFound(string message, string target) =>
        WriteError(ErrorMap.Create(new ItemNotFoundException(message),
            new ErrorMapping(ErrorIds.XenObjectNotFound, ErrorCategory.ObjectNotFound, "Run Get-XenPoolVM without -Name or -Uuid to list the VMs."),
            target));
}
