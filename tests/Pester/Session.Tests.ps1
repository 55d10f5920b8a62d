# Connect-XenPool / Disconnect-XenPool as a user runs them, against the in-process simulator.
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Sim = Start-XenSimulator
    $script:Cred = $Sim.Credential
    $script:Cmd = 'VProtect.PowerShell.Cmdlets'

    function Get-DeadUrl {
        # A loopback port that was free a moment ago and has nobody listening now.
        $l = [System.Net.Sockets.TcpListener]::new([System.Net.IPAddress]::Loopback, 0)
        $l.Start(); $port = $l.LocalEndpoint.Port; $l.Stop()
        "http://127.0.0.1:$port/"
    }
}

AfterAll {
    Get-Variable -Scope Global -Name VProtectXenPoolSession -ErrorAction SilentlyContinue | Remove-Variable -Scope Global
    $Sim | Stop-XenSimulator -Confirm:$false
}

Describe 'Connect-XenPool' {
    It 'logs in over JSON-RPC, writes the session with -PassThru and makes it current' {
        $s = Connect-XenPool -Url $Sim.Url -Credential $Cred -PassThru
        $s | Should -BeOfType ([VProtect.PowerShell.XenPoolSession])
        $s.Protocol | Should -Be 'JsonRpc'
        $s.UserName | Should -Be $Cred.UserName
        $s.OpaqueRef | Should -Match '^OpaqueRef:'
        $s.opaque_ref | Should -Be $s.OpaqueRef
        $s.ApiVersion | Should -Match '^\d+\.\d+$'
        $s.PoolName | Should -Not -BeNullOrEmpty
        $s.Master | Should -Not -BeNullOrEmpty
        $global:VProtectXenPoolSession | Should -Be $s
    }

    It 'shows the session in a table with pool, master, API version, user and protocol' {
        $s = Connect-XenPool -Url $Sim.Url -Credential $Cred -PassThru
        $lines = @(($s | Format-Table | Out-String -Width 250) -split "`n" | Where-Object { $_ -match '\S' })
        $lines[0] | Should -Match '^PoolName\s+Master\s+ApiVersion\s+UserName\s+Protocol\s+Url'
        $lines[2] | Should -Match ([regex]::Escape($s.PoolName))
        $lines[2] | Should -Match ([regex]::Escape($s.Url))
    }

    It 'writes nothing without -PassThru' {
        $out = Connect-XenPool -Url $Sim.Url -Credential $Cred
        $out | Should -BeNullOrEmpty
        $global:VProtectXenPoolSession.Url | Should -Be $Sim.Url
    }

    It 'logs in over XML-RPC' {
        $s = Connect-XenPool -Url $Sim.Url -Credential $Cred -Protocol XmlRpc -PassThru
        $s.Protocol | Should -Be 'XmlRpc'
        @(Get-XenPoolVM -Session $s).Count | Should -BeGreaterThan 0
    }

    It 'logs in over HTTPS with -SkipCertificateCheck' {
        $s = Connect-XenPool -Url $Sim.HttpsUrl -Credential $Cred -SkipCertificateCheck -PassThru
        $s.Url | Should -BeLike 'https://*'
        @(Get-XenPoolVM -Session $s).Count | Should -BeGreaterThan 0
    }

    It 'logs in over HTTPS with the pinned -CertificateThumbprint' {
        $s = Connect-XenPool -Url $Sim.HttpsUrl -Credential $Cred -CertificateThumbprint $Sim.CertificateThumbprint -PassThru
        $s.Url | Should -BeLike 'https://*'
    }

    It 'rejects the self-signed certificate without a pin (SecurityError)' {
        $err = { Connect-XenPool -Url $Sim.HttpsUrl -Credential $Cred -ErrorAction Stop } | Should -Throw -PassThru
        $err.FullyQualifiedErrorId | Should -Be "XenPoolCertificateRejected,$Cmd.ConnectXenPoolCommand"
        $err.CategoryInfo.Category | Should -Be 'SecurityError'
    }

    It 'rejects a wrong thumbprint (SecurityError)' {
        $wrong = 'AB' * 32
        $err = { Connect-XenPool -Url $Sim.HttpsUrl -Credential $Cred -CertificateThumbprint $wrong -ErrorAction Stop } | Should -Throw -PassThru
        $err.FullyQualifiedErrorId | Should -Be "XenPoolCertificateRejected,$Cmd.ConnectXenPoolCommand"
    }

    It 'fails with AuthenticationError on a wrong password and keeps the current session' {
        $before = Connect-XenPool -Url $Sim.Url -Credential $Cred -PassThru
        $bad = [pscredential]::new($Cred.UserName, (ConvertTo-SecureString 'not-the-password' -AsPlainText -Force))
        $err = { Connect-XenPool -Url $Sim.Url -Credential $bad -ErrorAction Stop } | Should -Throw -PassThru
        $err.FullyQualifiedErrorId | Should -Be "XenPoolAuthenticationFailed,$Cmd.ConnectXenPoolCommand"
        $err.CategoryInfo.Category | Should -Be 'AuthenticationError'
        $err.Exception.Message | Should -Not -Match 'not-the-password'
        $global:VProtectXenPoolSession | Should -Be $before
    }

    It 'follows a pool member to the master and warns' {
        $s = Connect-XenPool -Url $Sim.MemberUrl -Credential $Cred -PassThru -WarningVariable warnings -WarningAction SilentlyContinue
        @($warnings).Count | Should -Be 1
        "$($warnings[0])" | Should -BeLike '*pool member*master*'
        ([uri]$s.Url).Port | Should -Be ([uri]$Sim.Url).Port
        ([uri]$s.RedirectedFrom).Port | Should -Be ([uri]$Sim.MemberUrl).Port
        @(Get-XenPoolVM -Session $s).Count | Should -BeGreaterThan 0
    }

    It 'fails with ConnectionError on a URL nobody answers' {
        $err = { Connect-XenPool -Url (Get-DeadUrl) -Credential $Cred -ErrorAction Stop } | Should -Throw -PassThru
        $err.FullyQualifiedErrorId | Should -Be "XenPoolConnectionFailed,$Cmd.ConnectXenPoolCommand"
        $err.CategoryInfo.Category | Should -Be 'ConnectionError'
    }

    It 'rejects a URL that is not http or https' {
        $err = { Connect-XenPool -Url 'ftp://127.0.0.1/' -Credential $Cred -ErrorAction Stop } | Should -Throw -PassThru
        $err.FullyQualifiedErrorId | Should -Be "InvalidArgument,$Cmd.ConnectXenPoolCommand"
    }
}

