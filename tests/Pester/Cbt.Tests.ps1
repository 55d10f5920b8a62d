# The CBT strategy as a user runs it: Start-VMBackup / Get-VMBackup / Restore-VMBackup against the in-process
# simulator. The control API (/sim/vdi/{uuid}/write, /sha256) is the independent source of truth: guest writes go
# through it and every restored disk's SHA-256 must equal the snapshot VDI's hash recorded at backup time.
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Sim = Start-XenSimulator
    Connect-XenPool -Url $Sim.Url -Credential $Sim.Credential
    $script:Control = [uri]$Sim.ControlUrl
    $script:Repo = Join-Path ([IO.Path]::GetTempPath()) "vprotect-pester-cbt-$([guid]::NewGuid())"
    $script:Nbd = 'Pool-wide network associated with eth0'

    function Get-SimHash([string] $Vdi) { (Invoke-RestMethod -Uri ([uri]::new($Control, "sim/vdi/$Vdi/sha256"))).sha256 }
    function Write-Guest([string] $Vdi, [long] $Offset, [long] $Length, [long] $Seed) {
        Invoke-RestMethod -Method Post -Uri ([uri]::new($Control, "sim/vdi/$Vdi/write?offset=$Offset&length=$Length&seed=$Seed")) | Out-Null
    }
    # The content each backup must restore to: the hash of the snapshot VDI it read, taken right after the backup.
    function Get-PointHashes($Backup) {
        $h = @{}
        foreach ($d in $Backup.Disks) { $h[$d.Key] = Get-SimHash $d.SnapshotVdi }
        $h
    }
    function Assert-Restored($Result, [hashtable] $Expected) {
        @($Result.Disks).Count | Should -Be $Expected.Count
        foreach ($d in $Result.Disks) { Get-SimHash $d.VdiUuid | Should -Be $Expected[$d.SourceVdiUuid] }
    }
    $script:Web = Get-XenPoolVM -Name web-01
}

AfterAll {
    Get-Variable -Scope Global -Name VProtectXenPoolSession -ErrorAction SilentlyContinue | Remove-Variable -Scope Global
    $Sim | Stop-XenSimulator -Confirm:$false
    Remove-Item $Repo -Recurse -Force -ErrorAction SilentlyContinue
}

