namespace VProtect.Simulator.Xapi;

/// <summary>
/// An XAPI failure as xapi puts it on the wire: an error code followed by string parameters
/// (ErrorDescription). Thrown anywhere in the simulator's call handling and turned into a Failure response.
/// </summary>
public sealed class XapiError : Exception
{
    public XapiError(string code, params string[] parameters)
        : base(parameters.Length == 0 ? code : $"{code} [{string.Join(", ", parameters)}]")
    {
        Code = code;
        Parameters = parameters;
    }

    public string Code { get; }
    public IReadOnlyList<string> Parameters { get; }

    /// <summary>Code then parameters, the wire's ErrorDescription.</summary>
    public string[] ErrorDescription => [Code, .. Parameters];

    public static XapiError HandleInvalid(string cls, string reference) => new("HANDLE_INVALID", cls, reference);
}
