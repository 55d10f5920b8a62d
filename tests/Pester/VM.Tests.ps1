# Get-XenPoolVM as a user runs it against the in-process simulator; the simulator's control API is the
# independent source of truth for what the pool holds.
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Sim = Start-XenSimulator
    $script:Session = Connect-XenPool -Url $Sim.Url -Credential $Sim.Credential -PassThru
    $script:Cmd = 'VProtect.PowerShell.Cmdlets'
    # What the simulator says it has (GET /sim/vms), to compare the cmdlet with.
    # Invoke-RestMethod writes a JSON array as one object: unroll it.
    $script:Truth = @(Invoke-RestMethod -Uri ([uri]::new([uri]$Sim.ControlUrl, 'sim/vms')) | ForEach-Object { $_ })
    $script:Listed = @(Get-XenPoolVM)
}

AfterAll {
    Get-Variable -Scope Global -Name VProtectXenPoolSession -ErrorAction SilentlyContinue | Remove-Variable -Scope Global
    $Sim | Stop-XenSimulator -Confirm:$false
}

Describe 'Get-XenPoolVM' {
    It 'lists every VM the simulator has, as XenPoolVM objects' {
        $Listed.Count | Should -BeGreaterThan 0
        $Listed | ForEach-Object { $_ | Should -BeOfType ([VProtect.PowerShell.XenPoolVM]) }
        # The control API never lists dom0.
        $expected = @($Truth | Where-Object { -not $_.isTemplate -and -not $_.isSnapshot } | ForEach-Object uuid | Sort-Object)
        @($Listed.Uuid | Sort-Object) | Should -Be $expected
    }

    It 'never lists a control domain, template or snapshot by default' {
        $Listed | Where-Object { $_.IsTemplate -or $_.IsSnapshot } | Should -BeNullOrEmpty
        # dom0 is a VM record too; read it over XAPI to check it is left out even with every switch.
        $dom0 = @(Get-XenPoolVM -IncludeTemplates -IncludeSnapshots | Where-Object { $_.Uuid -notin $Truth.uuid })
        $dom0 | Should -BeNullOrEmpty
    }

    It 'reports power state, disks and VIFs as the simulator has them' {
        foreach ($vm in $Listed) {
            $t = $Truth | Where-Object uuid -EQ $vm.Uuid
            $vm.Name | Should -Be $t.name
            $vm.PowerState | Should -Be $t.powerState
            $vm.OpaqueRef | Should -Match '^OpaqueRef:'
            $vm.opaque_ref | Should -Be $vm.OpaqueRef
            $vm.Session | Should -Be $Session
            foreach ($d in $vm.Disks) {
                $d.VdiUuid | Should -Match '^[0-9a-f-]{36}$'
                $d.VirtualSize | Should -BeGreaterThan 0
                $d.Device | Should -Not -BeNullOrEmpty
            }
            @($vm.Disks.VdiUuid) | Should -Be @($t.disks.vdiUuid)
            @($vm.Disks.VirtualSize) | Should -Be @($t.disks.virtualSize)
            @($vm.Disks.SrName) | Should -Be @($t.disks.sr)
            @($vm.Vifs.Mac) | Should -Be @($t.vifs.mac)
            @($vm.Vifs.NetworkName) | Should -Be @($t.vifs.network)
            foreach ($v in $vm.Vifs) { $v.Mac | Should -Match '^([0-9a-f]{2}:){5}[0-9a-f]{2}$' }
        }
        @($Listed | Where-Object { $_.Disks.Count -gt 0 }).Count | Should -BeGreaterThan 0
    }

    It 'filters by name with wildcards' {
        $first = $Listed[0]
        $pattern = $first.Name.Substring(0, 1) + '*'
        $got = @(Get-XenPoolVM -Name $pattern)
        $got.Uuid | Should -Contain $first.Uuid
        $got | ForEach-Object { $_.Name | Should -BeLike $pattern }
        @(Get-XenPoolVM -Name $first.Name).Uuid | Should -Contain $first.Uuid
    }

    It 'reports a name that matches nothing as a non-terminating XenObjectNotFound' {
        $got = @(Get-XenPoolVM -Name 'no-such-vm', $Listed[0].Name -ErrorVariable errs -ErrorAction SilentlyContinue)
        $got.Uuid | Should -Contain $Listed[0].Uuid
        @($errs).Count | Should -Be 1
        $errs[0].FullyQualifiedErrorId | Should -Be "XenObjectNotFound,$Cmd.GetXenPoolVMCommand"
        $errs[0].CategoryInfo.Category | Should -Be 'ObjectNotFound'
    }

    It 'a wildcard that matches nothing is not an error' {
        @(Get-XenPoolVM -Name 'no-such-vm*' -ErrorVariable errs) | Should -BeNullOrEmpty
        @($errs).Count | Should -Be 0
    }

    It 'gets VMs by -Uuid and by uuid piped by property name' {
        $u = $Listed[0].Uuid
        (Get-XenPoolVM -Uuid $u).Uuid | Should -Be $u
        ([pscustomobject]@{ uuid = $u } | Get-XenPoolVM).Uuid | Should -Be $u
        @($Listed | Get-XenPoolVM).Count | Should -Be $Listed.Count
    }

    It 'reports an unknown uuid as XenObjectNotFound' {
        { Get-XenPoolVM -Uuid ([guid]::NewGuid()) -ErrorAction Stop } | Should -Throw -ErrorId "XenObjectNotFound,$Cmd.GetXenPoolVMCommand"
    }

    It '-IncludeTemplates and -IncludeSnapshots add what the simulator has' {
        $templates = @($Truth | Where-Object { $_.isTemplate -and -not $_.isSnapshot })
        $snapshots = @($Truth | Where-Object { $_.isSnapshot })
        $templates.Count | Should -BeGreaterThan 0 -Because 'the default scenario has templates to include'
        @(Get-XenPoolVM -IncludeTemplates).Count | Should -Be ($Listed.Count + $templates.Count)
        @(Get-XenPoolVM -IncludeSnapshots).Count | Should -Be ($Listed.Count + $snapshots.Count)
    }

    It 'writes the engine''s verbose messages (from its worker task) on the pipeline' {
        $verbose = @(Get-XenPoolVM -Verbose 4>&1 | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] })
        @($verbose | Where-Object Message -Match '^Read \d+ VM, \d+ VBD, \d+ VDI and \d+ VIF records').Count | Should -Be 1
    }

    It 'has a table view with name, power state, disks and size' {
        (Get-FormatData -TypeName VProtect.PowerShell.XenPoolVM) | Should -Not -BeNullOrEmpty
        $text = $Listed | Format-Table | Out-String -Width 250
        $header = ($text -split "`n" | Where-Object { $_ -match '\S' })[0]
        $header | Should -Match '^Name\s+PowerState\s+Disks\s+Size\(GiB\)\s+VIFs\s+Uuid'
        foreach ($vm in $Listed) { $text | Should -Match ([regex]::Escape($vm.Uuid)) }
    }

    It 'maps a XAPI <Code> failure to <Id> / <Category>' -ForEach @(
        @{ Code = 'RBAC_PERMISSION_DENIED'; Params = @('VM.get_all_records', 'role lacks it'); Id = 'XenPoolPermissionDenied'; Category = 'PermissionDenied' }
        @{ Code = 'HANDLE_INVALID'; Params = @('VM', 'OpaqueRef:gone'); Id = 'XenObjectNotFound'; Category = 'ObjectNotFound' }
        @{ Code = 'INTERNAL_ERROR'; Params = @('boom'); Id = 'XenApiError'; Category = 'InvalidOperation' }
    ) {
        # The simulator fails the next VM.get_all_records with this code (fault injection, count 1).
        $fault = @{ method = 'VM.get_all_records'; error = $Code; params = $Params; count = 1 } | ConvertTo-Json -Compress
        Invoke-RestMethod -Method Post -Uri ([uri]::new([uri]$Sim.ControlUrl, 'sim/faults')) -Body $fault -ContentType 'application/json' | Out-Null
        try {
            $err = { Get-XenPoolVM -ErrorAction Stop } | Should -Throw -PassThru
            $err.FullyQualifiedErrorId | Should -Be "$Id,$Cmd.GetXenPoolVMCommand"
            "$($err.CategoryInfo.Category)" | Should -Be $Category
            $err.Exception.Message | Should -Match $Code
            $err.ErrorDetails.RecommendedAction | Should -Not -BeNullOrEmpty
        }
        finally { Invoke-RestMethod -Method Delete -Uri ([uri]::new([uri]$Sim.ControlUrl, 'sim/faults')) | Out-Null }
        @(Get-XenPoolVM).Count | Should -Be $Listed.Count
    }

    It 'survives a session the pool expired: the session Connect-XenPool made logs in again' {
        $fault = @{ method = 'VM.get_all_records'; error = 'SESSION_INVALID'; params = @($Session.OpaqueRef); count = 1 } | ConvertTo-Json -Compress
        Invoke-RestMethod -Method Post -Uri ([uri]::new([uri]$Sim.ControlUrl, 'sim/faults')) -Body $fault -ContentType 'application/json' | Out-Null
        try {
            @((Invoke-RestMethod -Uri ([uri]::new([uri]$Sim.ControlUrl, 'sim/faults'))).methods).Count | Should -Be 1
            @(Get-XenPoolVM -ErrorAction Stop).Count | Should -Be $Listed.Count
            # The fault fired (it is used up), so the call above really met an expired session.
            @((Invoke-RestMethod -Uri ([uri]::new([uri]$Sim.ControlUrl, 'sim/faults'))).methods).Count | Should -Be 0
        }
        finally { Invoke-RestMethod -Method Delete -Uri ([uri]::new([uri]$Sim.ControlUrl, 'sim/faults')) | Out-Null }
    }
}
