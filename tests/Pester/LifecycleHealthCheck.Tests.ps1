# Test-VMBackup -Restore, the weekly health check: backups taken with Start-VMBackup from the simulator are restored
# as a new VM, every disk is read back over /export_raw_vdi and compared with the backup, and the test VM is removed.
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Sim = Start-XenSimulator
    Connect-XenPool -Url $Sim.Url -Credential $Sim.Credential
    $script:Repo = Join-Path $TestDrive 'repo'
    $script:Full = Get-XenPoolVM -Name web-01 | Start-VMBackup -Repository $Repo -Type Full
    $script:Inc = Start-VMBackup -VM web-01 -Repository $Repo -Type Incremental
    $script:VmsBefore = @(Get-XenPoolVM).Count
}

AfterAll {
    Disconnect-XenPool
    $Sim | Stop-XenSimulator -Confirm:$false
}

Describe 'Test-VMBackup -Restore' {
    It 'passes on a good backup and leaves no test VM behind' {
        $r = Test-VMBackup $Inc -Restore
        $r.Status | Should -Be 'Healthy'
        $r.Restored | Should -BeTrue
        @(Get-XenPoolVM).Count | Should -Be $VmsBefore
    }

    It 'fails on a corrupted backup' {
        # Flip a byte inside the first stored record of the full's first disk with data.
        # (Without an NBD network the "incremental" may have become a full, saying why: corrupt what it depends on.)
        $target = if ($Inc.BaseId) { $Full } else { $Inc }
        $done = $false
        foreach ($disk in $target.Disks) {
            $index = Join-Path $target.Path "disks/$($disk.Key).index"
            $data = Join-Path $target.Path "disks/$($disk.Key).data"
            $record = [VProtect.Core.Repository.BlockIndex]::Read($index, $disk.VirtualSize, [long]::MaxValue) | Where-Object { -not $_.IsZero } | Select-Object -First 1
            if (-not $record) { continue }
            $fs = [IO.File]::Open($data, 'Open', 'ReadWrite')
            try { $fs.Position = $record.FileOffset; $b = $fs.ReadByte(); $fs.Position = $record.FileOffset; $fs.WriteByte($b -bxor 0xFF) } finally { $fs.Dispose() }
            $done = $true; break
        }
        $done | Should -BeTrue
        $r = Test-VMBackup $Inc -Restore -WarningAction SilentlyContinue
        $r.Status | Should -Not -Be 'Healthy'
        $r.Restored | Should -BeFalse
        @(Get-XenPoolVM).Count | Should -Be $VmsBefore
    }
}
