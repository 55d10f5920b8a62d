namespace VProtect.Core.Repository;

/// <summary>
/// An exclusive lock on one VM's chain in a repository: an OS-level lock on <c>vms/&lt;uuid&gt;/.lock</c> (flock on
/// Unix, a share-none handle on Windows), so it works across processes and is released if the process dies.
/// </summary>
public sealed class ChainLock : IAsyncDisposable, IDisposable
{
    private static readonly TimeSpan RetryInterval = TimeSpan.FromMilliseconds(100);
    private FileStream? _handle;

    private ChainLock(FileStream handle, string vmUuid) { _handle = handle; VmUuid = vmUuid; }

    public string VmUuid { get; }

    internal static async Task<ChainLock> AcquireAsync(string path, string vmUuid, TimeSpan wait, CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var deadline = DateTime.UtcNow + wait;
        while (true)
        {
            try
            {
                var fs = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
                return new ChainLock(fs, vmUuid);
            }
            catch (IOException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(RetryInterval, cancellationToken).ConfigureAwait(false);
            }
            catch (IOException ex)
            {
                throw new RepositoryLockedException(vmUuid,
                    $"Another run is writing to the backup chain of VM {vmUuid} (lock {path}); wait for it to finish, or retry later. ({ex.Message})");
            }
        }
    }

    internal void ThrowIfReleased()
    {
        if (_handle is null) throw new ObjectDisposedException(nameof(ChainLock), "The chain lock was released.");
    }

    public void Dispose()
    {
        _handle?.Dispose();
        _handle = null;
    }

    public ValueTask DisposeAsync()
    {
        Dispose();
        return ValueTask.CompletedTask;
    }
}
