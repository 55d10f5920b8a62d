<#
.SYNOPSIS
    The README demo: starts the bundled XenServer simulator, connects and lists the VMs.
    (Later issues extend it to a backup and a restore.)
#>
param([Parameter(Mandatory)] [string] $ModulePath)
$ErrorActionPreference = 'Stop'
Import-Module $ModulePath
Write-Host 'VProtect.PowerShell demo: not yet implemented'
