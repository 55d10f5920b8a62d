namespace VProtect.Core.Nbd;

/// <summary>The server answered a request or an option with an error. The connection stays usable.</summary>
public class NbdException : Exception
{
    public NbdException(string message, int errno = 0, Exception? inner = null) : base(message, inner) => Errno = errno;

    /// <summary>The NBD error number (<see cref="NbdErrno"/>), 0 when the failure is not a server errno.</summary>
    public int Errno { get; }
}

/// <summary>
/// The peer broke the protocol (bad magic, unknown cookie, a length or chunk outside the request, an oversized
/// reply). The connection is closed; retrying against the same server will usually fail the same way.
/// </summary>
public sealed class NbdProtocolException : NbdException
{
    public NbdProtocolException(string message, Exception? inner = null)
        : base($"NBD protocol violation: {message}. The connection was closed; check that the peer is an NBD server (right host and port) and report the server's version if it is.", 0, inner) { }
}

/// <summary>The connection dropped or timed out while requests were in flight; unfinished requests may be retried.</summary>
public sealed class NbdConnectionLostException : NbdException
{
    public NbdConnectionLostException(string message, Exception? inner = null) : base(message, 0, inner) { }
}

/// <summary>Option haggling failed (export unknown, TLS required or refused, certificate not trusted).</summary>
public sealed class NbdNegotiationException : NbdException
{
    public NbdNegotiationException(string message, NbdOptionReply? reply = null, Exception? inner = null) : base(message, 0, inner) => Reply = reply;
    public NbdOptionReply? Reply { get; }
}
