# Issues 6 and 7 as a user meets them: a disk resized (VDI.resize through XAPI) or added since the last backup makes
# the next incremental a full that says why, -NoFallback makes it an error record instead, and the restore has the new
# size and the right SHA-256 (the simulator's control API is the independent source of truth). Also -PurgeSnapshotData
# with the CBT strategy: the kept snapshot keeps only CBT metadata and the next incremental still works.
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Sim = Start-XenSimulator
    Connect-XenPool -Url $Sim.Url -Credential $Sim.Credential
    $script:Control = [uri]$Sim.ControlUrl
    $script:Repo = Join-Path ([IO.Path]::GetTempPath()) "vprotect-pester-resize-$([guid]::NewGuid().ToString('n'))"
    $script:None = [Threading.CancellationToken]::None
    $script:Api = [VProtect.Core.Xapi.XapiSession]::LoginAsync([uri]$Sim.Url, $Sim.Credential.GetNetworkCredential(), $null, $None).GetAwaiter().GetResult()
    $null = Enable-XenNbd -Network 'Pool-wide network associated with eth0'

    function script:Get-SimVm([string] $Name) {
        @(Invoke-RestMethod -Uri ([uri]::new($Control, 'sim/vms')) | ForEach-Object { $_ }) | Where-Object name -EQ $Name
    }
    function script:Get-SimHash([string] $Vdi) { (Invoke-RestMethod -Uri ([uri]::new($Control, "sim/vdi/$Vdi/sha256"))).sha256 }
    function script:Write-Guest([string] $Vdi, [long] $Offset, [long] $Length, [long] $Seed) {
        $null = Invoke-RestMethod -Method Post -Uri ([uri]::new($Control, "sim/vdi/$Vdi/write?offset=$Offset&length=$Length&seed=$Seed"))
    }
    function script:Invoke-Xapi([string] $Method, [object[]] $Arguments) {
        $Api.CallAsync($Method, $Arguments, $None).GetAwaiter().GetResult()
    }
    # VDI.resize through XAPI (as an administrator would, with the VM halted); returns the size the host settled on.
    function script:Resize-Disk([string] $VdiUuid, [long] $Grow) {
        $ref = $Api.GetByUuidAsync('VDI', $VdiUuid, $None).GetAwaiter().GetResult()
        $size = [long](Invoke-Xapi 'VDI.get_virtual_size' @($ref))
        $null = $Api.CallAsyncTaskAsync('VDI.resize', [object[]]@($ref, [long]($size + $Grow)), $null, $None).GetAwaiter().GetResult()
        [long](Invoke-Xapi 'VDI.get_virtual_size' @($ref))
    }
    # userdevice -> "size:sha256" of every disk of the VM called $Name.
    function script:Get-DiskState([string] $Name) {
        $vm = @(Get-SimVm $Name)
        $vm.Count | Should -Be 1 -Because "exactly one VM is called '$Name'"
        $h = @{}
        foreach ($d in $vm[0].disks) { $h[[string]$d.userdevice] = "$($d.virtualSize):$(Get-SimHash $d.vdiUuid)" }
        $h
    }
    function script:Assert-SameState([hashtable] $Actual, [hashtable] $Expected) {
        @($Actual.Keys | Sort-Object) | Should -Be @($Expected.Keys | Sort-Object)
        foreach ($k in $Expected.Keys) { $Actual[$k] | Should -Be $Expected[$k] -Because "disk $k" }
    }
}

AfterAll {
    $Api.DisposeAsync().AsTask().GetAwaiter().GetResult()
    Get-Variable -Scope Global -Name VProtectXenPoolSession -ErrorAction SilentlyContinue | Remove-Variable -Scope Global
    $Sim | Stop-XenSimulator -Confirm:$false
    Remove-Item $Repo -Recurse -Force -ErrorAction SilentlyContinue
}

