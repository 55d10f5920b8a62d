# Living with backups, as a user would: a CBT chain written into a repository (through the engine's own writer,
# no hypervisor), then Get-VMBackupChain, Test-VMBackup finding damage, Mount-VMBackup read by nbdinfo/qemu-img,
# and Export-VMBackup. The expected disk content is a model built independently of the repository reader.
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    . (Join-Path $PSScriptRoot 'LifecycleHelpers.ps1')
}

Describe 'Get-VMBackupChain' {
    BeforeAll { $script:R = New-Repository }

    It 'lists one chain with the full and three incrementals in order' {
        $chains = @(Get-VMBackupChain -Repository $R.Root)
        $chains.Count | Should -Be 1
        $chains[0] | Should -BeOfType ([VProtect.PowerShell.VMBackupChain])
        $chains[0].RestorePointCount | Should -Be 4
        @($chains[0].RestorePoints.Id) | Should -Be @($R.Expected.Keys)
        $chains[0].Full.Type | Should -Be 'Full'
        $chains[0].TotalSize | Should -Be (($R.Repo.ListBackups() | Measure-Object StoredBytes -Sum).Sum)
        $chains[0].Tree | Should -Match '└─'
        (Get-VMBackupChain $R.Root | Format-Table | Out-String) | Should -Match 'web01'
    }

    It 'filters by VM name and reports nothing for another VM' {
        @(Get-VMBackupChain $R.Root -VM 'web*').Count | Should -Be 1
        @(Get-VMBackupChain $R.Root -VM 'db*').Count | Should -Be 0
    }

    It 'fails with BackupRepositoryError for a folder that is not a repository' {
        { Get-VMBackupChain -Repository $TestDrive -ErrorAction Stop } | Should -Throw -ErrorId 'BackupRepositoryError*'
    }
}

Describe 'Test-VMBackup' {
    BeforeEach { $script:R = New-Repository }

    It 'finds every restore point of a good repository healthy' {
        $results = @(Test-VMBackup -Repository $R.Root)
        $results.Count | Should -Be 4
        $results | ForEach-Object { $_.Status | Should -Be 'Healthy'; $_.BlocksChecked | Should -BeGreaterThan 0 }
    }

    It 'finds a flipped byte in a block and names the backup, the file and the record offset' {
        $points = (Get-VMBackupChain $R.Root).RestorePoints
        $victim = $points[2]
        $data = Join-Path $victim.Path 'disks/disk0.data'
        $bytes = [IO.File]::ReadAllBytes($data)
        $bytes[100] = $bytes[100] -bxor 0x10
        [IO.File]::WriteAllBytes($data, $bytes)
        $results = @($points | Test-VMBackup -WarningAction SilentlyContinue)
        @($results.Status) | Should -Be @('Healthy', 'Healthy', 'Damaged', 'Damaged')
        $problem = $results[3].Problems | Select-Object -First 1
        $problem.BackupId | Should -Be $victim.Id
        $problem.File | Should -Be $data
        $problem.Offset | Should -Be 0
        $problem.Message | Should -Match 'hash'
    }

    It 'finds a truncated file' {
        $points = (Get-VMBackupChain $R.Root).RestorePoints
        $data = Join-Path $points[0].Path 'disks/disk0.data'
        $fs = [IO.File]::Open($data, 'Open', 'ReadWrite'); $fs.SetLength($fs.Length - 1000); $fs.Dispose()
        $result = Test-VMBackup $points[3] -WarningAction SilentlyContinue
        $result.Status | Should -Be 'Damaged'
        @($result.Problems | Where-Object { $_.File -eq $data -and $_.Message -match 'truncated' }).Count | Should -BeGreaterThan 0
    }

    It 'finds a missing incremental and names it' {
        $points = (Get-VMBackupChain $R.Root).RestorePoints
        $missing = $points[1]
        Remove-Item $missing.Path -Recurse -Force
        $result = Test-VMBackup $points[3] -WarningVariable warnings -WarningAction SilentlyContinue
        $result.Status | Should -Be 'BrokenChain'
        $result.Problems[0].Message | Should -Match $missing.Id
        "$warnings" | Should -Match $missing.Id
    }
}

Describe 'Mount-VMBackup' {
    BeforeAll {
        $script:R = New-Repository
        $script:Points = (Get-VMBackupChain $R.Root).RestorePoints
    }
    AfterAll { Dismount-VMBackup -All }

    It 'serves a restore point that nbdinfo sizes and qemu-img copies byte for byte' {
        foreach ($tool in 'nbdinfo', 'qemu-img') { Get-Command $tool -ErrorAction Stop | Out-Null }
        foreach ($point in $Points[1], $Points[3]) {
            $mount = Mount-VMBackup $point
            try {
                $mount.Uri | Should -Match '^nbd://127\.0\.0\.1:\d+/disk0$'
                (& nbdinfo --size $mount.Uri) | Should -Be $Size
                $out = Join-Path $TestDrive "$($point.Id).raw"
                & qemu-img convert -f raw -O raw $mount.Uri $out
                $LASTEXITCODE | Should -Be 0
                (Get-FileHash $out -Algorithm SHA256).Hash | Should -Be $R.Expected[$point.Id]
            }
            finally { Dismount-VMBackup $mount }
        }
    }

    It 'serves on a Unix socket and stops on Dismount' {
        $sock = Join-Path $TestDrive 'm.sock'
        $mount = Mount-VMBackup $Points[0] -UnixSocket $sock
        $mount.Uri | Should -Be "nbd+unix:///disk0?socket=$sock"
        (& nbdinfo --size $mount.Uri) | Should -Be $Size
        Dismount-VMBackup $mount
        & nbdinfo --size $mount.Uri 2>$null
        $LASTEXITCODE | Should -Not -Be 0
    }
}

Describe 'Export-VMBackup' {
    BeforeAll {
        $script:R = New-Repository
        $script:Point = (Get-VMBackupChain $R.Root).RestorePoints[2]
    }

    It 'writes a raw image equal to the restore point' {
        $file = Export-VMBackup $Point -Destination (Join-Path $TestDrive 'raw')
        $file.Length | Should -Be $Size
        (Get-FileHash $file.FullName -Algorithm SHA256).Hash | Should -Be $R.Expected[$Point.Id]
    }

    It 'writes a VHD that qemu-img converts back to the restore point' {
        $file = Export-VMBackup $Point -Destination (Join-Path $TestDrive 'vhd') -Format Vhd
        $out = Join-Path $TestDrive 'from-vhd.raw'
        & qemu-img convert -f vpc -O raw $file.FullName $out
        $LASTEXITCODE | Should -Be 0
        (Get-FileHash $out -Algorithm SHA256).Hash | Should -Be $R.Expected[$Point.Id]
    }

    It 'refuses -Format Xva for a block backup' {
        { Export-VMBackup $Point -Destination (Join-Path $TestDrive 'x') -Format Xva -ErrorAction Stop } | Should -Throw
    }
}
