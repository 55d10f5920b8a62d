using System.Diagnostics;
using System.Text.Json.Nodes;

namespace VProtect.Simulator.Tests;

public sealed class ProgramTests
{
    [Fact]
    public async Task Command_line_prints_one_json_line_serves_xapi_and_exits_when_stdin_closes()
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "VProtect.Simulator.dll");
        Assert.True(File.Exists(dll), dll);
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { dll, "--scenario", "empty", "--password", "secret", "--https-port", "none" }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        try
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
            var line = await p.StandardOutput.ReadLineAsync(cts.Token) ?? throw new Xunit.Sdk.XunitException(await p.StandardError.ReadToEndAsync());
            var info = JsonNode.Parse(line)!.AsObject();
            Assert.Equal("secret", (string)info["password"]!);
            Assert.Equal("root", (string)info["user"]!);
            Assert.Null(info["httpsUrl"]);
            Assert.True((int)info["nbdPort"]! > 0);
            foreach (var k in new[] { "url", "controlUrl", "memberUrl" }) Assert.StartsWith("http://", (string)info[k]!);
            using var c = new XapiTestClient(new Uri((string)info["url"]!));
            Assert.StartsWith("OpaqueRef:", await c.LoginAsync("root", "secret"));
            p.StandardInput.Close();
            await p.WaitForExitAsync(cts.Token);
            Assert.Equal(0, p.ExitCode);
        }
        finally
        {
            if (!p.HasExited) p.Kill(entireProcessTree: true);
        }
    }

    [Fact]
    public async Task Bad_arguments_exit_2_with_usage()
    {
        var dll = Path.Combine(AppContext.BaseDirectory, "VProtect.Simulator.dll");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add(dll);
        psi.ArgumentList.Add("--frobnicate");
        using var p = Process.Start(psi)!;
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        var err = await p.StandardError.ReadToEndAsync(cts.Token);
        await p.WaitForExitAsync(cts.Token);
        Assert.Equal(2, p.ExitCode);
        Assert.Contains("usage:", err);
    }
}
