namespace VProtect.Core.Xapi.Wire;

/// <summary>Limits shared by both codecs, so hostile input (e.g. an ova.xml) cannot exhaust the stack.</summary>
public static class WireLimits
{
    /// <summary>Deepest allowed nesting of arrays/structs inside one value; deeper input is rejected.</summary>
    public const int MaxNestingDepth = 64;
}