Describe 'A disk resized since the last backup' {
    It 'CBT: the incremental is a full naming the resize, -NoFallback is an error record, the restore has the new size and SHA-256' {
        $full = Start-VMBackup -VM db-01 -Repository $Repo -Strategy Cbt -Type Full
        $disk = (Get-SimVm 'db-01').disks | Where-Object userdevice -EQ '1'
        $newSize = Resize-Disk $disk.vdiUuid (64MB)
        $newSize | Should -Be ($disk.virtualSize + 64MB)
        Write-Guest $disk.vdiUuid ($disk.virtualSize + 1MB) (2MB) 601   # into the new area

        $out = Start-VMBackup -VM db-01 -Repository $Repo -Strategy Cbt -Type Incremental -NoFallback -ErrorVariable errs -ErrorAction SilentlyContinue
        $out | Should -BeNullOrEmpty
        @($errs).Count | Should -Be 1
        $errs[0].FullyQualifiedErrorId | Should -BeLike 'IncrementalNotPossible*'
        "$($errs[0])" | Should -BeLike "*$($disk.vdiUuid)*was resized*"
        @(Get-VMBackup -Repository $Repo -VM db-01).Count | Should -Be 1

        $b = Start-VMBackup -VM db-01 -Repository $Repo -Strategy Cbt -Type Incremental -WarningVariable warnings -WarningAction SilentlyContinue
        $b.Type | Should -Be 'Full'
        $b.BaseId | Should -BeNullOrEmpty
        $b.FullReason | Should -BeLike "*was resized*($($disk.virtualSize) -> $newSize bytes)*"
        "$warnings" | Should -BeLike '*full backup instead of an incremental*resized*'
        ($b.Disks | Where-Object Key -EQ $disk.vdiUuid).VirtualSize | Should -Be $newSize
        $atBackup = Get-DiskState 'db-01'

        $r = $b | Restore-VMBackup -Name 'db-01 cbt resized' -Confirm:$false
        @($r.Disks).Count | Should -Be 3
        Assert-SameState (Get-DiskState 'db-01 cbt resized') $atBackup
    }

    It 'XVA: the incremental is a full naming the resize, -NoFallback is an error record, the restore has the new size and SHA-256' {
        $full = Start-VMBackup -VM db-01 -Repository $Repo -Strategy Xva -Type Full
        $disk = (Get-SimVm 'db-01').disks | Where-Object userdevice -EQ '0'
        $newSize = Resize-Disk $disk.vdiUuid (32MB)
        Write-Guest $disk.vdiUuid ($newSize - 4MB) (1MB) 602

        { Start-VMBackup -VM db-01 -Repository $Repo -Strategy Xva -Type Incremental -NoFallback -ErrorAction Stop } |
            Should -Throw -ErrorId 'IncrementalNotPossible*' -ExpectedMessage '*was resized*'

        $b = Start-VMBackup -VM db-01 -Repository $Repo -Strategy Xva -Type Incremental -WarningAction SilentlyContinue
        $b.Type | Should -Be 'Full'
        $b.FullReason | Should -BeLike "*was resized from $($disk.virtualSize) to $newSize bytes since the full backup $($full.Id)*"
        $atBackup = Get-DiskState 'db-01'

        $null = $b | Restore-VMBackup -Name 'db-01 xva resized' -Confirm:$false
        Assert-SameState (Get-DiskState 'db-01 xva resized') $atBackup
    }

    It 'XVA: a disk added since the full makes the incremental a full naming that disk' {
        $null = Start-VMBackup -VM app-02 -Repository $Repo -Strategy Xva -Type Full
        $vmRef = (Get-XenPoolVM -Name app-02).OpaqueRef
        $sr = @(Invoke-Xapi 'SR.get_by_name_label' @('Shared NFS storage'))[0]
        $vdi = Invoke-Xapi 'VDI.create' @(@{ name_label = 'added'; name_description = ''; SR = [string]$sr; virtual_size = [long]64MB; type = 'user'
                sharable = $false; read_only = $false; other_config = @{} })
        $null = Invoke-Xapi 'VBD.create' @(@{ VM = [string]$vmRef; VDI = [string]$vdi; userdevice = '1'; bootable = $false; mode = 'RW'; type = 'Disk'
                empty = $false; other_config = @{}; qos_algorithm_type = ''; qos_algorithm_params = @{} })
        $vdiUuid = Invoke-Xapi 'VDI.get_uuid' @($vdi)

        { Start-VMBackup -VM app-02 -Repository $Repo -Strategy Xva -Type Incremental -NoFallback -ErrorAction Stop } |
            Should -Throw -ErrorId 'IncrementalNotPossible*' -ExpectedMessage "*$vdiUuid*was added*"
        $b = Start-VMBackup -VM app-02 -Repository $Repo -Strategy Xva -Type Incremental -WarningAction SilentlyContinue
        $b.Type | Should -Be 'Full'
        $b.FullReason | Should -BeLike "*$vdiUuid*was added since the full backup*"
    }
}

