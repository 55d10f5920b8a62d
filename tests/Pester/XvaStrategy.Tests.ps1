# The XVA strategy as a user runs it: full, guest writes, incremental, more writes, incremental; restore each point
# and compare every restored disk's SHA-256 with the source's at that snapshot (the simulator's control API is the
# independent source of truth). Also: damage in the stored XVA is found before anything is imported, and a fallback
# full says why.
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Sim = Start-XenSimulator
    $script:Session = Connect-XenPool -Url $Sim.Url -Credential $Sim.Credential -PassThru
    $script:Repo = Join-Path ([IO.Path]::GetTempPath()) ("vprotect-xva-pester-" + [guid]::NewGuid().ToString('n'))
    $script:Control = [uri]$Sim.ControlUrl

    function Get-SimVm([string] $Name) {
        @(Invoke-RestMethod -Uri ([uri]::new($Control, 'sim/vms')) | ForEach-Object { $_ }) | Where-Object name -EQ $Name
    }
    function Get-SimVmCount { @(Invoke-RestMethod -Uri ([uri]::new($Control, 'sim/vms')) | ForEach-Object { $_ }).Count }
    # userdevice -> SHA-256 of each disk of the VM called $Name.
    function Get-DiskHashes([string] $Name) {
        $vm = @(Get-SimVm $Name)
        $vm.Count | Should -Be 1 -Because "exactly one VM is called '$Name'"
        $h = [ordered]@{}
        foreach ($d in $vm[0].disks) {
            $h[$d.userdevice] = (Invoke-RestMethod -Uri ([uri]::new($Control, "sim/vdi/$($d.vdiUuid)/sha256"))).sha256
        }
        $h
    }
    function Write-Guest([string] $VdiUuid, [long] $Offset, [long] $Length, [long] $Seed) {
        $null = Invoke-RestMethod -Method Post -Uri ([uri]::new($Control, "sim/vdi/$VdiUuid/write?offset=$Offset&length=$Length&seed=$Seed"))
    }
    function Assert-SameHashes($Actual, $Expected) {
        @($Actual.Keys) | Should -Be @($Expected.Keys)
        foreach ($k in $Expected.Keys) { $Actual[$k] | Should -Be $Expected[$k] -Because "disk $k" }
    }

    $script:Source = (Get-SimVm 'web-01')
    $disks = $Source.disks
    $script:Full = Start-VMBackup -VM 'web-01' -Repository $Repo -Strategy Xva -Type Full
    $script:AtFull = Get-DiskHashes 'web-01'
    Write-Guest $disks[0].vdiUuid (3MB) (2MB) 501
    Write-Guest $disks[1].vdiUuid (700MB) (1MB) 502
    $script:Inc1 = Start-VMBackup -VM 'web-01' -Repository $Repo -Strategy Xva -Type Incremental
    $script:AtInc1 = Get-DiskHashes 'web-01'
    Write-Guest $disks[0].vdiUuid (4MB) (512KB) 503
    Write-Guest $disks[0].vdiUuid (1200MB) (64KB) 504
    $script:Inc2 = Start-VMBackup -VM 'web-01' -Repository $Repo -Strategy Xva -Type Incremental
    $script:AtInc2 = Get-DiskHashes 'web-01'
}

AfterAll {
    Get-Variable -Scope Global -Name VProtectXenPoolSession -ErrorAction SilentlyContinue | Remove-Variable -Scope Global
    $Sim | Stop-XenSimulator -Confirm:$false
    Remove-Item -Recurse -Force $Repo -ErrorAction SilentlyContinue
}

