# XVA-strategy restore points with the lifecycle cmdlets, as a user runs them against the simulator: Test-VMBackup
# -Restore compares every restored disk with the backup (and fails on a corrupted one), Mount-VMBackup serves an
# incremental's disk that nbdinfo sizes and qemu-img copies equal to the source disk at that snapshot, and
# Export-VMBackup -Format Raw|Vhd writes it. The expected hashes come from the simulator's control API.
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Sim = Start-XenSimulator
    Connect-XenPool -Url $Sim.Url -Credential $Sim.Credential
    $script:Repo = Join-Path $TestDrive 'repo'
    $script:Control = [uri]$Sim.ControlUrl

    function Get-SimVm([string] $Name) {
        @(Invoke-RestMethod -Uri ([uri]::new($Control, 'sim/vms')) | ForEach-Object { $_ }) | Where-Object name -EQ $Name
    }
    # disk key (source VDI uuid) -> SHA-256 of each disk of the VM, now.
    function Get-DiskHashes([string] $Name) {
        $h = @{}
        foreach ($d in (Get-SimVm $Name).disks) {
            $h[$d.vdiUuid] = (Invoke-RestMethod -Uri ([uri]::new($Control, "sim/vdi/$($d.vdiUuid)/sha256"))).sha256.ToUpperInvariant()
        }
        $h
    }
    function Write-Guest([string] $VdiUuid, [long] $Offset, [long] $Length, [long] $Seed) {
        $null = Invoke-RestMethod -Method Post -Uri ([uri]::new($Control, "sim/vdi/$VdiUuid/write?offset=$Offset&length=$Length&seed=$Seed"))
    }

    $script:Disks = (Get-SimVm 'web-01').disks | Sort-Object userdevice
    $script:DataKey = $Disks[1].vdiUuid          # the 1 GiB data disk: small enough to copy in a test
    $script:Full = Start-VMBackup -VM 'web-01' -Repository $Repo -Strategy Xva -Type Full
    $script:AtFull = Get-DiskHashes 'web-01'
    Write-Guest $Disks[0].vdiUuid (3MB) (2MB) 801
    Write-Guest $DataKey (300MB + 4KB) (1MB) 802
    $script:Inc = Start-VMBackup -VM 'web-01' -Repository $Repo -Strategy Xva -Type Incremental
    $script:AtInc = Get-DiskHashes 'web-01'
    $script:VmsBefore = @(Get-XenPoolVM).Count
}

AfterAll {
    Dismount-VMBackup -All
    Disconnect-XenPool
    $Sim | Stop-XenSimulator -Confirm:$false
}

Describe 'XVA restore points: the chain the tests use' {
    It 'is a full and a cumulative incremental that changed both disks' {
        $Full.Strategy | Should -Be 'Xva'
        $Inc.Type | Should -Be 'Incremental'
        $Inc.BaseId | Should -Be $Full.Id
        $AtInc[$DataKey] | Should -Not -Be $AtFull[$DataKey]
        $AtInc[$Disks[0].vdiUuid] | Should -Not -Be $AtFull[$Disks[0].vdiUuid]
    }
}

Describe 'Mount-VMBackup of an XVA-strategy incremental' {
    It 'serves the data disk that nbdinfo sizes and qemu-img copies equal to the source disk at that snapshot' {
        foreach ($tool in 'nbdinfo', 'qemu-img') { Get-Command $tool -ErrorAction Stop | Out-Null }
        $mount = Mount-VMBackup $Inc -Disk $DataKey
        try {
            $mount.Uri | Should -Match "^nbd://127\.0\.0\.1:\d+/$DataKey$"
            (& nbdinfo --size $mount.Uri) | Should -Be (1GB)
            $out = Join-Path $TestDrive 'inc-data.raw'
            & qemu-img convert -f raw -O raw $mount.Uri $out
            $LASTEXITCODE | Should -Be 0
            (Get-FileHash $out -Algorithm SHA256).Hash | Should -Be $AtInc[$DataKey]
            Remove-Item $out
        }
        finally { Dismount-VMBackup $mount }
    }

    It 'serves every disk of the full, one export per disk key' {
        $mount = Mount-VMBackup $Full
        try {
            @($mount.Uris.Keys | Sort-Object) | Should -Be @($Disks.vdiUuid | Sort-Object)
            (& nbdinfo --size $mount.Uris[$Disks[0].vdiUuid]) | Should -Be (2GB)
        }
        finally { Dismount-VMBackup $mount }
    }
}

Describe 'Export-VMBackup of XVA-strategy restore points' {
    It 'writes the incremental''s data disk as a raw image with the source disk''s hash' {
        $file = Export-VMBackup $Inc -Destination (Join-Path $TestDrive 'raw') -Disk $DataKey
        $file.Name | Should -Be "$DataKey.raw"
        $file.Length | Should -Be (1GB)
        (Get-FileHash $file.FullName -Algorithm SHA256).Hash | Should -Be $AtInc[$DataKey]
        Remove-Item $file.FullName
    }

    It 'writes the full''s data disk as a VHD that qemu-img converts back to the source disk at the full' {
        $file = Export-VMBackup $Full -Destination (Join-Path $TestDrive 'vhd') -Disk $DataKey -Format Vhd
        $out = Join-Path $TestDrive 'full-data.raw'
        & qemu-img convert -f vpc -O raw $file.FullName $out
        $LASTEXITCODE | Should -Be 0
        (Get-FileHash $out -Algorithm SHA256).Hash | Should -Be $AtFull[$DataKey]
        Remove-Item $out, $file.FullName
    }

    It 'refuses -Format Xva for an incremental and says what to use' {
        { Export-VMBackup $Inc -Destination (Join-Path $TestDrive 'x') -Format Xva -ErrorAction Stop } | Should -Throw '*Raw or Vhd*'
    }
}

Describe 'Test-VMBackup -Restore of XVA-strategy backups' {
    It 'passes on a good incremental, comparing every disk, and leaves no test VM behind' {
        $r = Test-VMBackup $Inc -Restore -Verbose 4>&1
        $result = $r | Where-Object { $_ -isnot [Management.Automation.VerboseRecord] }
        $verbose = $r | Where-Object { $_ -is [Management.Automation.VerboseRecord] } | ForEach-Object Message
        $result.Status | Should -Be 'Healthy'
        $result.Restored | Should -BeTrue
        foreach ($d in $Disks) { $verbose | Where-Object { $_ -like "Disk $($d.vdiUuid) restored and read back equal*" } | Should -Not -BeNullOrEmpty }
        @(Get-XenPoolVM).Count | Should -Be $VmsBefore
    }

    It 'fails on a corrupted backup' {
        # Flip a byte in the middle of the full's stored XVA (the incremental depends on it).
        $xva = Join-Path $Full.Path 'export.xva'
        $fs = [IO.File]::Open($xva, 'Open', 'ReadWrite')
        try { $fs.Position = [long]($fs.Length / 2); $b = $fs.ReadByte(); $fs.Position = [long]($fs.Length / 2); $fs.WriteByte($b -bxor 0xFF) } finally { $fs.Dispose() }
        $r = Test-VMBackup $Inc -Restore -WarningAction SilentlyContinue
        $r.Status | Should -Not -Be 'Healthy'
        $r.Restored | Should -BeFalse
        @(Get-XenPoolVM).Count | Should -Be $VmsBefore
    }
}
