using VProtect.Simulator.Xapi;

namespace VProtect.Simulator.Faults;

/// <summary>Which data path a transfer fault applies to.</summary>
public enum TransferChannel { Http, Nbd }

/// <summary>Make XAPI method <paramref name="Method"/> fail with <paramref name="Code"/> [<paramref name="Parameters"/>] for the next <paramref name="Count"/> calls.</summary>
public sealed record XapiMethodFault(string Method, string Code, string[] Parameters, int Count);

/// <summary>Drop the next <paramref name="Count"/> transfers on <paramref name="Channel"/> after <paramref name="AfterBytes"/> bytes.</summary>
public sealed record TransferDropFault(TransferChannel Channel, long AfterBytes, int Count);

/// <summary>Fail the next <paramref name="Count"/> reads on <paramref name="Channel"/> whose range covers byte <paramref name="Offset"/> (an I/O error, never zeros).</summary>
public sealed record ReadErrorFault(TransferChannel Channel, long Offset, int Count);

/// <summary>
/// Faults injected through the control API (POST /sim/faults). The XAPI dispatcher consumes method faults;
/// the data plane (HTTP transfer handlers, NBD server) asks <see cref="TakeDrop"/> per transfer and
/// <see cref="LatencyMs"/> per chunk or request.
/// </summary>
public sealed class FaultRegistry
{
    private readonly object _gate = new();
    private readonly List<XapiMethodFault> _methods = new();
    private readonly List<TransferDropFault> _drops = new();
    private readonly Dictionary<TransferChannel, int> _latency = new();
    private readonly List<ReadErrorFault> _readErrors = new();

    public void AddMethodFault(XapiMethodFault fault) { lock (_gate) _methods.Add(fault); }
    public void AddDrop(TransferDropFault fault) { lock (_gate) _drops.Add(fault); }
    public void AddReadError(ReadErrorFault fault) { lock (_gate) _readErrors.Add(fault); }
    public void SetLatency(TransferChannel channel, int milliseconds) { lock (_gate) _latency[channel] = Math.Max(0, milliseconds); }

    public void Clear()
    {
        lock (_gate) { _methods.Clear(); _drops.Clear(); _latency.Clear(); _readErrors.Clear(); }
    }

    /// <summary>Milliseconds to add per NBD request or HTTP chunk; 0 when none.</summary>
    public int LatencyMs(TransferChannel channel) { lock (_gate) return _latency.TryGetValue(channel, out var ms) ? ms : 0; }

    /// <summary>For a new transfer: the byte count after which to drop it, or null. Consumes one use.</summary>
    public long? TakeDrop(TransferChannel channel)
    {
        lock (_gate)
        {
            int i = _drops.FindIndex(d => d.Channel == channel && d.Count > 0);
            if (i < 0) return null;
            var d = _drops[i];
            if (d.Count == 1) _drops.RemoveAt(i); else _drops[i] = d with { Count = d.Count - 1 };
            return d.AfterBytes;
        }
    }

    /// <summary>True when a read of [offset, offset+length) on <paramref name="channel"/> must fail; consumes one use.</summary>
    public bool TakeReadError(TransferChannel channel, long offset, long length)
    {
        lock (_gate)
        {
            int i = _readErrors.FindIndex(f => f.Channel == channel && f.Count > 0 && f.Offset >= offset && f.Offset < offset + length);
            if (i < 0) return false;
            var f = _readErrors[i];
            if (f.Count == 1) _readErrors.RemoveAt(i); else _readErrors[i] = f with { Count = f.Count - 1 };
            return true;
        }
    }

    internal void ThrowIfXapiFault(string method)
    {
        XapiMethodFault? hit = null;
        lock (_gate)
        {
            int i = _methods.FindIndex(f => f.Method == method && f.Count > 0);
            if (i < 0) return;
            hit = _methods[i];
            if (hit.Count == 1) _methods.RemoveAt(i); else _methods[i] = hit with { Count = hit.Count - 1 };
        }
        throw new XapiError(hit.Code, hit.Parameters);
    }

    public object Describe()
    {
        lock (_gate) return new { methods = _methods.ToArray(), drops = _drops.ToArray(), latency = _latency.ToDictionary(kv => kv.Key.ToString().ToLowerInvariant(), kv => kv.Value), readErrors = _readErrors.ToArray() };
    }
}
