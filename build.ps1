#!/usr/bin/env pwsh
<#
.SYNOPSIS
    Builds, stages, tests, documents, benchmarks and packages VProtect.PowerShell.
.DESCRIPTION
    Build   : dotnet build of the solution, then stages a loadable module under out/VProtect.PowerShell.
    Docs    : turns docs/*.md (platyPS v1 markdown) into out/VProtect.PowerShell/en-US/VProtect.PowerShell.dll-Help.xml.
    Test    : Build + Docs, then every xunit project and then Pester (in a child pwsh); the last line printed
              is 'N passed, N failed' covering both. Exits non-zero when anything failed.
    Demo    : Build + Docs, then a backup and restore against the bundled simulator (tools/Demo.ps1).
    Bench   : Build, then the benchmarks (tests/Benchmarks); figures go to docs/performance.md by hand.
    Package : Build + Docs, then a zip of the staged module under out/.
.EXAMPLE
    dotnet tool restore; dotnet pwsh ./build.ps1 -Task Test
#>
[CmdletBinding()]
param(
    [ValidateSet('Build', 'Test', 'Demo', 'Docs', 'Bench', 'Package')]
    [string] $Task = 'Build',
    [ValidateSet('Debug', 'Release')]
    [string] $Configuration = 'Release',
    # Only run tests whose xunit project or Pester file matches this wildcard (development aid).
    [string] $Filter = '*',
    # Extra arguments for the benchmark runner.
    [string[]] $BenchArgs = @()
)

$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3.0
$Root = $PSScriptRoot
$Out = Join-Path $Root 'out'
$ModuleName = 'VProtect.PowerShell'
$ModuleOut = Join-Path $Out $ModuleName
$PesterVersion = '5.7.1'

function Invoke-Native {
    param([string] $File, [string[]] $Arguments)
    & $File @Arguments | Out-Host
    if ($LASTEXITCODE -ne 0) { throw "$File $($Arguments -join ' ') failed with exit code $LASTEXITCODE" }
}

function Invoke-Build {
    Write-Host "== Build ($Configuration)"
    Invoke-Native dotnet @('build', (Join-Path $Root 'VProtect.PowerShell.sln'), '-c', $Configuration, '-nologo', '-v', 'quiet', '-clp:ErrorsOnly')
    # Stage the loadable module: manifest, format/types files, and the cmdlet assembly with its dependencies.
    if (Test-Path $ModuleOut) { Remove-Item $ModuleOut -Recurse -Force }
    New-Item -ItemType Directory -Path $ModuleOut | Out-Null
    $bin = Join-Path $Root "src/VProtect.PowerShell/bin/$Configuration/net8.0"
    Get-ChildItem $bin -File | Where-Object { $_.Extension -in '.dll', '.pdb', '.json' } |
        Copy-Item -Destination $ModuleOut
    Get-ChildItem (Join-Path $Root 'module') -File | Copy-Item -Destination $ModuleOut
    # The simulator also runs out of process (tests, the demo); stage it beside the module.
    $simOut = Join-Path $Out 'simulator'
    if (Test-Path $simOut) { Remove-Item $simOut -Recurse -Force }
    Copy-Item (Join-Path $Root "src/VProtect.Simulator/bin/$Configuration/net8.0") $simOut -Recurse
}

function Invoke-Docs {
    Write-Host '== Docs'
    $generator = Join-Path $Root 'tools/ConvertTo-Maml.ps1'
    if (-not (Test-Path $generator)) { Write-Warning 'tools/ConvertTo-Maml.ps1 missing: no help generated'; return }
    & $generator -DocsPath (Join-Path $Root 'docs') -ModulePath $ModuleOut
}

function Get-TrxCounts([string] $Path) {
    [xml] $trx = Get-Content -Raw $Path
    $c = $trx.TestRun.ResultSummary.Counters
    [pscustomobject]@{ Passed = [int]$c.passed; Failed = [int]$c.failed + [int]$c.error + [int]$c.timeout + [int]$c.aborted; Total = [int]$c.total }
}

function Invoke-Tests {
    $results = Join-Path $Out 'test-results'
    if (Test-Path $results) { Remove-Item $results -Recurse -Force }
    New-Item -ItemType Directory -Path $results | Out-Null
    & (Join-Path $Root 'tools/Test-Peers.ps1') -Install
    $passed = 0; $failed = 0
    $projects = Get-ChildItem (Join-Path $Root 'tests') -Recurse -Filter '*.csproj' |
        Where-Object { (Select-String -Path $_.FullName -Pattern '<IsTestProject>true' -Quiet) -and $_.BaseName -like $Filter }
    foreach ($p in $projects) {
        Write-Host "== xunit $($p.BaseName)"
        $trx = "$($p.BaseName).trx"
        & dotnet test $p.FullName -c $Configuration --no-build --nologo --logger "trx;LogFileName=$trx" --logger 'console;verbosity=minimal' --results-directory $results | Out-Host
        $file = Join-Path $results $trx
        if (Test-Path $file) {
            $c = Get-TrxCounts $file
            $passed += $c.Passed; $failed += $c.Failed
            Write-Host "   $($p.BaseName): $($c.Passed) passed, $($c.Failed) failed"
        }
        elseif ($LASTEXITCODE -ne 0) {
            Write-Host "   $($p.BaseName): the test run itself failed (exit $LASTEXITCODE)"
            $failed += 1
        }
    }
    Write-Host '== Pester'
    $pesterJson = Join-Path $results 'pester-counts.json'
    $pesterArgs = @('pwsh', '--', '-NoProfile', '-NonInteractive', '-File', (Join-Path $Root 'tools/Invoke-PesterTests.ps1'),
        '-ModulePath', (Join-Path $ModuleOut "$ModuleName.psd1"), '-PesterVersion', $PesterVersion,
        '-ResultPath', $results, '-CountsPath', $pesterJson)
    # Wildcards passed to a native command are glob-expanded by pwsh on Unix: hand the filter over in the environment.
    $env:VPROTECT_TEST_FILTER = $Filter
    Push-Location $Root
    try { & dotnet tool run @pesterArgs | Out-Host } finally { Pop-Location }
    if (Test-Path $pesterJson) {
        $pc = Get-Content -Raw $pesterJson | ConvertFrom-Json
        $passed += $pc.Passed; $failed += $pc.Failed
    }
    else { Write-Host '   Pester did not report its counts'; $failed += 1 }
    return [pscustomobject]@{ Passed = $passed; Failed = $failed }
}

function Restore-Tools {
    # Pester from NuGet into the global packages folder; the build never uses a gallery.
    Invoke-Native dotnet @('restore', (Join-Path $Root 'tools/Tools.csproj'), '-nologo', '-v', 'quiet')
}

Push-Location $Root
try {
    switch ($Task) {
        'Build' { Invoke-Build }
        'Docs' { Invoke-Build; Invoke-Docs }
        'Test' {
            Restore-Tools
            Invoke-Build
            Invoke-Docs
            $r = Invoke-Tests
            Write-Host "$($r.Passed) passed, $($r.Failed) failed"
            if ($r.Failed -gt 0) { exit 1 }
        }
        'Demo' {
            Invoke-Build
            Invoke-Docs
            Push-Location $Root
            try { & dotnet tool run pwsh -- -NoProfile -File (Join-Path $Root 'tools/Demo.ps1') -ModulePath (Join-Path $ModuleOut "$ModuleName.psd1") }
            finally { Pop-Location }
            if ($LASTEXITCODE -ne 0) { exit $LASTEXITCODE }
        }
        'Bench' {
            Invoke-Build
            & (Join-Path $Root 'tools/Test-Peers.ps1') -Install
            Invoke-Native dotnet (@('run', '--project', (Join-Path $Root 'tests/Benchmarks'), '-c', 'Release', '--no-build', '--') + $BenchArgs)
        }
        'Package' {
            Invoke-Build
            Invoke-Docs
            $zip = Join-Path $Out "$ModuleName.zip"
            if (Test-Path $zip) { Remove-Item $zip }
            Compress-Archive -Path $ModuleOut -DestinationPath $zip
            Write-Host "Packaged $zip"
        }
    }
}
finally { Pop-Location }
