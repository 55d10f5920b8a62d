namespace VProtect.Simulator.Tests;

public sealed class PersistenceTests
{
    [Fact]
    public async Task State_directory_survives_a_restart()
    {
        var dir = Path.Combine(Path.GetTempPath(), "sim-state-" + Guid.NewGuid().ToString("N"));
        try
        {
            string snap, disk, s1, uuid, hash;
            await using (var h = await SimHandle.StartAsync("default", dir))
            {
                using var c = await h.LoginAsync();
                var vm = await c.RefByNameAsync("VM", "test-paused");
                disk = (await VdiTests.DiskVdis(c, vm))[0]; // 256 MiB
                await c.CallAsync("VDI.enable_cbt", disk);
                s1 = V.Str(await c.CallAsync("VDI.snapshot", disk, new Dictionary<string, object?>()));
                uuid = V.Str(await c.CallAsync("VDI.get_uuid", disk));
                await VdiTests.GuestWriteAsync(h, uuid, 5 * 65536, 10, 3);
                snap = V.Str(await c.CallAsync("VM.snapshot", vm, "kept"));
                hash = await Control.ControlApi.HashAsync(h.Sim.OpenVdi(uuid), CancellationToken.None);
            }
            Assert.True(File.Exists(Path.Combine(dir, "db.json")));
            await using (var h = await SimHandle.StartAsync("empty", dir)) // the state wins over the scenario
            {
                using var c = await h.LoginAsync();
                Assert.Equal("kept", V.Str(await c.CallAsync("VM.get_name_label", snap)));
                Assert.True(V.Bool(await c.CallAsync("VDI.get_cbt_enabled", disk)));
                Assert.Equal(hash, await Control.ControlApi.HashAsync(h.Sim.OpenVdi(uuid), CancellationToken.None));
                var s2 = V.Str(await c.CallAsync("VDI.snapshot", disk, new Dictionary<string, object?>()));
                var bits = Convert.FromBase64String(V.Str(await c.CallAsync("VDI.list_changed_blocks", s1, s2)));
                Assert.Equal(0x04, bits[0]); // block 5, written before the restart
                Assert.Equal(snap, V.Str(await c.CallAsync("VM.get_by_uuid", V.Str(await c.CallAsync("VM.get_uuid", snap)))));
            }
        }
        finally
        {
            try { Directory.Delete(dir, true); } catch (IOException) { }
        }
    }
}
