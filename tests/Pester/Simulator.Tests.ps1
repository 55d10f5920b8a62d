# Start-XenSimulator / Stop-XenSimulator, and the simulator run out of process as the tests and demo also do.
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Cmd = 'VProtect.PowerShell.Cmdlets'
    function Test-Listening([string] $Url) {
        $u = [uri]$Url
        $c = [System.Net.Sockets.TcpClient]::new()
        try { $c.Connect('127.0.0.1', $u.Port); $true } catch { $false } finally { $c.Dispose() }
    }
}

AfterAll {
    Get-Variable -Scope Global -Name VProtectXenPoolSession -ErrorAction SilentlyContinue | Remove-Variable -Scope Global
    Stop-XenSimulator -Confirm:$false
}

Describe 'Start-XenSimulator' {
    It 'starts a simulator on loopback and describes it' {
        $sim = Start-XenSimulator
        try {
            $sim | Should -BeOfType ([VProtect.PowerShell.XenSimulatorInfo])
            $sim.Url | Should -Match '^http://127\.0\.0\.1:\d+/?$'
            $sim.HttpsUrl | Should -Match '^https://127\.0\.0\.1:\d+/?$'
            $sim.MemberUrl | Should -Match '^https?://127\.\d+\.\d+\.\d+:\d+/?$'
            $sim.MemberUrl | Should -Not -Be $sim.Url
            $sim.ControlUrl | Should -Match '^http://127\.0\.0\.1:\d+'
            $sim.NbdPort | Should -BeGreaterThan 0
            $sim.Credential | Should -BeOfType ([pscredential])
            $sim.CertificateThumbprint | Should -Match '^[0-9A-F]{64}$'
            $sim.IsRunning | Should -BeTrue
            Test-Listening $sim.Url | Should -BeTrue
            Test-Listening $sim.HttpsUrl | Should -BeTrue
            # The list view shows the user name, never the password.
            $text = $sim | Format-List | Out-String -Width 250
            $text | Should -Match "UserName\s+: $([regex]::Escape($sim.Credential.UserName))"
            $text | Should -Match ([regex]::Escape($sim.CertificateThumbprint))
            $text | Should -Not -Match ([regex]::Escape($sim.Credential.GetNetworkCredential().Password))
        }
        finally { $sim | Stop-XenSimulator }
    }

    It 'accepts the credential given with -Credential, and no other' {
        $cred = [pscredential]::new('admin', (ConvertTo-SecureString 'lab-only-1' -AsPlainText -Force))
        $sim = Start-XenSimulator -Credential $cred
        try {
            $sim.Credential.UserName | Should -Be 'admin'
            $sim.Credential.GetNetworkCredential().Password | Should -Be 'lab-only-1'
            (Connect-XenPool -Url $sim.Url -Credential $cred -PassThru).UserName | Should -Be 'admin'
            $bad = [pscredential]::new('root', (ConvertTo-SecureString 'lab-only-1' -AsPlainText -Force))
            { Connect-XenPool -Url $sim.Url -Credential $bad -ErrorAction Stop } | Should -Throw -ErrorId "XenPoolAuthenticationFailed,$Cmd.ConnectXenPoolCommand"
        }
        finally { $sim | Stop-XenSimulator }
    }

    It 'fails with SimulatorStartFailed when the port is taken' {
        $l = [System.Net.Sockets.TcpListener]::new([System.Net.IPAddress]::Loopback, 0)
        $l.Start()
        try {
            { Start-XenSimulator -HttpPort $l.LocalEndpoint.Port -ErrorAction Stop } | Should -Throw -ErrorId "SimulatorStartFailed,$Cmd.StartXenSimulatorCommand"
        }
        finally { $l.Stop() }
    }
}

Describe 'Stop-XenSimulator' {
    It '-WhatIf leaves the simulator running' {
        $sim = Start-XenSimulator
        try {
            $sim | Stop-XenSimulator -WhatIf
            $sim.IsRunning | Should -BeTrue
            Test-Listening $sim.Url | Should -BeTrue
        }
        finally { $sim | Stop-XenSimulator }
    }

    It 'stops the given simulator and closes its ports' {
        $sim = Start-XenSimulator
        $sim | Stop-XenSimulator
        $sim.IsRunning | Should -BeFalse
        Test-Listening $sim.Url | Should -BeFalse
        { Connect-XenPool -Url $sim.Url -Credential $sim.Credential -ErrorAction Stop } | Should -Throw -ErrorId "XenPoolConnectionFailed,$Cmd.ConnectXenPoolCommand"
        { $sim | Stop-XenSimulator -ErrorAction Stop } | Should -Not -Throw
    }

    It 'without -Simulator stops every simulator this runspace started' {
        $a = Start-XenSimulator; $b = Start-XenSimulator
        Stop-XenSimulator
        $a.IsRunning | Should -BeFalse
        $b.IsRunning | Should -BeFalse
        Test-Listening $a.Url | Should -BeFalse
        Test-Listening $b.Url | Should -BeFalse
    }

    It 'leaves the simulators of another runspace alone' {
        $ps = [powershell]::Create()
        try {
            $other = $ps.AddScript("Import-Module '$env:VPROTECT_MODULE_PATH'; Start-XenSimulator").Invoke()[0]
            Stop-XenSimulator
            $other.IsRunning | Should -BeTrue
            Test-Listening $other.Url | Should -BeTrue
        }
        finally {
            $ps.Commands.Clear()
            [void]$ps.AddScript('Stop-XenSimulator').Invoke()
            $ps.Dispose()
        }
        $other.IsRunning | Should -BeFalse
    }

    It 'stops the runspace''s simulators when the module is removed' {
        $ps = [powershell]::Create()
        try {
            $sim = $ps.AddScript("Import-Module '$env:VPROTECT_MODULE_PATH'; Start-XenSimulator").Invoke()[0]
            Test-Listening $sim.Url | Should -BeTrue
            $ps.Commands.Clear()
            [void]$ps.AddScript('Remove-Module VProtect.PowerShell').Invoke()
            $sim.IsRunning | Should -BeFalse
            Test-Listening $sim.Url | Should -BeFalse
        }
        finally { $ps.Dispose() }
    }
}