Describe 'CBT backup and restore through the cmdlets' {
    It '-WhatIf changes nothing on the pool or in the repository' {
        Start-VMBackup -VM web-01 -Repository $Repo -WhatIf
        Test-Path $Repo | Should -BeFalse
        @(Get-XenPoolVM -IncludeSnapshots | Where-Object IsSnapshot) | Should -BeNullOrEmpty
    }

    It 'full, guest writes, incremental, more writes, incremental; latest and middle points restore exactly' {
        Enable-XenNbd -Network $Nbd | Select-Object -ExpandProperty Purpose | Should -Be 'nbd'
        $full = $Web | Start-VMBackup -Repository $Repo -Type Full
        $full.Type | Should -Be 'Full'
        $fullHashes = Get-PointHashes $full

        Write-Guest $Web.Disks[0].VdiUuid (16MB) (3MB) 501
        $inc1 = Start-VMBackup -VM web-01 -Repository $Repo -Type Incremental -NoFallback
        $inc1.Type | Should -Be 'Incremental'
        $inc1.BaseId | Should -Be $full.Id
        $inc1.Changed | Should -Be (3MB)
        $inc1Hashes = Get-PointHashes $inc1

        Write-Guest $Web.Disks[1].VdiUuid (100MB) (64KB) 502
        $inc2 = Start-VMBackup -VM $Web.Uuid -Repository $Repo -Type Incremental -NoFallback
        $inc2.BaseId | Should -Be $inc1.Id
        $inc2.ChainLength | Should -Be 3
        $inc2Hashes = Get-PointHashes $inc2

        $listed = @(Get-VMBackup -Repository $Repo -VM web-01)
        $listed.Id | Should -Be @($full.Id, $inc1.Id, $inc2.Id)
        $listed | ForEach-Object { $_.Status | Should -Be 'Complete' }

        # The original still exists: restores are new VMs with new MACs.
        $latest = $listed[2] | Restore-VMBackup -Name 'web-01 latest' -Confirm:$false
        $latest.NewMacAddresses | Should -BeTrue
        Assert-Restored $latest $inc2Hashes
        $middle = Restore-VMBackup -Repository $Repo -Id $inc1.Id -Name 'web-01 middle' -Confirm:$false
        Assert-Restored $middle $inc1Hashes
        $origMacs = @($Web.Vifs.Mac)
        (Get-XenPoolVM -Uuid $middle.VmUuid).Vifs.Mac | ForEach-Object { $_ | Should -Not -BeIn $origMacs }
        $fullHashes.Count | Should -Be 2
    }

    It '-ExcludeDisk leaves a disk out' {
        $b = Start-VMBackup -VM web-01 -Repository $Repo -Type Full -ExcludeDisk 1
        @($b.Disks).Count | Should -Be 1
        $b.Disks[0].Key | Should -Be $Web.Disks[0].VdiUuid
    }

    It 'an incremental without NBD is a full with the reason, and -NoFallback fails' {
        Disable-XenNbd -Network $Nbd | Select-Object -ExpandProperty Enabled | Should -BeFalse
        { Start-VMBackup -VM web-01 -Repository $Repo -Type Incremental -NoFallback -ErrorAction Stop } | Should -Throw '*NBD*'
        $b = Start-VMBackup -VM web-01 -Repository $Repo -Type Incremental -WarningVariable warnings -WarningAction SilentlyContinue
        $b.Type | Should -Be 'Full'
        $b.FullReason | Should -BeLike '*NBD is not enabled*'
        "$warnings" | Should -BeLike '*full backup instead of an incremental*'
    }

    It 'a failing VM is a non-terminating error and the others are backed up' {
        $out = @(Start-VMBackup -VM 'no-such-vm', 'db-01' -Repository $Repo -ErrorVariable errs -ErrorAction SilentlyContinue)
        $out.Count | Should -Be 1
        $out[0].VM | Should -Be 'db-01'
        @($errs).Count | Should -Be 1
    }

    It 'pre and post snapshot scripts run with $_ set to the context' {
        $script:seen = [System.Collections.Generic.List[string]]::new()
        $null = Start-VMBackup -VM app-02 -Repository $Repo -PreSnapshotScript { $script:seen.Add("pre:$($_.VmName)") } -PostSnapshotScript { $script:seen.Add("post:$($_.Phase)") }
        @($seen) | Should -Be @('pre:app-02', 'post:post-snapshot')
    }

    It 'an HTTP export dropped mid-stream leaves no snapshot and no listed backup; the next run succeeds' {
        $before = @(Get-VMBackup -Repository $Repo -VM app-02).Count
        # The snapshot kept by app-02's earlier backup stays; the failed run must add none.
        $snapsBefore = @(Get-XenPoolVM -IncludeSnapshots | Where-Object IsSnapshot | ForEach-Object Uuid)
        Invoke-RestMethod -Method Post -Uri ([uri]::new($Control, 'sim/faults')) -ContentType 'application/json' `
            -Body (@{ drop = 'http'; afterBytes = 65536; count = 1 } | ConvertTo-Json) | Out-Null
        $null = Start-VMBackup -VM app-02 -Repository $Repo -ErrorVariable errs -ErrorAction SilentlyContinue
        @($errs).Count | Should -Be 1
        @(Get-XenPoolVM -IncludeSnapshots | Where-Object IsSnapshot | ForEach-Object Uuid) | Should -Be $snapsBefore
        @(Get-VMBackup -Repository $Repo -VM app-02).Count | Should -Be $before
        $ok = Start-VMBackup -VM app-02 -Repository $Repo
        $ok.Status | Should -Be 'Complete'
    }
}
