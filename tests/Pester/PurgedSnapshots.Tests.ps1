# Get-VMBackupSnapshot / Remove-VMBackupSnapshot and the metadata-only disks Start-VMBackup -PurgeSnapshotData keeps,
# as a user meets them: listed (Kind CbtMetadata) while they are the base of the next incremental, orphaned once the
# chain's backup is removed from the repository or the VM is destroyed, and removed (exactly those VDIs) with
# Remove-VMBackupSnapshot, honouring -WhatIf.
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Sim = Start-XenSimulator
    Connect-XenPool -Url $Sim.Url -Credential $Sim.Credential
    $script:Repo = Join-Path ([IO.Path]::GetTempPath()) "vprotect-pester-purgelist-$([guid]::NewGuid().ToString('n'))"
    $script:None = [Threading.CancellationToken]::None
    $script:Api = [VProtect.Core.Xapi.XapiSession]::LoginAsync([uri]$Sim.Url, $Sim.Credential.GetNetworkCredential(), $null, $None).GetAwaiter().GetResult()
    $null = Enable-XenNbd -Network 'Pool-wide network associated with eth0'

    # Every VDI uuid on the pool, read through XAPI (independent of the cmdlets under test).
    function script:Get-AllVdiUuids {
        @($Api.GetAllRecordsAsync[VProtect.Core.Xapi.Records.VdiRecord]($None).GetAwaiter().GetResult() | ForEach-Object Uuid | Sort-Object)
    }
}

AfterAll {
    $Api.DisposeAsync().AsTask().GetAwaiter().GetResult()
    Disconnect-XenPool
    $Sim | Stop-XenSimulator -Confirm:$false
    Remove-Item -LiteralPath $Repo -Recurse -Force -ErrorAction SilentlyContinue
}

Describe 'Get-VMBackupSnapshot and Remove-VMBackupSnapshot with -PurgeSnapshotData' {
    It 'lists the kept metadata-only disks, orphans them when the backup leaves the repository, and removes exactly them' {
        $full = Start-VMBackup -VM web-01 -Repository $Repo -Type Full -PurgeSnapshotData
        $s = @(Get-VMBackupSnapshot -VM web-01 -Repository $Repo)
        $s.Count | Should -Be 1
        $s[0].Kind | Should -Be 'CbtMetadata'
        $s[0].VmName | Should -Be 'web-01'
        $s[0].BackupId | Should -Be $full.Id
        @($s[0].VdiUuids | Sort-Object) | Should -Be @($full.Disks.SnapshotVdi | Sort-Object)
        $s[0].IsOrphaned | Should -BeFalse
        @(Get-VMBackupSnapshot -Orphaned) | Should -BeNullOrEmpty
        (Get-VMBackupSnapshot | Format-Table | Out-String) | Should -Match 'CbtMetadata'

        $full | Remove-VMBackup -Confirm:$false
        $o = @(Get-VMBackupSnapshot -Repository $Repo -Orphaned)
        $o.Count | Should -Be 1
        $o[0].Kind | Should -Be 'CbtMetadata'
        $o[0].OrphanReason | Should -Match 'not in the repository'

        $before = Get-AllVdiUuids
        $o | Remove-VMBackupSnapshot -WhatIf
        Get-AllVdiUuids | Should -Be $before
        $o | Remove-VMBackupSnapshot -Confirm:$false
        Get-AllVdiUuids | Should -Be @($before | Where-Object { $_ -notin $o[0].VdiUuids })
        @(Get-VMBackupSnapshot) | Should -BeNullOrEmpty
        # Already gone: no error.
        $o | Remove-VMBackupSnapshot -Confirm:$false -ErrorAction Stop
    }

    It 'calls the kept metadata orphaned once its VM is destroyed' {
        $full = Start-VMBackup -VM db-01 -Repository $Repo -Type Full -PurgeSnapshotData
        $vm = Get-XenPoolVM -Name db-01
        (Get-VMBackupSnapshot -VM db-01).IsOrphaned | Should -BeFalse
        if ($vm.PowerState -ne 'Halted') {
            [void]$Api.CallAsyncTaskAsync('VM.hard_shutdown', [object[]]@($vm.OpaqueRef), $null, $None).GetAwaiter().GetResult()
        }
        [void]$Api.CallAsyncTaskAsync('VM.destroy', [object[]]@($vm.OpaqueRef), $null, $None).GetAwaiter().GetResult()

        $o = @(Get-VMBackupSnapshot -Orphaned)
        $o.Count | Should -Be 1
        $o[0].VmUuid | Should -Be $vm.Uuid
        $o[0].BackupId | Should -Be $full.Id
        $o[0].OrphanReason | Should -Match 'no longer exists'
        $o | Remove-VMBackupSnapshot -Confirm:$false
        foreach ($u in $full.Disks.SnapshotVdi) {
            { $Api.GetByUuidAsync('VDI', $u, $None).GetAwaiter().GetResult() } | Should -Throw '*UUID_INVALID*'
        }
    }
}
