using VProtect.Core.Lifecycle;
using VProtect.Core.Repository;
using Xunit;

namespace VProtect.Core.Tests.Lifecycle;

public sealed class BackupVerifierTests : IDisposable
{
    private readonly LifecycleRepo _repo = new();
    public void Dispose() => _repo.Dispose();

    private BackupVerifier Verifier() => new(_repo.Repository);

    [Fact]
    public async Task A_healthy_cbt_chain_verifies_every_record_of_every_backup_it_depends_on()
    {
        var chain = await _repo.WriteCbtChainAsync(3);
        var result = await Verifier().VerifyAsync(chain[^1], default);
        Assert.Equal(VerificationStatus.Healthy, result.Status);
        Assert.Empty(result.Problems);
        Assert.Equal(chain.Select(b => b.Id), result.ChainIds);
        Assert.Equal(chain.Sum(b => b.Disks[0].RecordCount), result.BlocksChecked);
        Assert.True(result.BytesChecked >= chain.Sum(b => b.Disks[0].StoredBytes));
    }

    [Fact]
    public async Task A_flipped_byte_in_a_block_is_found_and_named_with_file_and_record_offset()
    {
        var chain = await _repo.WriteCbtChainAsync(3);
        var target = chain[2];
        var records = BlockIndex.Read(Path.Combine(_repo.Repository.GetBackupFolder(target), target.Disks[0].IndexFile), LifecycleRepo.DiskSize, long.MaxValue);
        var victim = records.First(r => !r.IsZero);
        string data = _repo.DataPath(target);
        await using (var fs = new FileStream(data, FileMode.Open, FileAccess.ReadWrite))
        {
            fs.Position = victim.FileOffset + victim.StoredLength / 2;
            int b = fs.ReadByte();
            fs.Position--;
            fs.WriteByte((byte)(b ^ 0x40));
        }
        var verifier = Verifier();
        var bad = await verifier.VerifyAsync(chain[3], default);
        Assert.Equal(VerificationStatus.Damaged, bad.Status);
        var problem = Assert.Single(bad.Problems);
        Assert.Equal(target.Id, problem.BackupId);
        Assert.Equal(data, problem.File);
        Assert.Equal(victim.FileOffset, problem.Offset);
        Assert.Contains($"range {victim.DiskOffset}+{victim.Length}", problem.Message);
        // Points that do not depend on the damaged backup stay healthy.
        Assert.Equal(VerificationStatus.Healthy, (await verifier.VerifyAsync(chain[1], default)).Status);
        Assert.Equal(VerificationStatus.Damaged, (await verifier.VerifyAsync(chain[2], default)).Status);
    }

    [Fact]
    public async Task A_truncated_data_file_is_reported_as_truncated()
    {
        var chain = await _repo.WriteCbtChainAsync(1);
        string data = _repo.DataPath(chain[0]);
        long length = new FileInfo(data).Length;
        await using (var fs = new FileStream(data, FileMode.Open, FileAccess.ReadWrite)) fs.SetLength(length / 2);
        var result = await Verifier().VerifyAsync(chain[1], default);
        Assert.Equal(VerificationStatus.Damaged, result.Status);
        Assert.All(result.Problems, p => Assert.Equal(chain[0].Id, p.BackupId));
        Assert.Contains(result.Problems, p => p.File == data && p.Message.Contains("truncated"));
    }

    [Fact]
    public async Task A_truncated_index_is_reported()
    {
        var chain = await _repo.WriteCbtChainAsync(1);
        string index = Path.Combine(_repo.Repository.GetBackupFolder(chain[1]), chain[1].Disks[0].IndexFile);
        await using (var fs = new FileStream(index, FileMode.Open, FileAccess.ReadWrite)) fs.SetLength(fs.Length - 10);
        var result = await Verifier().VerifyAsync(chain[1], default);
        var problem = Assert.Single(result.Problems);
        Assert.Equal(index, problem.File);
        Assert.Equal(chain[1].Id, problem.BackupId);
    }

