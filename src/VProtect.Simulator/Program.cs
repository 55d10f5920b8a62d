namespace VProtect.Simulator;

public static class Program
{
    // Replaced by the simulator's command line (issue: foundation).
    public static int Main(string[] args)
    {
        Console.Error.WriteLine("VProtect.Simulator: not implemented yet");
        return 1;
    }
}