Describe '-PurgeSnapshotData with the CBT strategy' {
    It 'keeps only CBT metadata of the kept snapshot, and the next incremental still works and restores exactly' {
        $web = Get-XenPoolVM -Name web-01
        $full = Start-VMBackup -VM web-01 -Repository $Repo -Type Full -PurgeSnapshotData
        $full.Type | Should -Be 'Full'
        @(Get-XenPoolVM -IncludeSnapshots | Where-Object Uuid -EQ $full.SnapshotUuid) | Should -BeNullOrEmpty
        # No snapshot VM is kept; the metadata-only disks are (one CbtMetadata object, the base of the next incremental).
        $kept = @(Get-VMBackupSnapshot -VM web-01)
        $kept.Count | Should -Be 1
        $kept[0].Kind | Should -Be 'CbtMetadata'
        $kept[0].BackupId | Should -Be $full.Id
        $kept[0].IsOrphaned | Should -BeFalse
        foreach ($d in $full.Disks) {
            $ref = $Api.GetByUuidAsync('VDI', $d.SnapshotVdi, $None).GetAwaiter().GetResult()
            Invoke-Xapi 'VDI.get_type' @($ref) | Should -Be 'cbt_metadata'
            Invoke-Xapi 'VDI.get_cbt_enabled' @($ref) | Should -BeTrue
        }

        Write-Guest $web.Disks[0].VdiUuid (40MB) (2MB) 603
        $inc = Start-VMBackup -VM web-01 -Repository $Repo -Type Incremental -NoFallback -PurgeSnapshotData
        $inc.Type | Should -Be 'Incremental'
        $inc.BaseId | Should -Be $full.Id
        $inc.Changed | Should -Be (2MB)
        $expected = @{}
        foreach ($d in $web.Disks) { $expected[$d.VdiUuid] = Get-SimHash $d.VdiUuid }
        # The full's metadata was the base of this incremental and is released; the incremental's is now the base.
        foreach ($d in $full.Disks) {
            { $Api.GetByUuidAsync('VDI', $d.SnapshotVdi, $None).GetAwaiter().GetResult() } | Should -Throw '*UUID_INVALID*'
        }
        foreach ($d in $inc.Disks) {
            $ref = $Api.GetByUuidAsync('VDI', $d.SnapshotVdi, $None).GetAwaiter().GetResult()
            Invoke-Xapi 'VDI.get_type' @($ref) | Should -Be 'cbt_metadata'
        }
        @(Get-VMBackupSnapshot -VM web-01).BackupId | Should -Be @($inc.Id)

        $r = $inc | Restore-VMBackup -Name 'web-01 purged chain' -Confirm:$false
        @($r.Disks).Count | Should -Be 2
        foreach ($d in $r.Disks) { Get-SimHash $d.VdiUuid | Should -Be $expected[$d.SourceVdiUuid] }
    }
}
