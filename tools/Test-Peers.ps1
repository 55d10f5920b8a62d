<#
.SYNOPSIS
    Checks that the real peers the interop tests use are installed; with -Install, installs what is missing.
.DESCRIPTION
    Debian packages: nbdkit, qemu-utils (qemu-img, qemu-nbd), libnbd-bin (nbdinfo, nbdcopy), gnutls-bin
    (certtool), openssl, curl. npm packages (tests/Interop/node): xen-api and @xen-orchestra/xva.
    Missing peers make the interop tests fail, never skip; this script is how a fresh machine gets them.
#>
[CmdletBinding()]
param([switch] $Install)
$ErrorActionPreference = 'Stop'
$root = Split-Path $PSScriptRoot -Parent
$commands = [ordered]@{
    nbdkit = 'nbdkit'; 'qemu-img' = 'qemu-utils'; 'qemu-nbd' = 'qemu-utils'; nbdinfo = 'libnbd-bin'; nbdcopy = 'libnbd-bin'
    certtool = 'gnutls-bin'; openssl = 'openssl'; curl = 'curl'; node = 'nodejs'; npm = 'npm'
}
$missing = @($commands.Keys | Where-Object { -not (Get-Command $_ -ErrorAction SilentlyContinue) })
if ($missing) {
    $packages = @($missing | ForEach-Object { $commands[$_] } | Select-Object -Unique)
    if (-not $Install) { throw "Missing peers: $($missing -join ', '). Install: apt-get install $($packages -join ' ')" }
    $isRoot = (& id -u) -eq '0'
    if (-not $IsLinux -or -not (Get-Command apt-get -ErrorAction SilentlyContinue)) {
        throw "Missing peers: $($missing -join ', '). Install the Debian packages $($packages -join ', ') or their equivalents."
    }
    $sudo = if ($isRoot) { @() } else { @('sudo') }
    Write-Host "Installing $($packages -join ' ')"
    & @sudo apt-get update -qq | Out-Null
    & @sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends @packages | Out-Null
    if ($LASTEXITCODE -ne 0) { throw "apt-get install $($packages -join ' ') failed" }
}
$nodeDir = Join-Path $root 'tests/Interop/node'
if ((Test-Path (Join-Path $nodeDir 'package.json')) -and -not (Test-Path (Join-Path $nodeDir 'node_modules'))) {
    if (-not $Install) { throw "npm packages missing: run 'npm ci' in $nodeDir" }
    Push-Location $nodeDir
    try {
        & npm ci --no-audit --no-fund --loglevel=error | Out-Host
        if ($LASTEXITCODE -ne 0) { throw 'npm ci failed' }
    }
    finally { Pop-Location }
}
