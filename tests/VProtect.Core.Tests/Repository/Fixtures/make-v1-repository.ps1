# Generates Fixtures/v1-repository with a VERSION-1 engine (commit 4f60336 or earlier): -CoreDir holds that build's
# VProtect.Core.dll, ZstdSharp.dll and System.IO.Hashing.dll. A full, three incrementals (one writing zeros), a v1
# roll-forward of the full and the first incremental into the second (link + append), then one more incremental.
param([string] $Out, [string] $CoreDir)
$ErrorActionPreference = 'Stop'
Add-Type -Path $CoreDir/System.IO.Hashing.dll
Add-Type -Path $CoreDir/ZstdSharp.dll
Add-Type -Path $CoreDir/VProtect.Core.dll
$Vm = '6a1f7c3e-2b4d-4e8f-9a0b-1c2d3e4f5a6b'
$Size = 2MB
$None = [Threading.CancellationToken]::None
$model = [byte[]]::new($Size)
$rng = [Random]::new(2026)
function Block([int] $len) {
    $pattern = [byte[]]::new(32); $rng.NextBytes($pattern)
    $b = [byte[]]::new($len)
    for ($i = 0; $i -lt $len; $i += 32) { [Array]::Copy($pattern, 0, $b, $i, 32) }
    $noise = [byte[]]::new(64); $rng.NextBytes($noise); [Array]::Copy($noise, 0, $b, 100, 64)
    , $b
}
function Write-Backup($repo, $type, $baseId, $ranges) {
    $lock = $repo.LockChainAsync($Vm, [timespan]::FromSeconds(10), $None).GetAwaiter().GetResult()
    $writer = $null
    try {
        $m = [VProtect.Core.Repository.BackupManifest]::new()
        $m.VmUuid = $Vm; $m.VmName = 'web01'; $m.Strategy = 'Cbt'; $m.Type = $type; if ($baseId) { $m.BaseId = $baseId }
        $writer = $repo.BeginBackup($lock, $m)
        $d = [VProtect.Core.Repository.DiskManifest]::new(); $d.Key = 'vdi-disk-0'; $d.Device = 'xvda'; $d.VirtualSize = $Size
        $dw = $writer.AddDisk($d)
        foreach ($r in $ranges) {
            [Array]::Copy($r.Data, 0, $model, $r.Offset, $r.Data.Length)
            if ([Linq.Enumerable]::All([byte[]]$r.Data, [Func[byte,bool]]{ param($x) $x -eq 0 })) { $dw.WriteZeroesAsync($r.Offset, $r.Data.Length, $None).AsTask().GetAwaiter().GetResult() }
            else { $dw.WriteAsync($r.Offset, [ReadOnlyMemory[byte]]::new($r.Data), $None).AsTask().GetAwaiter().GetResult() }
        }
        $dw.CompleteAsync($None).AsTask().GetAwaiter().GetResult()
        $writer.WriteVmMetadataAsync(@{ formatVersion = 1; vmUuid = $Vm; vmName = 'web01' }, $None).GetAwaiter().GetResult()
        $writer.CommitAsync($None).GetAwaiter().GetResult()
    } finally { if ($writer) { $writer.DisposeAsync().AsTask().GetAwaiter().GetResult() }; $lock.Dispose() }
}
$repo = [VProtect.Core.Repository.BackupRepository]::Open($Out, $true)
$expected = [ordered]@{}
$full = Write-Backup $repo 'Full' $null @(0, 3, 4, 5, 8, 9, 12, 15 | ForEach-Object { [pscustomobject]@{ Offset = [long]$_ * 128KB; Data = (Block 128KB) } })
$expected[$full.Id] = [Convert]::ToHexString([Security.Cryptography.SHA256]::HashData($model))
$prev = $full
foreach ($i in 1..3) {
    $ranges = @(foreach ($k in 0..3) { [pscustomobject]@{ Offset = [long](($i * 7 + $k * 9) % 32) * 64KB; Data = $(if ($k -eq 2 -and $i -eq 2) { [byte[]]::new(64KB) } else { Block 64KB }) } }) | Sort-Object Offset -Unique
    $prev = Write-Backup $repo 'Incremental' $prev.Id $ranges
    $expected[$prev.Id] = [Convert]::ToHexString([Security.Cryptography.SHA256]::HashData($model))
    Start-Sleep -Milliseconds 20
}
$ids = @($expected.Keys)
# The version-1 roll-forward: the full and the first incremental are folded into the second incremental.
$actions = [VProtect.Core.Lifecycle.BackupRemover]::PlanRemoval($repo, $Vm, [string[]]@($ids[0], $ids[1]))
$plan = [Func[Collections.Generic.IReadOnlyList[VProtect.Core.Lifecycle.RetentionAction]]]{ , $actions }.GetNewClosure()
[VProtect.Core.Lifecycle.BackupRemover]::ApplyAsync($repo, $Vm, $plan, [timespan]::FromSeconds(10), $null, $null, $None).GetAwaiter().GetResult() | Out-Null
$expected.Remove($ids[0]); $expected.Remove($ids[1])
$last = Write-Backup $repo 'Incremental' $ids[3] @([pscustomobject]@{ Offset = 20 * 64KB; Data = (Block 64KB) })
$expected[$last.Id] = [Convert]::ToHexString([Security.Cryptography.SHA256]::HashData($model))
$expected | ConvertTo-Json | Set-Content (Join-Path $Out 'expected-sha256.json')
Get-ChildItem -Recurse $Out | Select-Object FullName, Length | Format-Table -AutoSize | Out-String -Width 200
