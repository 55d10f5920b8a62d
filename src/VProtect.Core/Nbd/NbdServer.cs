using System.Net;
using System.Net.Sockets;

namespace VProtect.Core.Nbd;

/// <summary>
/// An NBD server over TCP or a Unix socket. Serves <see cref="NbdExport"/>s chosen per request by
/// <see cref="NbdServerOptions.ResolveExport"/>; in <see cref="NbdServerOptions.XapiNbdMode"/> it behaves like xapi-nbd.
/// </summary>
public sealed class NbdServer : IAsyncDisposable
{
    private readonly NbdServerOptions _options;
    private readonly Socket _listener;
    private readonly CancellationTokenSource _stopping = new();
    private readonly List<Task> _sessions = new();
    private readonly object _gate = new();
    private Task? _acceptLoop;
    private long _nextId;
    private int _active;

    private NbdServer(NbdServerOptions options, Socket listener)
    {
        _options = options;
        _listener = listener;
    }

    /// <summary>Binds and starts accepting. With port 0, read the chosen port from <see cref="LocalEndPoint"/>.</summary>
    public static NbdServer Start(NbdServerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(options.ResolveExport);
        ArgumentOutOfRangeException.ThrowIfLessThan(options.MaxConnections, 1);
        var socket = options.EndPoint is UnixDomainSocketEndPoint
            ? new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified)
            : new Socket(options.EndPoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            socket.Bind(options.EndPoint);
            socket.Listen(64);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
        var server = new NbdServer(options, socket);
        server._acceptLoop = Task.Run(server.AcceptLoopAsync);
        return server;
    }

    public EndPoint LocalEndPoint => _listener.LocalEndPoint!;
    /// <summary>TCP port bound (0 for a Unix socket).</summary>
    public int Port => (LocalEndPoint as IPEndPoint)?.Port ?? 0;
    public int ActiveConnections => Volatile.Read(ref _active);
    /// <summary>Connections accepted so far (including refused ones).</summary>
    public long AcceptedConnections => Interlocked.Read(ref _nextId);

    private async Task AcceptLoopAsync()
    {
        while (!_stopping.IsCancellationRequested)
        {
            Socket client;
            try { client = await _listener.AcceptAsync(_stopping.Token); }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException) { if (_stopping.IsCancellationRequested) return; continue; }
            long id = Interlocked.Increment(ref _nextId);
            if (Interlocked.Increment(ref _active) > _options.MaxConnections)
            {
                // xapi-nbd: "Server busy" — over the cap the connection is closed without a greeting.
                Interlocked.Decrement(ref _active);
                client.Dispose();
                continue;
            }
            if (client.AddressFamily != AddressFamily.Unix) client.NoDelay = true;
            var session = new NbdServerSession(_options, client, new NbdConnectionInfo(id, client.RemoteEndPoint));
            var task = Task.Run(async () =>
            {
                try { await session.RunAsync(_stopping.Token); }
                finally { Interlocked.Decrement(ref _active); }
            });
            lock (_gate)
            {
                _sessions.RemoveAll(t => t.IsCompleted);
                _sessions.Add(task);
            }
        }
    }

    /// <summary>Stops accepting, closes every connection and waits (bounded) for their tasks.</summary>
    public async ValueTask DisposeAsync()
    {
        if (_stopping.IsCancellationRequested) return;
        _stopping.Cancel();
        _listener.Dispose();
        if (_acceptLoop is not null) await _acceptLoop.ConfigureAwait(false);
        Task[] sessions;
        lock (_gate) sessions = [.. _sessions];
        await Task.WhenAll(sessions).WaitAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false);
        if (_options.EndPoint is UnixDomainSocketEndPoint u && u.ToString() is { Length: > 0 } path && !path.StartsWith('\0'))
            try { File.Delete(path); } catch (IOException) { }
    }
}
