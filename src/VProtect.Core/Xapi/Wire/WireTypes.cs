namespace VProtect.Core.Xapi.Wire;

/// <summary>A decoded XML-RPC method call: the method name and its arguments as plain .NET values.</summary>
public sealed record XapiCall(string Method, object?[] Args);

/// <summary>A decoded JSON-RPC request, with the protocol version chosen by xapi's rules.</summary>
public sealed record JsonRpcRequest(string Method, object?[] Args, object Id, JsonRpcVersion Version);

/// <summary>JSON-RPC flavour. V1 has no <c>jsonrpc</c> member; V2 has <c>"jsonrpc":"2.0"</c>.</summary>
public enum JsonRpcVersion { V1, V2 }

/// <summary>
/// The outcome of a XAPI call. On success <see cref="Value"/> holds the result; on failure
/// <see cref="ErrorDescription"/> holds the error code followed by its parameters.
/// </summary>
public sealed record XapiResult(bool Success, object? Value, IReadOnlyList<string>? ErrorDescription);

/// <summary>
/// A body that is not valid XML-RPC / JSON-RPC as xapi speaks it (malformed, hostile or unsupported).
/// A server answers it with HTTP 500; a client should treat it as a protocol mismatch with the peer.
/// </summary>
public sealed class XapiWireException : Exception
{
    public XapiWireException(string message) : base(message) { }
    public XapiWireException(string message, Exception? innerException) : base(message, innerException) { }
}
