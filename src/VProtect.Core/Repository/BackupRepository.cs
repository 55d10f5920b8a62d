using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using VProtect.Core.Formats;

namespace VProtect.Core.Repository;

/// <summary>
/// A backup repository: a folder on a local disk or a mounted share, self-describing and readable without the
/// hypervisor. Layout (docs/repository-format.md):
/// <code>
/// vprotect-repository.json            marker: format name and version
/// vms/&lt;vm-uuid&gt;/.lock                  one writer per VM chain (an OS file lock)
/// vms/&lt;vm-uuid&gt;/.partial-&lt;id&gt;/         a backup being written (removed on abort, cleaned with a warning after a crash)
/// vms/&lt;vm-uuid&gt;/&lt;id&gt;/backup.json      a committed backup: manifest written last, folder renamed into place
/// vms/&lt;vm-uuid&gt;/&lt;id&gt;/disks/*.data|index  blocks (CBT strategy);  *.xva, *.vhd, vm.json: whole files with SHA-256
/// </code>
/// </summary>
public sealed class BackupRepository
{
    public const string MarkerFile = "vprotect-repository.json";
    public const string FormatName = "vprotect-repository";
    public const int FormatVersion = 1;
    public const string ManifestFile = "backup.json";
    public const string VmMetadataFile = "vm.json";
    internal const string PartialPrefix = ".partial-";

    private BackupRepository(string root) { RootPath = root; }

    public string RootPath { get; }