Describe 'Disconnect-XenPool' {
    It '-WhatIf logs nothing out and keeps the current session' {
        $s = Connect-XenPool -Url $Sim.Url -Credential $Cred -PassThru
        Disconnect-XenPool -WhatIf
        $global:VProtectXenPoolSession | Should -Be $s
        @(Get-XenPoolVM -Session $s).Count | Should -BeGreaterThan 0
    }

    It 'logs the current session out and forgets it' {
        $s = Connect-XenPool -Url $Sim.Url -Credential $Cred -PassThru
        Disconnect-XenPool
        Get-Variable -Scope Global -Name VProtectXenPoolSession -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
        $err = { Get-XenPoolVM -ErrorAction Stop } | Should -Throw -PassThru
        $err.FullyQualifiedErrorId | Should -Be "NoXenPoolSession,$Cmd.GetXenPoolVMCommand"
        $err.CategoryInfo.Category | Should -Be 'InvalidOperation'
        # The pool no longer knows the session.
        $err = { Get-XenPoolVM -Session $s -ErrorAction Stop } | Should -Throw -PassThru
        $err.FullyQualifiedErrorId | Should -Be "XenPoolSessionExpired,$Cmd.GetXenPoolVMCommand"
    }

    It 'logs out a piped session and leaves a different current session alone' {
        $other = Connect-XenPool -Url $Sim.Url -Credential $Cred -PassThru
        $current = Connect-XenPool -Url $Sim.Url -Credential $Cred -PassThru
        $current.OpaqueRef | Should -Not -Be $other.OpaqueRef
        $other | Disconnect-XenPool
        $global:VProtectXenPoolSession | Should -Be $current
        { Get-XenPoolVM -Session $other -ErrorAction Stop } | Should -Throw -ErrorId "XenPoolSessionExpired,$Cmd.GetXenPoolVMCommand"
        @(Get-XenPoolVM).Count | Should -BeGreaterThan 0
    }

    It 'fails with NoXenPoolSession when there is nothing to log out' {
        Get-Variable -Scope Global -Name VProtectXenPoolSession -ErrorAction SilentlyContinue | Remove-Variable -Scope Global
        { Disconnect-XenPool -ErrorAction Stop } | Should -Throw -ErrorId "NoXenPoolSession,$Cmd.DisconnectXenPoolCommand"
    }
}

