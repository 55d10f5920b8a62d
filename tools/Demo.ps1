<#
.SYNOPSIS
    The README demo: starts the bundled XenServer simulator, connects, lists the VMs, disconnects and stops.
    (Later issues extend it to a backup and a restore.) Exits 0 on success, 1 on any failure.
#>
param([Parameter(Mandatory)] [string] $ModulePath)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3.0
$sim = $null
try {
    Import-Module $ModulePath

    Write-Host '== Start-XenSimulator'
    $sim = Start-XenSimulator
    $sim | Format-List | Out-String -Width 160 | Out-Host

    Write-Host "== Connect-XenPool -Url $($sim.Url)"
    $session = Connect-XenPool -Url $sim.Url -Credential $sim.Credential -PassThru
    $session | Format-Table | Out-String -Width 160 | Out-Host

    Write-Host '== Get-XenPoolVM'
    $vms = @(Get-XenPoolVM)
    $vms | Format-Table | Out-String -Width 160 | Out-Host
    if ($vms.Count -eq 0) { throw 'The simulator has no VMs to list.' }
    Write-Host "== Disks of $($vms[0].Name)"
    $vms[0].Disks | Format-Table | Out-String -Width 160 | Out-Host

    Write-Host '== Disconnect-XenPool'
    Disconnect-XenPool
    Write-Host '== Stop-XenSimulator'
    $sim | Stop-XenSimulator
    $sim = $null
    Write-Host 'Demo finished.'
    exit 0
}
catch {
    Write-Host "Demo failed: $($_.Exception.Message)" -ForegroundColor Red
    Write-Host $_.ScriptStackTrace
    exit 1
}
finally {
    if ($sim) { $sim | Stop-XenSimulator -Confirm:$false -ErrorAction SilentlyContinue }
}
