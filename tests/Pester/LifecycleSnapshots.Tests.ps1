# Get-VMBackupSnapshot / Remove-VMBackupSnapshot against the simulator: snapshots tagged the way the backup engine
# tags them (SnapshotService) are found, orphans are told from the kept one, and removing orphans removes exactly them.
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Sim = Start-XenSimulator
    Connect-XenPool -Url $Sim.Url -Credential $Sim.Credential
    $script:None = [Threading.CancellationToken]::None
    $script:Api = [VProtect.Core.Xapi.XapiSession]::LoginAsync([uri]$Sim.Url, $Sim.Credential.GetNetworkCredential(), $null, $None).GetAwaiter().GetResult()
    $script:Vm = Get-XenPoolVM | Select-Object -First 1

    function script:New-TaggedSnapshot([string] $Name, [string] $State, [string] $BackupId) {
        $ref = "$($Api.CallAsyncTaskAsync('VM.snapshot', [object[]]@($Vm.OpaqueRef, $Name, [object[]]@()), $null, $None).GetAwaiter().GetResult())"
        $tags = [ordered]@{ 'vprotect:created-by' = 'VProtect.PowerShell'; 'vprotect:vm' = $Vm.Uuid; 'vprotect:state' = $State }
        if ($BackupId) { $tags['vprotect:backup-id'] = $BackupId }
        foreach ($k in $tags.Keys) {
            [void]$Api.CallAsync('VM.add_to_other_config', [object[]]@($ref, $k, $tags[$k]), $None).GetAwaiter().GetResult()
        }
        $Api.CallAsync('VM.get_uuid', [object[]]@($ref), $None).GetAwaiter().GetResult()
    }
}

AfterAll {
    $Api.DisposeAsync().AsTask().GetAwaiter().GetResult()
    Disconnect-XenPool
    $Sim | Stop-XenSimulator -Confirm:$false
}

Describe 'Get-VMBackupSnapshot and Remove-VMBackupSnapshot' {
    It 'lists the tagged snapshots, marks the orphans, and removes exactly them' {
        $crashed = New-TaggedSnapshot 'crashed run' 'in-progress' $null
        $older = New-TaggedSnapshot 'older' 'kept' '20260101T000000000Z-aaaaaa'
        $kept = New-TaggedSnapshot 'newest' 'kept' '20260102T000000000Z-bbbbbb'
        [void]$Api.CallAsyncTaskAsync('VM.snapshot', [object[]]@($Vm.OpaqueRef, "someone else's", [object[]]@()), $null, $None).GetAwaiter().GetResult()

        $all = @(Get-VMBackupSnapshot)
        @($all.Uuid | Sort-Object) | Should -Be @(@($crashed, $older, $kept) | Sort-Object)
        @((Get-VMBackupSnapshot -Orphaned).Uuid | Sort-Object) | Should -Be @(@($crashed, $older) | Sort-Object)
        ($all | Where-Object Uuid -EQ $kept).IsOrphaned | Should -BeFalse
        @(Get-VMBackupSnapshot -VM $Vm.Name).Count | Should -Be 3
        (Get-VMBackupSnapshot | Format-Table | Out-String) | Should -Match 'in-progress'

        Get-VMBackupSnapshot -Orphaned | Remove-VMBackupSnapshot -Confirm:$false
        @((Get-VMBackupSnapshot).Uuid) | Should -Be @($kept)
        @(Get-XenPoolVM -IncludeSnapshots | Where-Object { $_.IsSnapshot -and $_.Name -eq "someone else's" }).Count | Should -Be 1
    }

    It 'calls a kept snapshot orphaned when its backup is not in the given repository' {
        $repo = Join-Path $TestDrive 'repo'
        [void][VProtect.Core.Repository.BackupRepository]::Open($repo, $true)
        $s = @(Get-VMBackupSnapshot -Repository $repo -Orphaned)
        $s.Count | Should -BeGreaterThan 0
        $s[0].OrphanReason | Should -Match 'not in the repository'
    }
}
