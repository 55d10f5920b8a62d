BeforeAll {
    $script:ModulePath = $env:VPROTECT_MODULE_PATH
}

Describe 'Module manifest' {
    It 'passes Test-ModuleManifest' {
        { Test-ModuleManifest -Path $script:ModulePath -ErrorAction Stop } | Should -Not -Throw
    }
    It 'exports exactly the cmdlets compiled into the assembly' {
        $m = Import-Module $script:ModulePath -PassThru -Force
        $compiled = [System.Reflection.Assembly]::LoadFrom((Join-Path (Split-Path $script:ModulePath) 'VProtect.PowerShell.dll')).GetExportedTypes() |
            Where-Object { $_.IsSubclassOf([System.Management.Automation.Cmdlet]) -and -not $_.IsAbstract } |
            ForEach-Object { $a = $_.GetCustomAttributes([System.Management.Automation.CmdletAttribute], $false)[0]; "$($a.VerbName)-$($a.NounName)" }
        @($m.ExportedCmdlets.Keys | Sort-Object) | Should -Be @($compiled | Sort-Object)
    }
}
