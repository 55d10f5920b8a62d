# tools/Demo.ps1 as build.ps1 -Task Demo runs it: in its own pwsh, against the staged module.
BeforeAll {
    $script:Demo = Join-Path $env:VPROTECT_REPO_ROOT 'tools/Demo.ps1'
    $exe = [Environment]::ProcessPath
    $script:Pwsh = @($exe) + @(if ([IO.Path]::GetFileNameWithoutExtension($exe) -eq 'dotnet') { [Reflection.Assembly]::GetEntryAssembly().Location })
    function Invoke-Demo([string] $ModulePath) {
        $exe = $Pwsh[0]; $rest = @($Pwsh | Select-Object -Skip 1)
        $out = & $exe @rest -NoProfile -NonInteractive -File $Demo -ModulePath $ModulePath 2>&1 | Out-String
        [pscustomobject]@{ ExitCode = $LASTEXITCODE; Output = $out }
    }
}

Describe 'tools/Demo.ps1' {
    It 'starts the simulator, connects, lists the VMs as a table, disconnects, stops, and exits 0' {
        $r = Invoke-Demo $env:VPROTECT_MODULE_PATH
        $r.ExitCode | Should -Be 0 -Because $r.Output
        $r.Output | Should -Match 'Name\s+PowerState\s+Disks\s+Size\(GiB\)\s+VIFs\s+Uuid'
        $r.Output | Should -Match '(?m)^\S.*\s(Running|Halted|Suspended|Paused)\s+\d+\s+[\d.,]+\s+\d+\s+[0-9a-f-]{36}'
        $r.Output | Should -Match 'Demo finished\.'
    }

    It 'exits non-zero when something fails' {
        $r = Invoke-Demo (Join-Path $TestDrive 'missing/VProtect.PowerShell.psd1')
        $r.ExitCode | Should -Be 1
        $r.Output | Should -Match 'Demo failed'
    }
}
