using Xunit;

namespace VProtect.Core.Tests;

/// <summary>What Linux tools say about a file: its file system, its page-cache residency, its blocks and extents.</summary>
internal static class FileProbe
{
    /// <summary>Runs a tool and returns its trimmed output; a non-zero exit fails the test.</summary>
    public static string Run(string file, params string[] args)
    {
        var psi = new System.Diagnostics.ProcessStartInfo(file) { RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        using var p = System.Diagnostics.Process.Start(psi)!;
        string output = p.StandardOutput.ReadToEnd().Trim();
        p.WaitForExit();
        Assert.Equal(0, p.ExitCode);
        return output;
    }

    /// <summary>The file system type as stat names it ("ext2/ext3" for ext4, "tmpfs", "xfs", …).</summary>
    public static string FileSystemType(string path) => Run("stat", "-f", "-c", "%T", path);

    /// <summary>Bytes of the file in the page cache, by util-linux's fincore (mincore(2)).</summary>
    public static long ResidentBytes(string path) => long.Parse(Run("fincore", "-b", "-n", "-o", "RES", path), System.Globalization.CultureInfo.InvariantCulture);
}
