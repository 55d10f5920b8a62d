using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using Xunit;

namespace VProtect.Core.Tests.Lifecycle;

public sealed class BackupChainsTests : IDisposable
{
    private readonly LifecycleRepo _repo = new();
    public void Dispose() => _repo.Dispose();

    [Fact]
    public async Task Backups_group_into_one_chain_per_full_with_incrementals_in_order()
    {
        var first = await _repo.WriteCbtChainAsync(2, seed: 1);
        var second = await _repo.WriteCbtChainAsync(1, seed: 2);
        var xva = await _repo.WriteXvaChainAsync(2, vm: "11111111-2222-3333-4444-555555555555");
        var chains = BackupChains.Get(_repo.Repository);
        Assert.Equal(3, chains.Count);
        var cbt = chains.Where(c => c.VmUuid == LifecycleRepo.Vm).ToList();
        Assert.Equal(first[0].Id, cbt[0].Full!.Id);
        Assert.Equal(first.Skip(1).Select(b => b.Id), cbt[0].Incrementals.Select(b => b.Id));
        Assert.Equal(second.Select(b => b.Id), cbt[1].RestorePoints.Select(b => b.Id));
        Assert.Equal(first.Sum(b => b.StoredBytes), cbt[0].TotalBytes);
        var x = chains.Single(c => c.Strategy == BackupStrategy.Xva);
        Assert.Equal(3, x.RestorePointCount);
        Assert.Equal(xva[0].StoredBytes + xva[2].StoredBytes, x.UniqueBytes);
        Assert.All(chains, c => Assert.Null(c.Problem));
        Assert.Single(BackupChains.Get(_repo.Repository, "11111111-2222-3333-4444-555555555555"));
    }

    [Fact]
    public async Task Incrementals_whose_full_is_gone_form_a_chain_that_says_so()
    {
        var chain = await _repo.WriteCbtChainAsync(2);
        Directory.Delete(_repo.Repository.GetBackupFolder(chain[0]), recursive: true);
        var c = Assert.Single(BackupChains.Get(_repo.Repository));
        Assert.Null(c.Full);
        Assert.Equal(2, c.Incrementals.Count);
        Assert.Contains(chain[0].Id, c.Problem);
    }
}
