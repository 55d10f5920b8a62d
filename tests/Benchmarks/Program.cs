namespace VProtect.Benchmarks;

public static class Program
{
    public static int Main(string[] args)
    {
        Console.WriteLine("No benchmarks yet.");
        return 0;
    }
}