Describe 'XVA strategy: full and cumulative incrementals' {
    It 'takes a full, then incrementals that each depend only on the full' {
        $Full.Type | Should -Be 'Full'
        $Full.Strategy | Should -Be 'Xva'
        $Full.FullReason | Should -BeNullOrEmpty
        foreach ($inc in $Inc1, $Inc2) {
            $inc.Type | Should -Be 'Incremental'
            $inc.BaseId | Should -Be $Full.Id
            $inc.FullReason | Should -BeNullOrEmpty
        }
        $AtInc1['0'] | Should -Not -Be $AtFull['0']
        $AtInc2['0'] | Should -Not -Be $AtInc1['0']
    }

    It 'stores the XVA and per-disk VHD deltas with the SHA-256 the repository recorded' {
        $manifest = Get-Content (Join-Path $Full.Path 'backup.json') -Raw | ConvertFrom-Json
        $xva = $manifest.files | Where-Object kind -EQ 'xva'
        $xva.name | Should -Be 'export.xva'
        (Get-FileHash (Join-Path $Full.Path 'export.xva') -Algorithm SHA256).Hash.ToLowerInvariant() | Should -Be $xva.sha256
        $incManifest = Get-Content (Join-Path $Inc2.Path 'backup.json') -Raw | ConvertFrom-Json
        $deltas = @($incManifest.files | Where-Object kind -EQ 'vhd')
        @($deltas.diskKey | Sort-Object) | Should -Be @($Source.disks.vdiUuid | Sort-Object)
        foreach ($d in $deltas) {
            (Get-FileHash (Join-Path $Inc2.Path $d.name) -Algorithm SHA256).Hash.ToLowerInvariant() | Should -Be $d.sha256
        }
    }

    It 'restores the <Label> as a VM (not a template) with the source disks at that snapshot' -ForEach @(
        @{ Label = 'full'; Point = 'Full'; Expected = 'AtFull' }
        @{ Label = 'first incremental'; Point = 'Inc1'; Expected = 'AtInc1' }
        @{ Label = 'second incremental'; Point = 'Inc2'; Expected = 'AtInc2' }
    ) {
        $backup = Get-Variable -Scope Script -Name $Point -ValueOnly
        $name = "restored-xva-$Point"
        $result = Restore-VMBackup -Backup $backup -Name $name -Confirm:$false
        $result.VM | Should -Be $name
        $vm = Get-SimVm $name
        $vm.isTemplate | Should -BeFalse
        $vm.isSnapshot | Should -BeFalse
        Assert-SameHashes (Get-DiskHashes $name) (Get-Variable -Scope Script -Name $Expected -ValueOnly)
    }
}

Describe 'XVA strategy: what the host gets back' {
    It 'the stored XVA is accepted by the host''s /import byte for byte as it was exported' {
        $file = Join-Path $Full.Path 'export.xva'
        $before = Get-SimVmCount
        $uri = "$($Sim.Url.ToString().TrimEnd('/'))/import?session_id=$($Session.OpaqueRef)"
        $response = Invoke-WebRequest -Method Put -Uri $uri -InFile $file -ContentType 'application/octet-stream'
        $response.StatusCode | Should -Be 200
        Get-SimVmCount | Should -Be ($before + 1)
    }

    It 'with -UseCompression stores a zstd XVA that restores to the same disks' {
        $repo2 = Join-Path ([IO.Path]::GetTempPath()) ("vprotect-xva-zstd-" + [guid]::NewGuid().ToString('n'))
        try {
            $b = Start-VMBackup -VM 'db-01' -Repository $repo2 -Strategy Xva -Type Full -UseCompression
            $expected = Get-DiskHashes 'db-01'
            $head = [byte[]]::new(4)
            $fs = [IO.File]::OpenRead((Join-Path $b.Path 'export.xva'))
            try { $null = $fs.Read($head, 0, 4) } finally { $fs.Dispose() }
            ($head | ForEach-Object { $_.ToString('X2') }) -join '' | Should -Be '28B52FFD' -Because 'the host sent a zstd stream'
            $null = Restore-VMBackup -Backup $b -Name 'restored-zstd' -Confirm:$false
            Assert-SameHashes (Get-DiskHashes 'restored-zstd') $expected
        }
        finally { Remove-Item -Recurse -Force $repo2 -ErrorAction SilentlyContinue }
    }
}

Describe 'XVA strategy: damage and fallbacks' {
    It 'finds a corrupted chunk in the stored XVA before anything is imported' {
        $damaged = Join-Path $Repo 'damaged-copy'
        $full = Start-VMBackup -VM 'app-02' -Repository $Repo -Strategy Xva -Type Full
        $file = Join-Path $full.Path 'export.xva'
        $bytes = [IO.File]::ReadAllBytes($file)
        $at = [int]($bytes.Length / 2)
        $bytes[$at] = $bytes[$at] -bxor 0x5A
        [IO.File]::WriteAllBytes($file, $bytes)
        $before = Get-SimVmCount
        { Restore-VMBackup -Backup $full -Name 'never-restored' -Confirm:$false -ErrorAction Stop } | Should -Throw
        Get-SimVmCount | Should -Be $before
        Get-SimVm 'never-restored' | Should -BeNullOrEmpty
        $null = $damaged
    }

    It 'falls back to a full, with the reason, when there is no previous full' {
        $b = Start-VMBackup -VM 'db-01' -Repository $Repo -Strategy Xva -Type Incremental -WarningVariable warnings -WarningAction SilentlyContinue
        $b.Type | Should -Be 'Full'
        $b.FullReason | Should -Match 'no previous XVA full'
        ($warnings -join "`n") | Should -Match 'no previous XVA full'
    }
}
