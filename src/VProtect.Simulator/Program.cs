using System.Runtime.InteropServices;
using System.Text.Json;

namespace VProtect.Simulator;

public static class Program
{
    private const string Usage = "usage: VProtect.Simulator [--bind 127.0.0.1] [--http-port N] [--https-port N|none] [--nbd-port N] [--user root] [--password P] [--scenario default|empty|PATH.json] [--state-dir DIR]";

    /// <summary>Starts the simulator, prints one JSON line with its endpoints, runs until stdin closes or SIGTERM/SIGINT.</summary>
    public static async Task<int> Main(string[] args)
    {
        var options = new SimulatorOptions();
        try
        {
            for (int i = 0; i < args.Length; i++)
            {
                string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value.");
                switch (args[i])
                {
                    case "--bind": options.BindAddress = Next(); break;
                    case "--http-port": options.HttpPort = int.Parse(Next()); break;
                    case "--https-port": var h = Next(); options.HttpsPort = h == "none" ? null : int.Parse(h); break;
                    case "--nbd-port": options.NbdPort = int.Parse(Next()); break;
                    case "--user": options.User = Next(); break;
                    case "--password": options.Password = Next(); break;
                    case "--scenario": options.Scenario = Next(); break;
                    case "--state-dir": options.StateDirectory = Next(); break;
                    case "-h" or "--help": Console.WriteLine(Usage); return 0;
                    default: throw new ArgumentException($"Unknown argument {args[i]}.");
                }
            }
        }
        catch (Exception e) when (e is ArgumentException or FormatException)
        {
            Console.Error.WriteLine(e.Message);
            Console.Error.WriteLine(Usage);
            return 2;
        }

        XenSimulator sim;
        try { sim = await XenSimulator.StartAsync(options); }
        catch (Exception e)
        {
            Console.Error.WriteLine($"VProtect.Simulator failed to start: {e.Message}");
            return 1;
        }
        await using (sim)
        {
            Console.Out.WriteLine(JsonSerializer.Serialize(new
            {
                url = sim.Url.ToString(), httpsUrl = sim.HttpsUrl?.ToString(), nbdPort = sim.NbdPort,
                user = sim.User, password = sim.Password, controlUrl = sim.ControlUrl.ToString(), memberUrl = sim.MemberUrl.ToString(),
            }));
            Console.Out.Flush();
            var stop = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.TrySetResult(); });
            using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.TrySetResult(); });
            _ = Task.Run(async () =>
            {
                var buffer = new char[256];
                try { while (await Console.In.ReadAsync(buffer, 0, buffer.Length) > 0) { } } catch (IOException) { }
                stop.TrySetResult();
            });
            await stop.Task;
        }
        return 0;
    }
}