    [Fact]
    public async Task A_missing_incremental_breaks_the_chain_of_the_points_after_it_and_is_named()
    {
        var chain = await _repo.WriteCbtChainAsync(3);
        Directory.Delete(_repo.Repository.GetBackupFolder(chain[1]), recursive: true);
        var verifier = Verifier();
        var result = await verifier.VerifyAsync(chain[3], default);
        Assert.Equal(VerificationStatus.BrokenChain, result.Status);
        var problem = Assert.Single(result.Problems);
        Assert.Equal(chain[1].Id, problem.BackupId);
        Assert.Contains(chain[1].Id, problem.Message);
        Assert.Contains("missing", problem.Message);
        Assert.Equal(VerificationStatus.Healthy, (await verifier.VerifyAsync(chain[0], default)).Status);
    }

    [Fact]
    public async Task Altered_vm_metadata_is_found_by_its_sha256()
    {
        var chain = await _repo.WriteCbtChainAsync(0);
        string vmJson = Path.Combine(_repo.Repository.GetBackupFolder(chain[0]), BackupRepository.VmMetadataFile);
        var text = await File.ReadAllTextAsync(vmJson);
        await File.WriteAllTextAsync(vmJson, text.Replace("web01", "web02"));
        var result = await Verifier().VerifyAsync(chain[0], default);
        var problem = Assert.Single(result.Problems);
        Assert.Equal(vmJson, problem.File);
        Assert.Contains("SHA-256", problem.Message);
    }

    [Fact]
    public async Task A_healthy_xva_chain_verifies_the_xva_chunks_and_the_vhd_structure()
    {
        var chain = await _repo.WriteXvaChainAsync(2);
        var result = await Verifier().VerifyAsync(chain[^1], default);
        Assert.Equal(VerificationStatus.Healthy, result.Status);
        Assert.Equal(new[] { chain[0].Id, chain[2].Id }, result.ChainIds);
        Assert.True(result.BlocksChecked > 0);
        Assert.Equal(chain[0].StoredBytes + chain[2].StoredBytes, result.BytesChecked);
    }

    [Fact]
    public async Task A_flipped_byte_inside_an_xva_chunk_is_found_by_the_xva_checksum()
    {
        var chain = await _repo.WriteXvaChainAsync(1);
        string xva = Path.Combine(_repo.Repository.GetBackupFolder(chain[0]), "export.xva");
        long length = new FileInfo(xva).Length;
        await using (var fs = new FileStream(xva, FileMode.Open, FileAccess.ReadWrite))
        {
            // Flip bytes in the middle of the file until one lands in chunk data (not tar padding): try a few spots.
            fs.Position = length / 2;
            int b = fs.ReadByte();
            fs.Position--;
            fs.WriteByte((byte)(b ^ 0x01));
        }
        var result = await Verifier().VerifyAsync(chain[1], default);
        Assert.Equal(VerificationStatus.Damaged, result.Status);
        Assert.All(result.Problems, p => Assert.Equal(xva, p.File));
        Assert.Contains(result.Problems, p => p.Message.Contains("SHA-256"));
    }

    [Fact]
    public async Task A_truncated_vhd_incremental_is_reported_with_its_structure_problem()
    {
        var chain = await _repo.WriteXvaChainAsync(1);
        string vhd = Path.Combine(_repo.Repository.GetBackupFolder(chain[1]), $"{LifecycleRepo.DiskKey}.vhd");
        long length = new FileInfo(vhd).Length;
        await using (var fs = new FileStream(vhd, FileMode.Open, FileAccess.ReadWrite)) fs.SetLength(length - 100);
        var result = await Verifier().VerifyAsync(chain[1], default);
        Assert.Equal(VerificationStatus.Damaged, result.Status);
        Assert.Contains(result.Problems, p => p.File == vhd && p.Message.Contains("truncated"));
        Assert.Contains(result.Problems, p => p.File == vhd && p.Message.Contains("VHD structure"));
    }
}
