# Remove-VMBackup as a user runs it: each retention rule leaves exactly the expected restore points, each of which
# still exports byte for byte to the content it had when taken; a removal killed at random moments never leaves an
# unrestorable repository.
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    . (Join-Path $PSScriptRoot 'LifecycleHelpers.ps1')
}

Describe 'Remove-VMBackup retention' {
    It 'KeepLast 3 rolls the full forward and keeps exactly the three newest points' {
        $R = New-Repository -Incrementals 4
        $ids = @($R.Expected.Keys)
        $done = @(Remove-VMBackup -Repository $R.Root -VM web01 -KeepLast 3 -Confirm:$false)
        @($done | Where-Object Kind -EQ 'Merge').Count | Should -Be 1
        $left = Assert-Restorable $R
        @($left.Id) | Should -Be $ids[2..4]
        $left[0].Type | Should -Be 'Full'
        # Repository format 2: the full and the first incremental became lower layers of the synthetic full, linked.
        $left[0].FormatVersion | Should -Be 2
        $synthetic = (Get-VMBackupChain $R.Root).RestorePoints | Where-Object Id -EQ $ids[2]
        $synthetic.Disks[0].Layers | Should -Be 3
        $synthetic.Disks[0].DeadBytes | Should -BeGreaterThan 0
        (Test-VMBackup -Repository $R.Root).Status | Sort-Object -Unique | Should -Be 'Healthy'
    }

    It 'KeepFullLast 1 removes the older chain whole and leaves the newer one untouched' {
        $R = New-Repository -Incrementals 1
        $old = @($R.Expected.Keys)
        $fresh = New-Model
        $newFull = Write-CbtBackup $R.Repo 'Full' $null (New-Ranges 77 30 128KB) $fresh
        $R.Expected[$newFull.Id] = Get-Sha $fresh
        Remove-VMBackup -Repository $R.Root -VM web01 -KeepFullLast 1 -KeepLast 1 -Confirm:$false | Out-Null
        @((Assert-Restorable $R).Id) | Should -Be @($newFull.Id)
    }

    It 'KeepDays 0 keeps only the newest point; a given backup is removed with its dependents merged' {
        $R = New-Repository -Incrementals 3
        $ids = @($R.Expected.Keys)
        $point = (Get-VMBackupChain $R.Root).RestorePoints | Where-Object Id -EQ $ids[1]
        $point | Remove-VMBackup -Confirm:$false | Out-Null
        @((Assert-Restorable $R).Id) | Should -Be @($ids[0], $ids[2], $ids[3])
        Remove-VMBackup -Repository $R.Root -VM '*' -KeepDays 0 -Confirm:$false | Out-Null
        @((Assert-Restorable $R).Id) | Should -Be @($ids[3])
    }

    It '-WhatIf lists what would be merged and removed and changes nothing' {
        $R = New-Repository -Incrementals 2
        $before = @($R.Repo.ListBackups().Id)
        # "What if:" lines go to the host: capture them with a transcript.
        $log = Join-Path $TestDrive 'whatif.txt'
        Start-Transcript -Path $log | Out-Null
        try { Remove-VMBackup -Repository $R.Root -VM web01 -KeepLast 1 -WhatIf }
        finally { Stop-Transcript | Out-Null }
        $out = Get-Content -Raw $log
        $out | Should -Match "Merge .*$($before[0])"
        $out | Should -Match "Remove"
        @($R.Repo.ListBackups().Id) | Should -Be $before
    }
}

Describe 'Remove-VMBackup killed mid-way' {
    It 'leaves a consistent, restorable repository each of ten times, and a later run completes it' {
        $exe = (Get-Process -Id $PID).Path
        $lead = @(if ([IO.Path]::GetFileNameWithoutExtension($exe) -eq 'dotnet') { [Environment]::GetCommandLineArgs()[0] })
        $rng = [Random]::new(20261127)
        foreach ($round in 1..10) {
            $R = New-Repository -Incrementals 3
            $ids = @($R.Expected.Keys)
            $script = "Import-Module '$env:VPROTECT_MODULE_PATH'; Remove-VMBackup -Repository '$($R.Root)' -VM web01 -KeepLast 2 -Confirm:`$false | Out-Null"
            $psi = [Diagnostics.ProcessStartInfo]::new($exe)
            foreach ($a in $lead + @('-NoProfile', '-NonInteractive', '-Command', $script)) { $psi.ArgumentList.Add($a) }
            $p = [Diagnostics.Process]::Start($psi)
            try {
                # A random moment within start-up and the run; killing the whole tree like a power cut would.
                if (-not $p.WaitForExit($rng.Next(300, 4000))) { $p.Kill($true) }
                $p.WaitForExit(30000) | Out-Null
            }
            finally { $p.Dispose() }
            $left = Assert-Restorable $R
            @($left.Id | Where-Object { $_ -notin $ids }) | Should -BeNullOrEmpty
            Remove-VMBackup -Repository $R.Root -VM web01 -KeepLast 2 -Confirm:$false | Out-Null
            @((Assert-Restorable $R).Id) | Should -Be $ids[2..3]
            @(Get-ChildItem (Join-Path $R.Root "vms/$Vm") -Force -Directory | Where-Object Name -Like '.*') | Should -BeNullOrEmpty
        }
    }
}