Describe 'A XenServerPSModule-shaped session' {
    It 'is accepted by -Session (an object with opaque_ref and Url)' {
        $s = Connect-XenPool -Url $Sim.Url -Credential $Cred -PassThru
        $foreign = [pscustomobject]@{ opaque_ref = $s.OpaqueRef; Url = $Sim.Url; Name = 'from Connect-XenServer' }
        $mine = @(Get-XenPoolVM -Session $s | Sort-Object Uuid).Uuid
        $theirs = @(Get-XenPoolVM -Session $foreign | Sort-Object Uuid).Uuid
        $theirs | Should -Be $mine
    }

    It 'is rejected with InvalidXenPoolSession when opaque_ref is missing' {
        $foreign = [pscustomobject]@{ Url = $Sim.Url }
        { Get-XenPoolVM -Session $foreign -ErrorAction Stop } | Should -Throw -ErrorId "InvalidXenPoolSession,$Cmd.GetXenPoolVMCommand"
    }
}

Describe 'Stopping a cmdlet (Ctrl+C)' {
    It 'cancels the engine call: the pending request is dropped and the pipeline ends Stopped' {
        # A "pool" that accepts the connection and never answers.
        $listener = [System.Net.Sockets.TcpListener]::new([System.Net.IPAddress]::Loopback, 0)
        $listener.Start()
        $ps = [powershell]::Create()
        try {
            $url = "http://127.0.0.1:$($listener.LocalEndpoint.Port)/"
            [void]$ps.AddScript("Import-Module '$env:VPROTECT_MODULE_PATH'; Connect-XenPool -Url '$url' -Credential `$args[0]").AddArgument($Cred)
            $async = $ps.BeginInvoke()
            $accept = $listener.AcceptTcpClientAsync()
            $accept.Wait([TimeSpan]::FromSeconds(60)) | Should -BeTrue -Because 'Connect-XenPool should have connected'
            $client = $accept.Result
            # Read the request so the client is waiting for the answer, then press "Ctrl+C".
            $stream = $client.GetStream(); $buffer = [byte[]]::new(65536)
            $stream.ReadAsync($buffer, 0, $buffer.Length).Wait([TimeSpan]::FromSeconds(30)) | Should -BeTrue
            # Stop without waiting for the stop: the cancelled request must close its connection long before the
            # 60 s XAPI timeout would (without cancellation this read only ends at that timeout).
            $stopping = $ps.BeginStop($null, $null)
            $read = $stream.ReadAsync($buffer, 0, $buffer.Length)
            $ended = try { $read.Wait([TimeSpan]::FromSeconds(30)) } catch { $true }
            $ended | Should -BeTrue -Because 'Ctrl+C should cancel the pending XAPI request'
            if ($read.IsCompletedSuccessfully) { $read.Result | Should -Be 0 }
            $ps.EndStop($stopping)
            $ps.InvocationStateInfo.State | Should -Be 'Stopped'
            $ps.Streams.Error | Where-Object { $_.FullyQualifiedErrorId -like 'OperationTimedOut*' } | Should -BeNullOrEmpty
        }
        finally {
            $ps.Dispose()
            $listener.Stop()
        }
    }

    It 'a downstream Select-Object -First stops Get-XenPoolVM cleanly' {
        Connect-XenPool -Url $Sim.Url -Credential $Cred
        @(Get-XenPoolVM | Select-Object -First 1).Count | Should -Be 1
    }
}
