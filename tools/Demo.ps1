<#
.SYNOPSIS
    The README demo: starts the bundled XenServer simulator, connects, lists the VMs, enables NBD, runs a full CBT
    backup of web-01, writes to its disk as a guest would, runs an incremental, restores the incremental as a new VM
    and checks every restored disk against the snapshot it was read from. Exits 0 on success, 1 on any failure.
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

    $repo = Join-Path ([IO.Path]::GetTempPath()) "vprotect-demo-$([guid]::NewGuid().ToString('n'))"
    $control = [uri]$sim.ControlUrl
    $hash = { param($vdi) (Invoke-RestMethod -Uri ([uri]::new($control, "sim/vdi/$vdi/sha256"))).sha256 }

    Write-Host '== Enable-XenNbd'
    Enable-XenNbd -Network 'Pool-wide network associated with eth0' | Format-Table | Out-String -Width 160 | Out-Host

    Write-Host "== Start-VMBackup -VM web-01 -Repository $repo -Strategy Cbt -Type Full"
    $full = Start-VMBackup -VM web-01 -Repository $repo -Strategy Cbt -Type Full
    $full | Format-Table | Out-String -Width 160 | Out-Host

    Write-Host '== Guest writes 8 MiB to the system disk (simulator control API)'
    $web = Get-XenPoolVM -Name web-01
    Invoke-RestMethod -Method Post -Uri ([uri]::new($control, "sim/vdi/$($web.Disks[0].VdiUuid)/write?offset=$(64MB)&length=$(8MB)&seed=42")) | Out-Null

    Write-Host '== Start-VMBackup -Type Incremental'
    $inc = Start-VMBackup -VM web-01 -Repository $repo -Strategy Cbt -Type Incremental -NoFallback
    $inc | Format-Table | Out-String -Width 160 | Out-Host

    Write-Host '== Get-VMBackup'
    Get-VMBackup -Repository $repo | Format-Table | Out-String -Width 160 | Out-Host

    Write-Host '== Restore-VMBackup (the incremental, as a new VM)'
    $restored = $inc | Restore-VMBackup -Name 'web-01 (demo restore)' -Confirm:$false
    $restored | Format-Table | Out-String -Width 160 | Out-Host
    foreach ($d in $restored.Disks) {
        $expected = & $hash ($inc.Disks | Where-Object Key -EQ $d.SourceVdiUuid).SnapshotVdi
        $actual = & $hash $d.VdiUuid
        if ($actual -ne $expected) { throw "Restored disk $($d.Device) differs from the backed-up snapshot ($actual vs $expected)." }
        Write-Host "   disk $($d.Device): SHA-256 $actual matches the snapshot"
    }
    Remove-Item $repo -Recurse -Force

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
