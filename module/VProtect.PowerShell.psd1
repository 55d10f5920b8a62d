@{
    RootModule           = 'VProtect.PowerShell.dll'
    ModuleVersion        = '0.1.0'
    GUID                 = '3f1c7a52-8d4e-4a8b-9b1e-6d2f0c9a7e41'
    Author               = 'VProtect.PowerShell contributors'
    CompanyName          = 'VProtect.PowerShell'
    Copyright            = '(c) VProtect.PowerShell contributors'
    Description          = 'Backup and restore of Citrix Hypervisor / XenServer / XCP-ng VMs: XVA and CBT strategies, a user-space NBD client, and a bundled XenServer simulator.'
    CompatiblePSEditions = @('Core')
    PowerShellVersion    = '7.4'
    FormatsToProcess     = @('VProtect.PowerShell.Format.ps1xml', 'VProtect.PowerShell.Backup.Format.ps1xml', 'VProtect.PowerShell.Lifecycle.Format.ps1xml')
    TypesToProcess       = @('VProtect.PowerShell.Types.ps1xml')
    CmdletsToExport      = @('Connect-XenPool', 'Disconnect-XenPool', 'Get-XenPoolVM', 'Start-XenSimulator', 'Stop-XenSimulator',
                             'Start-VMBackup', 'Get-VMBackup', 'Restore-VMBackup', 'Get-XenNbd', 'Enable-XenNbd', 'Disable-XenNbd',
                             'Get-ChangedBlock', 'Enable-XenCbt', 'Disable-XenCbt',
                             'Get-VMBackupChain', 'Test-VMBackup', 'Mount-VMBackup', 'Dismount-VMBackup', 'Export-VMBackup',
                             'Get-VMBackupSnapshot', 'Remove-VMBackupSnapshot', 'Remove-VMBackup')
    FunctionsToExport    = @()
    AliasesToExport      = @('Get-ChangedBlocks')
    VariablesToExport    = @()
    PrivateData          = @{
        PSData = @{
            Tags = @('XenServer', 'XCP-ng', 'CitrixHypervisor', 'Backup', 'CBT', 'NBD', 'PSEdition_Core', 'Windows', 'Linux')
        }
    }
}