Describe 'Start-XenSimulator -StateDirectory' {
    It 'keeps the pool across simulators: a second start sees the same VMs' {
        $dir = Join-Path $TestDrive 'state'
        $first = Start-XenSimulator -StateDirectory $dir
        $s = Connect-XenPool -Url $first.Url -Credential $first.Credential -PassThru
        $before = @(Get-XenPoolVM -Session $s | Sort-Object Uuid).Uuid
        @(Get-ChildItem $dir -Recurse -Filter 'db.json').Count | Should -Be 0 -Because 'state is written when the simulator stops'
        $first | Stop-XenSimulator
        @(Get-ChildItem $dir -Recurse -Filter 'db.json').Count | Should -Be 1
        $second = Start-XenSimulator -StateDirectory $dir
        try {
            $s2 = Connect-XenPool -Url $second.Url -Credential $second.Credential -PassThru
            @(Get-XenPoolVM -Session $s2 | Sort-Object Uuid).Uuid | Should -Be $before
        }
        finally { $second | Stop-XenSimulator }
    }

    It 'is saved when the PowerShell process exits without Stop-XenSimulator' {
        $dir = Join-Path $TestDrive 'exit-state'
        $exe = [Environment]::ProcessPath
        $prefix = @(if ([IO.Path]::GetFileNameWithoutExtension($exe) -eq 'dotnet') { [Reflection.Assembly]::GetEntryAssembly().Location })
        $script = "Import-Module '$env:VPROTECT_MODULE_PATH'; `$null = Start-XenSimulator -StateDirectory '$dir'; exit 0"
        & $exe @prefix -NoProfile -NonInteractive -Command $script
        $LASTEXITCODE | Should -Be 0
        @(Get-ChildItem $dir -Recurse -Filter 'db.json').Count | Should -Be 1
    }
}

Describe 'The simulator out of process' {
    BeforeAll {
        $dll = Join-Path $env:VPROTECT_REPO_ROOT 'out/simulator/VProtect.Simulator.dll'
        $psi = [System.Diagnostics.ProcessStartInfo]::new('dotnet')
        foreach ($a in @($dll, '--http-port', '0')) { $psi.ArgumentList.Add($a) }
        # The simulator runs until its stdin closes: keep it open, close it to stop it.
        $psi.RedirectStandardInput = $true
        $psi.RedirectStandardOutput = $true
        $psi.RedirectStandardError = $true
        $psi.UseShellExecute = $false
        $script:Proc = [System.Diagnostics.Process]::Start($psi)
        # The first stdout line is the simulator's JSON description; bounded wait so a hang fails the test.
        $read = $Proc.StandardOutput.ReadLineAsync()
        if (-not $read.Wait([TimeSpan]::FromSeconds(60))) { throw 'The simulator printed no JSON line within 60 s' }
        $script:Info = $read.Result | ConvertFrom-Json
    }
    AfterAll {
        if ($Proc -and -not $Proc.HasExited) {
            $Proc.StandardInput.Close()
            if (-not $Proc.WaitForExit(10000)) { $Proc.Kill($true); [void]$Proc.WaitForExit(10000) }
        }
    }

    It 'prints url, user, password and ports as JSON' {
        $Info.url | Should -Match '^http://127\.0\.0\.1:\d+'
        $Info.httpsUrl | Should -Match '^https://'
        $Info.nbdPort | Should -BeGreaterThan 0
        $Info.user | Should -Not -BeNullOrEmpty
        $Info.controlUrl | Should -Match '^http://'
        $Info.memberUrl | Should -Match '^http'
    }

    It 'is driven by the cmdlets' {
        $cred = [pscredential]::new($Info.user, (ConvertTo-SecureString $Info.password -AsPlainText -Force))
        $s = Connect-XenPool -Url $Info.url -Credential $cred -PassThru
        $vms = @(Get-XenPoolVM -Session $s)
        $vms.Count | Should -BeGreaterThan 0
        $truth = @(Invoke-RestMethod -Uri ([uri]::new([uri]$Info.controlUrl, 'sim/vms')))
        $vms.Uuid | ForEach-Object { $truth.uuid | Should -Contain $_ }
        Disconnect-XenPool -Session $s
        { Get-XenPoolVM -Session $s -ErrorAction Stop } | Should -Throw -ErrorId "XenPoolSessionExpired,$Cmd.GetXenPoolVMCommand"
    }

    It 'stops cleanly when its stdin closes' {
        $Proc.StandardInput.Close()
        $Proc.WaitForExit(20000) | Should -BeTrue
        $Proc.ExitCode | Should -Be 0
    }
}
