<#
.SYNOPSIS
    Runs tests/Pester in this (child) pwsh with the staged module, and writes the counts as JSON.
#>
param(
    [Parameter(Mandatory)] [string] $ModulePath,
    [Parameter(Mandatory)] [string] $PesterVersion,
    [Parameter(Mandatory)] [string] $ResultPath,
    [Parameter(Mandatory)] [string] $CountsPath,
    # build.ps1 passes -Filter through VPROTECT_TEST_FILTER (a wildcard argument would be glob-expanded on Unix).
    [string] $Filter = $(if ($env:VPROTECT_TEST_FILTER) { $env:VPROTECT_TEST_FILTER } else { '*' })
)
$ErrorActionPreference = 'Stop'
$root = Split-Path $PSScriptRoot -Parent
$packages = if ($env:NUGET_PACKAGES) { $env:NUGET_PACKAGES } else { Join-Path ([Environment]::GetFolderPath('UserProfile')) '.nuget/packages' }
$pester = Join-Path $packages "pester/$PesterVersion/tools/Pester.psd1"
if (-not (Test-Path $pester)) { throw "Pester $PesterVersion not found at $pester (dotnet restore tools/Tools.csproj)" }
Import-Module $pester -Force
$env:VPROTECT_MODULE_PATH = $ModulePath
$env:VPROTECT_REPO_ROOT = $root
$files = Get-ChildItem (Join-Path $root 'tests/Pester') -Filter '*.Tests.ps1' | Where-Object { $_.BaseName -like "$Filter" -or $Filter -eq '*' }
if (-not $files) {
    @{ Passed = 0; Failed = 0 } | ConvertTo-Json | Set-Content $CountsPath
    return
}
$c = New-PesterConfiguration
$c.Run.Path = @($files.FullName)
$c.Run.PassThru = $true
$c.Output.Verbosity = 'Normal'
$c.Output.RenderMode = 'Plaintext'
$c.TestResult.Enabled = $true
$c.TestResult.OutputFormat = 'JUnitXml'
$c.TestResult.OutputPath = Join-Path $ResultPath 'pester.junit.xml'
$r = Invoke-Pester -Configuration $c
# Containers that failed to run (syntax errors, BeforeAll failures) count as failures too.
$failed = $r.FailedCount + $r.FailedBlocksCount + $r.FailedContainersCount
@{ Passed = $r.PassedCount; Failed = $failed } | ConvertTo-Json | Set-Content $CountsPath
Write-Host "   Pester: $($r.PassedCount) passed, $failed failed"
