using System.Net;
using System.Net.Sockets;
using VProtect.Core.IO;
using VProtect.Core.Nbd;
using VProtect.Core.Repository;
using VProtect.Core.Restore.Xva;

namespace VProtect.Core.Lifecycle;

/// <summary>
/// A restore point served read-only over NBD on loopback (TCP 127.0.0.1 or a Unix socket), one export per disk,
/// named by the disk key, so qemu-nbd, nbdfuse, guestfish or the kernel client can open the merged chain.
/// CBT-strategy points are served from their block chain; XVA-strategy points from the full's XVA overlaid with the
/// chosen incremental's VHD delta (<see cref="XvaRestorePointSource"/>: opening reads the XVA once to index it).
/// </summary>
public sealed class BackupMount : IAsyncDisposable
{
    private readonly NbdServer _server;
    private readonly Dictionary<string, IBlockSource> _disks;

    private BackupMount(NbdServer server, Dictionary<string, IBlockSource> disks, BackupManifest point, string? socketPath)
    {
        _server = server;
        _disks = disks;
        Backup = point;
        UnixSocket = socketPath;
    }

    public BackupManifest Backup { get; }
    public int Port => _server.Port;
    public string? UnixSocket { get; }
    public IReadOnlyCollection<string> DiskKeys => _disks.Keys;
    public int ActiveConnections => _server.ActiveConnections;

    /// <summary>The NBD URI of one disk (libnbd syntax: nbd://host:port/export or nbd+unix:///export?socket=path).</summary>
    public string UriOf(string diskKey) => UnixSocket is null
        ? $"nbd://127.0.0.1:{Port}/{Uri.EscapeDataString(diskKey)}"
        : $"nbd+unix:///{Uri.EscapeDataString(diskKey)}?socket={UnixSocket}";

    public IBlockSource SourceOf(string diskKey) => _disks[diskKey];

    /// <summary>
    /// Opens the disks of <paramref name="point"/> (all, or <paramref name="diskKeys"/>) and starts serving them. Blocks while
    /// an XVA-strategy point's XVA is indexed; <see cref="StartAsync"/> is the cancellable form.
    /// </summary>
    public static BackupMount Start(BackupRepository repository, BackupManifest point, IReadOnlyCollection<string>? diskKeys, int port = 0, string? unixSocket = null)
        => StartAsync(repository, point, diskKeys, port, unixSocket, null, CancellationToken.None).GetAwaiter().GetResult();

    /// <summary>Opens the disks of <paramref name="point"/> (all, or <paramref name="diskKeys"/>) and starts serving them.</summary>
    public static async Task<BackupMount> StartAsync(BackupRepository repository, BackupManifest point, IReadOnlyCollection<string>? diskKeys,
        int port, string? unixSocket, XvaRestorePointOptions? xvaOptions, CancellationToken ct)
    {
        if (unixSocket is not null && File.Exists(unixSocket))
            throw new IOException($"{unixSocket} already exists; choose another path or remove the stale socket.");
        var disks = new Dictionary<string, IBlockSource>(StringComparer.Ordinal);
        List<string> keys;
        try
        {
            if (point.Strategy == BackupStrategy.Xva)
            {
                var opened = await XvaRestorePointSource.OpenAsync(repository, point, diskKeys, xvaOptions, ct).ConfigureAwait(false);
                foreach (var (key, source) in opened) disks[key] = source;
                keys = diskKeys is { Count: > 0 } ? diskKeys.Distinct().ToList() : opened.Keys.ToList();
            }
            else
            {
                if (point.Disks.Count == 0)
                    throw new RepositoryException($"Backup {point.Id} holds no disks to serve.");
                keys = diskKeys is { Count: > 0 } ? diskKeys.ToList() : point.Disks.Select(d => d.Key).ToList();
                foreach (var key in keys)
                {
                    if (point.Disks.All(d => d.Key != key))
                        throw new RepositoryException($"Backup {point.Id} has no disk '{key}'. Its disks are: {string.Join(", ", point.Disks.Select(d => d.Key))}.");
                    disks[key] = repository.OpenDisk(point, key);
                }
            }
            EndPoint endPoint = unixSocket is not null ? new UnixDomainSocketEndPoint(unixSocket) : new IPEndPoint(IPAddress.Loopback, port);
            var server = NbdServer.Start(new NbdServerOptions
            {
                EndPoint = endPoint,
                ResolveExport = (request, _) =>
                {
                    // An empty name (the default export) gets the first disk, as qemu-nbd does for its only export.
                    string name = request.Name.Length == 0 ? keys[0] : request.Name;
                    return ValueTask.FromResult(disks.TryGetValue(name, out var source)
                        ? new NbdExport(source) { Description = $"{point.VmName} {point.Id} {name} (read-only)" }
                        : null);
                },
                ListExports = () => keys,
            });
            return new BackupMount(server, disks, point, unixSocket);
        }
        catch
        {
            foreach (var d in disks.Values) (d as IDisposable)?.Dispose();
            throw;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _server.DisposeAsync().ConfigureAwait(false);
        foreach (var d in _disks.Values) (d as IDisposable)?.Dispose();
    }
}
