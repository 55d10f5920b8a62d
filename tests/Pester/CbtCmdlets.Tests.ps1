# Get-ChangedBlock, Enable-/Disable-XenCbt and Get-/Enable-/Disable-XenNbd against the in-process simulator.
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Sim = Start-XenSimulator
    Connect-XenPool -Url $Sim.Url -Credential $Sim.Credential
    $script:Control = [uri]$Sim.ControlUrl
    $script:Repo = Join-Path ([IO.Path]::GetTempPath()) "vprotect-pester-cbtc-$([guid]::NewGuid())"
    $script:Mgmt = 'Pool-wide network associated with eth0'
}

AfterAll {
    Get-Variable -Scope Global -Name VProtectXenPoolSession -ErrorAction SilentlyContinue | Remove-Variable -Scope Global
    $Sim | Stop-XenSimulator -Confirm:$false
    Remove-Item $Repo -Recurse -Force -ErrorAction SilentlyContinue
}

Describe 'Enable-XenCbt / Disable-XenCbt' {
    It 'turns CBT on and off on every disk of a VM' {
        $on = @(Enable-XenCbt -VM db-01)
        $on.Count | Should -Be 3
        $on | ForEach-Object { $_.CbtEnabled | Should -BeTrue }
        $off = @(Disable-XenCbt -VM db-01)
        $off | ForEach-Object { $_.CbtEnabled | Should -BeFalse }
        @(Disable-XenCbt -VM db-01 -WhatIf).Count | Should -Be 0
    }
}

Describe 'Get-ChangedBlock' {
    It 'reports exactly the 64 KiB blocks a guest wrote between two backups' {
        Enable-XenNbd -Network $Mgmt | Out-Null
        $vm = Get-XenPoolVM -Name web-01
        $full = Start-VMBackup -VM web-01 -Repository $Repo
        Invoke-RestMethod -Method Post -Uri ([uri]::new($Control, "sim/vdi/$($vm.Disks[0].VdiUuid)/write?offset=$(1MB)&length=$(200KB)&seed=7")) | Out-Null
        # A second repository has no history, so the first backup's snapshot is not released and stays a valid base.
        $inc = Start-VMBackup -VM web-01 -Repository (Join-Path $Repo 'second')
        $base = ($full.Disks | Where-Object Key -EQ $vm.Disks[0].VdiUuid).SnapshotVdi
        $new = ($inc.Disks | Where-Object Key -EQ $vm.Disks[0].VdiUuid).SnapshotVdi
        $ranges = @(Get-ChangedBlocks -VDI $new -BaseVDI $base)
        $ranges.Count | Should -Be 1
        $ranges[0].Offset | Should -Be (1MB)
        $ranges[0].Length | Should -Be (256KB)
        $s = Get-ChangedBlock $new $base -Summary
        $s.ChangedBytes | Should -Be (256KB)
    }
}

Describe 'NBD networks' {
    It 'Get-XenNbd shows the purpose Enable-XenNbd set, -Insecure switches it, Disable-XenNbd removes it' {
        (Enable-XenNbd -Network $Mgmt).Purpose | Should -Be 'nbd'
        (Get-XenNbd | Where-Object Network -EQ $Mgmt).Tls | Should -BeTrue
        (Enable-XenNbd -Network $Mgmt -Insecure).Purpose | Should -Be 'insecure_nbd'
        (Disable-XenNbd -Network $Mgmt).Enabled | Should -BeFalse
        @(Get-XenNbd | Where-Object Enabled) | Should -BeNullOrEmpty
    }

    It 'explains NETWORK_INCOMPATIBLE_PURPOSES' {
        Enable-XenNbd -Network $Mgmt | Out-Null
        { Enable-XenNbd -Network 'Storage network eth1' -Insecure -ErrorAction Stop } | Should -Throw '*never both*'
        Disable-XenNbd -Network $Mgmt | Out-Null
    }
}
