using System.Reflection;

namespace VProtect.Benchmarks;

/// <summary>One benchmark: measures ours against a peer in the same run and reports ratios.</summary>
public interface IBenchmark
{
    /// <summary>Short name used on the command line, e.g. "nbd-read".</summary>
    string Name { get; }
    /// <summary>Runs and prints a markdown section (machine, figures, ratio) to <paramref name="report"/>.</summary>
    Task RunAsync(BenchmarkContext context, TextWriter report, CancellationToken cancellationToken);
}

public sealed record BenchmarkContext(string WorkDirectory, bool Quick);

public static class Program
{
    /// <summary>
    /// Usage: VProtect.Benchmarks [--quick] [--work DIR] [--out FILE] [name ...]
    /// Without names every benchmark runs. The report (markdown) goes to stdout and, with --out, to FILE.
    /// </summary>
    public static async Task<int> Main(string[] args)
    {
        bool quick = false; string? outFile = null; string work = Path.Combine(Path.GetTempPath(), "vprotect-bench");
        var names = new List<string>();
        for (int i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--quick": quick = true; break;
                case "--out": outFile = args[++i]; break;
                case "--work": work = args[++i]; break;
                default: names.Add(args[i]); break;
            }
        }
        var all = Assembly.GetExecutingAssembly().GetTypes()
            .Where(t => typeof(IBenchmark).IsAssignableFrom(t) && t is { IsAbstract: false, IsInterface: false })
            .Select(t => (IBenchmark)Activator.CreateInstance(t)!)
            .OrderBy(b => b.Name).ToList();
        var selected = names.Count == 0 ? all : all.Where(b => names.Contains(b.Name)).ToList();
        if (selected.Count == 0)
        {
            Console.Error.WriteLine($"No benchmark matches. Known: {string.Join(", ", all.Select(b => b.Name))}");
            return 2;
        }
        Directory.CreateDirectory(work);
        var report = new StringWriter();
        report.WriteLine($"Machine: {Environment.ProcessorCount} cores, {GC.GetGCMemoryInfo().TotalAvailableMemoryBytes >> 30} GiB, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}, .NET {Environment.Version}");
        report.WriteLine();
        using var cts = new CancellationTokenSource();
        Console.CancelKeyPress += (_, e) => { e.Cancel = true; cts.Cancel(); };
        foreach (var b in selected)
        {
            Console.Error.WriteLine($"== {b.Name}");
            await b.RunAsync(new BenchmarkContext(Path.Combine(work, b.Name), quick), report, cts.Token);
        }
        Console.Write(report.ToString());
        if (outFile is not null) await File.WriteAllTextAsync(outFile, report.ToString());
        return 0;
    }
}
