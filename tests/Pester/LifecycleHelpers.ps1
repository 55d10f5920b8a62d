# Shared by the Lifecycle*.Tests.ps1 files: CBT chains written through the engine's repository writer, with an
# independent model of the disk content after each restore point.

$global:Vm = '5b0c1d2e-3f4a-4b5c-8d6e-7f8091a2b3c4'
$global:Size = 8MB
$global:None = [Threading.CancellationToken]::None

function global:New-Model { , [byte[]]::new($Size) }

function global:Write-CbtBackup {
    param($Repo, [string] $Type, [string] $BaseId, $Ranges, [byte[]] $Model)
    $lock = $Repo.LockChainAsync($Vm, [timespan]::FromSeconds(10), $None).GetAwaiter().GetResult()
    $writer = $null
    try {
        $manifest = [VProtect.Core.Repository.BackupManifest]::new()
        $manifest.VmUuid = $Vm; $manifest.VmName = 'web01'; $manifest.Strategy = 'Cbt'; $manifest.Type = $Type; if ($BaseId) { $manifest.BaseId = $BaseId }
        $writer = $Repo.BeginBackup($lock, $manifest)
        $disk = [VProtect.Core.Repository.DiskManifest]::new()
        $disk.Key = 'disk0'; $disk.Device = 'xvda'; $disk.VirtualSize = $Size
        $dw = $writer.AddDisk($disk)
        foreach ($r in $Ranges) {
            [Array]::Copy($r.Data, 0, $Model, $r.Offset, $r.Data.Length)
            $dw.WriteAsync($r.Offset, [ReadOnlyMemory[byte]]::new($r.Data), $None).AsTask().GetAwaiter().GetResult()
        }
        $dw.CompleteAsync($None).AsTask().GetAwaiter().GetResult()
        $writer.WriteVmMetadataAsync(@{ formatVersion = 1; vmUuid = $Vm; vmName = 'web01' }, $None).GetAwaiter().GetResult()
        $writer.CommitAsync($None).GetAwaiter().GetResult()
    }
    finally {
        if ($writer) { $writer.DisposeAsync().AsTask().GetAwaiter().GetResult() }
        $lock.Dispose()
    }
}

function global:New-Ranges([int] $Seed, [int] $Count, [int] $Length) {
    $rng = [Random]::new($Seed)
    $offsets = 0..($Size / $Length - 1) | Sort-Object { $rng.Next() } | Select-Object -First $Count | Sort-Object
    foreach ($o in $offsets) {
        $data = [byte[]]::new($Length); $rng.NextBytes($data)
        [pscustomobject]@{ Offset = [long]$o * $Length; Data = $data }
    }
}

function global:Get-Sha([byte[]] $Bytes) { [Convert]::ToHexString([Security.Cryptography.SHA256]::HashData($Bytes)) }

function global:New-Repository([int] $Incrementals = 3) {
    $root = Join-Path $TestDrive ([guid]::NewGuid().ToString('n'))
    $repo = [VProtect.Core.Repository.BackupRepository]::Open($root, $true)
    $model = New-Model
    $expected = [ordered]@{}
    $m = Write-CbtBackup $repo 'Full' $null (New-Ranges 1 40 128KB) $model
    $expected[$m.Id] = Get-Sha $model
    foreach ($i in 1..$Incrementals) {
        $m = Write-CbtBackup $repo 'Incremental' $m.Id (New-Ranges (10 + $i) 12 64KB) $model
        $expected[$m.Id] = Get-Sha $model
    }
    [pscustomobject]@{ Root = $root; Repo = $repo; Expected = $expected; Model = $model }
}


# Every listed backup of the repository exports to the content it had when it was taken.
function global:Assert-Restorable($R) {
    $listed = @($R.Repo.ListBackups())
    foreach ($b in $listed) {
        $R.Expected.Contains($b.Id) | Should -BeTrue -Because "$($b.Id) must be one of the backups taken"
        $point = Get-VMBackupChain $R.Root | ForEach-Object RestorePoints | Where-Object Id -EQ $b.Id
        $dest = Join-Path $TestDrive ([guid]::NewGuid().ToString('n'))
        $file = Export-VMBackup $point -Destination $dest
        (Get-FileHash $file.FullName -Algorithm SHA256).Hash | Should -Be $R.Expected[$b.Id] -Because "restore point $($b.Id) must restore exactly"
        Remove-Item $dest -Recurse -Force
    }
    $listed
}