    /// <summary>Opens a repository; with <paramref name="create"/> an empty or missing folder becomes one.</summary>
    public static BackupRepository Open(string path, bool create = false)
    {
        string root = Path.GetFullPath(path);
        string marker = Path.Combine(root, MarkerFile);
        if (File.Exists(marker))
        {
            JsonNode? node;
            try { node = JsonNode.Parse(File.ReadAllText(marker)); }
            catch (JsonException ex) { throw new BackupFormatException(marker, 0, "the repository marker is not valid JSON.", ex); }
            if ((string?)node?["format"] != FormatName)
                throw new BackupFormatException(marker, 0, $"not a {FormatName} marker.");
            int version = (int?)node?["version"] ?? 0;
            if (version > FormatVersion)
                throw new RepositoryException($"The repository at {root} has format version {version}; this module reads up to {FormatVersion}. Update VProtect.PowerShell.");
            return new BackupRepository(root);
        }
        if (!create)
            throw new RepositoryException($"{root} is not a backup repository (no {MarkerFile}). Pass a repository path, or let a backup create one.");
        if (Directory.Exists(root) && Directory.EnumerateFileSystemEntries(root).Any())
            throw new RepositoryException($"{root} is not empty and not a backup repository; refusing to write backups into it.");
        Directory.CreateDirectory(root);
        var json = new JsonObject { ["format"] = FormatName, ["version"] = FormatVersion, ["created"] = DateTimeOffset.UtcNow.ToString("O") };
        string temp = marker + ".tmp";
        File.WriteAllText(temp, json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        File.Move(temp, marker, overwrite: false);
        return new BackupRepository(root);
    }

    internal string VmFolder(string vmUuid)
    {
        if (!RepositoryPaths.IsSafeName(vmUuid)) throw new ArgumentException($"'{vmUuid}' is not a valid VM uuid.", nameof(vmUuid));
        return Path.Combine(RootPath, "vms", vmUuid);
    }

    internal string BackupFolder(string vmUuid, string id) => Path.Combine(VmFolder(vmUuid), id);

    public string GetBackupFolder(BackupManifest backup) => BackupFolder(backup.VmUuid, backup.Id);

    /// <summary>Takes the VM chain's lock: two runs for the same VM cannot interleave. Waits up to <paramref name="wait"/>.</summary>
    public Task<ChainLock> LockChainAsync(string vmUuid, TimeSpan wait, CancellationToken cancellationToken)
        => ChainLock.AcquireAsync(Path.Combine(VmFolder(vmUuid), ".lock"), vmUuid, wait, cancellationToken);

    /// <summary>Removes what interrupted runs left behind (needs the chain lock). Returns the folders removed, for a warning.</summary>
    public IReadOnlyList<string> CleanInterrupted(ChainLock chainLock)
    {
        chainLock.ThrowIfReleased();
        string folder = VmFolder(chainLock.VmUuid);
        if (!Directory.Exists(folder)) return Array.Empty<string>();
        var removed = new List<string>();
        foreach (var dir in Directory.EnumerateDirectories(folder, PartialPrefix + "*"))
        {
            Directory.Delete(dir, recursive: true);
            removed.Add(dir);
        }
        return removed;
    }

    /// <summary>Starts a backup of the chain's VM; the manifest's Id and CreatedUtc are filled in.</summary>
    public BackupWriter BeginBackup(ChainLock chainLock, BackupManifest manifest)
    {
        chainLock.ThrowIfReleased();
        if (manifest.VmUuid != chainLock.VmUuid) throw new ArgumentException("The manifest's VM is not the locked chain's VM.", nameof(manifest));
        if (manifest.Type == BackupType.Incremental && manifest.BaseId is null) throw new ArgumentException("An incremental needs a BaseId.", nameof(manifest));
        if (manifest.BaseId is not null && GetBackup(manifest.VmUuid, manifest.BaseId) is null)
            throw new RepositoryException($"The base backup {manifest.BaseId} is not in the repository.");
        manifest.CreatedUtc = DateTimeOffset.UtcNow;
        manifest.Id = NewId(manifest.CreatedUtc);
        string partial = Path.Combine(VmFolder(manifest.VmUuid), PartialPrefix + manifest.Id);
        Directory.CreateDirectory(partial);
        return new BackupWriter(this, chainLock, manifest, partial);
    }

    private static string NewId(DateTimeOffset t)
        => $"{t.UtcDateTime:yyyyMMdd'T'HHmmssfff'Z'}-{Convert.ToHexString(RandomNumberGenerator.GetBytes(3)).ToLowerInvariant()}";

    /// <summary>Committed backups (oldest first), of one VM or all. Partial folders are never listed.</summary>
    public IReadOnlyList<BackupManifest> ListBackups(string? vmUuid = null) => ListBackups(vmUuid, problems: null);

    /// <summary>As <see cref="ListBackups(string?)"/>, collecting folders that look committed but cannot be read.</summary>
    public IReadOnlyList<BackupManifest> ListBackups(string? vmUuid, List<BackupFormatException>? problems)
    {
        string vms = Path.Combine(RootPath, "vms");
        if (!Directory.Exists(vms)) return Array.Empty<BackupManifest>();
        IEnumerable<string> vmFolders = vmUuid is null ? Directory.EnumerateDirectories(vms) : new[] { VmFolder(vmUuid) };
        var result = new List<BackupManifest>();
        foreach (var vmFolder in vmFolders.Where(Directory.Exists))
            foreach (var dir in Directory.EnumerateDirectories(vmFolder))
            {
                if (Path.GetFileName(dir).StartsWith('.')) continue;
                try { result.Add(ReadManifest(dir)); }
                catch (BackupFormatException ex) { problems?.Add(ex); }
            }
        return result.OrderBy(b => b.CreatedUtc).ThenBy(b => b.Id, StringComparer.Ordinal).ToList();
    }

    public BackupManifest? GetBackup(string vmUuid, string id)
    {
        if (!RepositoryPaths.IsSafeName(id)) return null;
        string dir = BackupFolder(vmUuid, id);
        return Directory.Exists(dir) ? ReadManifest(dir) : null;
    }

    /// <summary>Finds a backup by id in any VM's chain.</summary>
    public BackupManifest? FindBackup(string id) => ListBackups().FirstOrDefault(b => b.Id == id);

    private static BackupManifest ReadManifest(string folder) => ReadManifest(folder, BackupManifest.CurrentFormatVersion);

    /// <summary>
    /// Reads a backup.json. The reader rule: a manifest whose formatVersion is above <paramref name="newestReadable"/>
    /// is refused (a version-1 reader has newestReadable 1 and refuses a layered, version-2 backup), never misread.
    /// </summary>
    internal static BackupManifest ReadManifest(string folder, int newestReadable)
    {
        string path = Path.Combine(folder, ManifestFile);
        BackupManifest? m;
        try { m = JsonSerializer.Deserialize<BackupManifest>(File.ReadAllText(path), BackupManifest.Json); }
        catch (FileNotFoundException ex) { throw new BackupFormatException(path, 0, "backup.json is missing.", ex); }
        catch (JsonException ex) { throw new BackupFormatException(path, ex.BytePositionInLine ?? 0, "backup.json is not valid.", ex); }
        if (m is not null && m.FormatVersion > newestReadable)
            throw new BackupFormatException(path, 0, $"backup.json has format version {m.FormatVersion}; this module reads up to {newestReadable}. Update VProtect.PowerShell.");
        if (m is null || m.Id != Path.GetFileName(folder) || m.FormatVersion < 1)
            throw new BackupFormatException(path, 0, "backup.json does not describe this folder or has an unknown format version.");
        if (m.FormatVersion < BackupManifest.LayeredFormatVersion && m.Disks.Any(d => d.BaseLayers is { Count: > 0 }))
            throw new BackupFormatException(path, 0, $"backup.json lists base layers but says format version {m.FormatVersion}; layered backups are version {BackupManifest.LayeredFormatVersion}.");
        return m;
    }

    /// <summary>The backups a restore point needs, oldest (the full) first, ending with <paramref name="point"/>.</summary>
    public IReadOnlyList<BackupManifest> GetChain(BackupManifest point)
    {
        var chain = new List<BackupManifest> { point };
        var current = point;
        while (current.BaseId is not null)
        {
            var parent = GetBackup(current.VmUuid, current.BaseId)
                ?? throw new RepositoryException($"Backup {current.Id} depends on {current.BaseId}, which is missing from the repository: the chain is broken and {point.Id} cannot be restored.");
            if (chain.Count > 10_000) throw new RepositoryException($"The chain of {point.Id} loops.");
            chain.Add(parent);
            current = parent;
        }
        if (current.Type != BackupType.Full) throw new RepositoryException($"The chain of {point.Id} does not start with a full backup.");
        chain.Reverse();
        return chain;
    }

    /// <summary>
    /// The restore point's content of one disk: the newest version of every range from the full and the incrementals
    /// up to <paramref name="point"/> (each with its lower layers, newest layer first), each range read once. Every record's hash is checked as it is read.
    /// </summary>
    public ChainBlockSource OpenDisk(BackupManifest point, string diskKey)
    {
        var chain = GetChain(point);
        var layers = new List<ChainBlockSource.Layer>();
        long size = -1;
        foreach (var b in chain)
        {
            var disk = b.Disks.FirstOrDefault(d => d.Key == diskKey);
            if (disk is null)
            {
                if (b == point) throw new RepositoryException($"Backup {point.Id} has no disk {diskKey}.");
                continue;
            }
            size = disk.VirtualSize;
            string folder = GetBackupFolder(b);
            foreach (var layer in disk.Layers()) // format version 2: lower layers first, the top layer last
                layers.Add(new ChainBlockSource.Layer(b.Id, Path.Combine(folder, layer.DataFile), Path.Combine(folder, layer.IndexFile), layer.VirtualSize));
        }
        return new ChainBlockSource(layers, size);
    }

    public string GetFilePath(BackupManifest backup, FileManifest file) => Path.Combine(GetBackupFolder(backup), file.Name);
}

/// <summary>File-name checks for names that come from outside (uuids, ids, disk keys).</summary>
internal static class RepositoryPaths
{
    public static bool IsSafeName(string name)
        => !string.IsNullOrEmpty(name) && name.Length <= 128 && name is not "." and not ".." && !name.StartsWith('.')
           && name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.');
}

public class RepositoryException : Exception
{
    public RepositoryException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>Another run holds the VM chain's lock.</summary>
public sealed class RepositoryLockedException : RepositoryException
{
    public RepositoryLockedException(string vmUuid, string message) : base(message) { VmUuid = vmUuid; }
    public string VmUuid { get; }
}
