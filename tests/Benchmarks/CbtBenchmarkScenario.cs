using System.Diagnostics;

namespace VProtect.Benchmarks;

/// <summary>What the CBT benchmarks share: the scenario (a half-full "bench" disk and a small "warm" VM), the load average, sync.</summary>
internal static class CbtBenchmarkScenario
{
    private const long MiB = 1024 * 1024;

    /// <summary>
    /// Writes a simulator scenario: VM "bench" with one disk of <paramref name="size"/> bytes holding 50 % data (the
    /// first half of every 256 MiB), and VM "warm", 256 MiB half filled, that every timed path runs on first so neither
    /// .NET process is timed while its JIT still runs unoptimised code.
    /// </summary>
    public static void Write(string path, long size)
    {
        var fills = new List<string>();
        for (long o = 0; o < size; o += 256 * MiB) fills.Add($"{{ \"offset\": {o}, \"length\": {128 * MiB}, \"seed\": {o / MiB + 1} }}");
        File.WriteAllText(path, $$"""
            { "base": "empty", "vms": [ { "name": "bench", "powerState": "Halted", "memoryBytes": 1073741824, "vcpus": 1,
              "disks": [ { "name": "bench disk", "size": {{size}}, "fill": [ {{string.Join(", ", fills)}} ] } ] },
              { "name": "warm", "powerState": "Halted", "memoryBytes": 1073741824, "vcpus": 1,
              "disks": [ { "name": "warm disk", "size": {{256 * MiB}}, "fill": [ { "offset": 0, "length": {{128 * MiB}}, "seed": 99 } ] } ] } ] }
            """);
    }

    public static string LoadAverage()
    {
        try { return string.Join(" ", File.ReadAllText("/proc/loadavg").Split(' ').Take(3)); }
        catch (IOException) { return "unknown"; }
    }

    /// <summary>`sync` before a timing, so no earlier dirty data is written during it.</summary>
    public static void Sync()
    {
        using var p = Process.Start(new ProcessStartInfo("sync") { UseShellExecute = false });
        p?.WaitForExit();
    }
}
