using System.Collections.Concurrent;
using System.Management.Automation;
using VProtect.Core.Lifecycle;

namespace VProtect.PowerShell
{
    /// <summary>A restore point served over NBD by Mount-VMBackup; pass it to Dismount-VMBackup.</summary>
    public sealed class VMBackupMount
    {
        internal VMBackupMount(int id, VMBackup backup, BackupMount mount)
        {
            Id = id;
            Backup = backup;
            Mount = mount;
            Uris = mount.DiskKeys.ToDictionary(k => k, mount.UriOf);
        }

        internal BackupMount Mount { get; }
        public int Id { get; }
        public VMBackup Backup { get; }
        public string BackupId => Backup.Id;
        public string VM => Backup.VM;
        /// <summary>The NBD URI of the first (or only) disk.</summary>
        public string Uri => Uris.Values.First();
        /// <summary>NBD URI per disk key.</summary>
        public Dictionary<string, string> Uris { get; }
        public int Port => Mount.Port;
        public string? UnixSocket => Mount.UnixSocket;
        public int ActiveConnections => Mount.ActiveConnections;
        public DateTime Started { get; } = DateTime.UtcNow;

        public override string ToString() => Uri;
    }
}

namespace VProtect.PowerShell.Lifecycle
{
    /// <summary>The mounts of this process: stopped on Dismount-VMBackup, when the module is removed, or when the process exits.</summary>
    internal static class MountRegistry
    {
        private static readonly ConcurrentDictionary<int, VMBackupMount> Mounts = new();
        private static int _nextId;
        private static int _hooked;

        public static VMBackupMount Add(VMBackup backup, BackupMount mount)
        {
            if (Interlocked.Exchange(ref _hooked, 1) == 0)
                AppDomain.CurrentDomain.ProcessExit += (_, _) => StopAll();
            var m = new VMBackupMount(Interlocked.Increment(ref _nextId), backup, mount);
            Mounts[m.Id] = m;
            return m;
        }

        public static IReadOnlyList<VMBackupMount> All => Mounts.Values.OrderBy(m => m.Id).ToList();

        public static async Task<bool> RemoveAsync(int id)
        {
            if (!Mounts.TryRemove(id, out var m)) return false;
            await m.Mount.DisposeAsync().ConfigureAwait(false);
            return true;
        }

        public static void StopAll()
        {
            foreach (var id in Mounts.Keys.ToList())
            {
                try { RemoveAsync(id).GetAwaiter().GetResult(); }
                catch (Exception) { /* best effort at shutdown */ }
            }
        }
    }

    /// <summary>Stops every mount when the module is removed (Remove-Module).</summary>
    public sealed class MountLifetime : IModuleAssemblyCleanup
    {
        public void OnRemove(PSModuleInfo psModuleInfo) => MountRegistry.StopAll();
    }
}
