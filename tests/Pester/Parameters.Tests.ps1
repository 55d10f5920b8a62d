# Parameter contract (dbatools style): a change to a cmdlet's parameters must be deliberate, so it has to be
# made here too. A new exported cmdlet fails the last test until its contract is added.
BeforeDiscovery {
    $contract = @{
        'Connect-XenPool'    = @('Url', 'Credential', 'SkipCertificateCheck', 'CertificateThumbprint', 'Protocol', 'PassThru')
        'Disconnect-XenPool' = @('Session', 'WhatIf', 'Confirm')
        'Start-XenSimulator' = @('HttpPort', 'HttpsPort', 'Scenario', 'StateDirectory', 'Credential')
        'Stop-XenSimulator'  = @('Simulator', 'WhatIf', 'Confirm')
        'Get-XenPoolVM'      = @('Name', 'Uuid', 'IncludeTemplates', 'IncludeSnapshots', 'Session')
        'Start-VMBackup'     = @('VM', 'Repository', 'Strategy', 'Type', 'ExcludeDisk', 'Quiesce', 'PreSnapshotScript', 'PostSnapshotScript',
                                 'KeepSnapshot', 'PurgeSnapshotData', 'NoFallback', 'UseCompression', 'ThrottleLimit', 'Session', 'WhatIf', 'Confirm')
        'Restore-VMBackup'   = @('Backup', 'Repository', 'Id', 'Name', 'SR', 'Disk', 'PowerOn', 'Session', 'WhatIf', 'Confirm')
        'Get-VMBackup'       = @('Repository', 'VM', 'Id')
        'Get-ChangedBlock'   = @('VDI', 'BaseVDI', 'Summary', 'Session')
        'Enable-XenNbd'      = @('Network', 'Insecure', 'Session', 'WhatIf', 'Confirm')
        'Disable-XenNbd'     = @('Network', 'Session', 'WhatIf', 'Confirm')
        'Get-XenNbd'         = @('Session')
        'Enable-XenCbt'      = @('VM', 'Session', 'WhatIf', 'Confirm')
        'Disable-XenCbt'     = @('VM', 'Session', 'WhatIf', 'Confirm')
        'Get-VMBackupChain'  = @('Repository', 'VM')
        'Test-VMBackup'      = @('Backup', 'Repository', 'VM', 'Latest', 'Restore', 'Session')
        'Remove-VMBackup'    = @('Backup', 'Repository', 'VM', 'KeepLast', 'KeepDays', 'KeepFullLast', 'KeepFullDays', 'WhatIf', 'Confirm')
        'Mount-VMBackup'     = @('Backup', 'Disk', 'Port', 'UnixSocket')
        'Dismount-VMBackup'  = @('Mount', 'All')
        'Export-VMBackup'    = @('Backup', 'Destination', 'Format', 'Disk', 'WhatIf', 'Confirm')
        'Get-VMBackupSnapshot'    = @('VM', 'Orphaned', 'Repository', 'Session')
        'Remove-VMBackupSnapshot' = @('Snapshot', 'Session', 'WhatIf', 'Confirm')
    }
    $cases = @($contract.GetEnumerator() | ForEach-Object { @{ Name = $_.Key; Expected = $_.Value } })
    $contractNames = @($contract.Keys)
}

BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Common = [System.Management.Automation.Cmdlet]::CommonParameters
}

Describe '<Name> parameters' -ForEach $cases {
    It 'has exactly the contracted parameters' {
        $actual = @((Get-Command $Name).Parameters.Keys | Where-Object { $_ -notin $Common })
        Compare-Object $Expected $actual | Should -BeNullOrEmpty
    }
}

Describe 'Parameter details' -ForEach @{ ContractNames = $contractNames } {
    It 'Connect-XenPool takes a PSCredential, never a plain password' {
        $c = Get-Command Connect-XenPool
        $c.Parameters['Credential'].ParameterType | Should -Be ([pscredential])
        $c.Parameters['Credential'].ParameterSets['__AllParameterSets'].IsMandatory | Should -BeTrue
        $c.Parameters['Url'].ParameterSets['__AllParameterSets'].IsMandatory | Should -BeTrue
        $c.Parameters.Keys | Should -Not -Contain 'Password'
    }
    It 'Connect-XenPool -Protocol accepts JsonRpc and XmlRpc only' {
        [Enum]::GetNames((Get-Command Connect-XenPool).Parameters['Protocol'].ParameterType) | Sort-Object | Should -Be @('JsonRpc', 'XmlRpc')
    }
    It 'Get-XenPoolVM has the ByName (default) and ByUuid sets, -Uuid binding by property name' {
        $c = Get-Command Get-XenPoolVM
        $c.DefaultParameterSet | Should -Be 'ByName'
        @($c.ParameterSets.Name | Sort-Object) | Should -Be @('ByName', 'ByUuid')
        $c.Parameters['Uuid'].ParameterSets['ByUuid'].ValueFromPipelineByPropertyName | Should -BeTrue
        $c.Parameters['Name'].Attributes.Where({ $_ -is [System.Management.Automation.SupportsWildcardsAttribute] }).Count | Should -Be 1
    }
    It 'Stop-XenSimulator and Disconnect-XenPool support ShouldProcess' {
        foreach ($n in 'Stop-XenSimulator', 'Disconnect-XenPool') {
            (Get-Command $n).Parameters.Keys | Should -Contain 'WhatIf'
        }
    }
    It 'Restore-VMBackup and Remove-VMBackup ask for confirmation by default (ConfirmImpact High)' {
        foreach ($n in 'Restore-VMBackup', 'Remove-VMBackup') {
            $type = (Get-Command $n).ImplementingType
            $type.GetCustomAttributes([System.Management.Automation.CmdletAttribute], $false)[0].ConfirmImpact | Should -Be 'High'
        }
    }
    It 'every exported cmdlet has a contract here' {
        $exported = @(Get-Command -Module VProtect.PowerShell -CommandType Cmdlet).Name
        @($exported | Where-Object { $_ -notin $ContractNames }) | Should -BeNullOrEmpty
        @($ContractNames | Where-Object { $_ -notin $exported }) | Should -BeNullOrEmpty
    }
}
