# Help completeness: Get-Help shows only what the generated MAML holds, so these fail when the docs step
# drops a parameter set, a parameter, a description or the examples.
BeforeDiscovery {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $commands = @(Get-Command -Module VProtect.PowerShell -CommandType Cmdlet | ForEach-Object { @{ Name = $_.Name } })
    # Every documented code block that starts its own simulator is self-contained: run it as written.
    $runnable = foreach ($page in Get-ChildItem (Join-Path $env:VPROTECT_REPO_ROOT 'docs') -Filter '*.md') {
        $n = 0
        foreach ($m in [regex]::Matches((Get-Content -Raw $page.FullName), '(?ms)^```powershell\r?\n(.*?)^```')) {
            $n++
            if ($m.Groups[1].Value -match '\$sim = Start-XenSimulator') { @{ Page = $page.Name; Block = $n; Code = $m.Groups[1].Value } }
        }
    }
}

BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Docs = Join-Path $env:VPROTECT_REPO_ROOT 'docs'
    $script:Common = [System.Management.Automation.Cmdlet]::CommonParameters
}

Describe 'Help of <Name>' -ForEach $commands {
    BeforeAll {
        $cmd = Get-Command $Name
        $help = Get-Help $Name -Full
        $expected = @($cmd.Parameters.Keys | Where-Object { $_ -notin $Common } | Sort-Object)
        $page = Get-Content -Raw (Join-Path $Docs "$Name.md")
    }

    It 'has a page docs/<Name>.md in platyPS v1 format' {
        $page | Should -Match '(?m)^schema: 2\.0\.0$'
        $page | Should -Match "(?m)^# $Name$"
    }

    It 'shows the synopsis written in the page' {
        $synopsis = [regex]::Match($page, '(?ms)^## SYNOPSIS\s*\r?\n(.+?)\r?\n\s*\r?\n').Groups[1].Value -replace '\s+', ' '
        $synopsis | Should -Not -BeNullOrEmpty
        ($help.Synopsis -replace '\s+', ' ').Trim() | Should -Be $synopsis.Trim()
    }

    It 'has a description' {
        @($help.description).Count | Should -BeGreaterThan 0
        ($help.description.Text -join ' ') | Should -Not -BeNullOrEmpty
    }

    It 'documents every parameter Get-Command has, and no other' {
        $documented = @($help.parameters.parameter.name | Sort-Object)
        Compare-Object $expected $documented | Should -BeNullOrEmpty
    }

    It 'describes every parameter' {
        foreach ($p in $help.parameters.parameter) {
            ($p.description.Text -join ' ') | Should -Not -BeNullOrEmpty -Because "-$($p.name) needs a description"
        }
    }

    It 'shows one syntax item per parameter set, each with the parameters of its set' {
        $items = @($help.syntax.syntaxItem)
        $items.Count | Should -Be $cmd.ParameterSets.Count
        $fromHelp = @($items | ForEach-Object { (@($_.parameter.name | Sort-Object) -join ',') } | Sort-Object)
        $fromCmd = @($cmd.ParameterSets | ForEach-Object { (@($_.Parameters.Name | Where-Object { $_ -notin $Common } | Sort-Object) -join ',') } | Sort-Object)
        $fromHelp | Should -Be $fromCmd
    }

    It 'marks mandatory parameters as required' {
        foreach ($p in $cmd.Parameters.Values | Where-Object { $_.Name -notin $Common }) {
            $mandatoryEverywhere = @($p.ParameterSets.Values | Where-Object { -not $_.IsMandatory }).Count -eq 0
            $h = $help.parameters.parameter | Where-Object name -EQ $p.Name
            if ($mandatoryEverywhere) { $h.required | Should -Be 'true' -Because "-$($p.Name) is mandatory" }
        }
    }

    It 'lists the accepted values of enum and ValidateSet parameters' {
        foreach ($p in $cmd.Parameters.Values | Where-Object { $_.Name -notin $Common }) {
            $set = $p.Attributes | Where-Object { $_ -is [System.Management.Automation.ValidateSetAttribute] }
            $values = if ($set) { @($set.ValidValues) } elseif ($p.ParameterType.IsEnum) { [Enum]::GetNames($p.ParameterType) } else { @() }
            if ($values.Count) {
                @((Get-Help $Name -Parameter $p.Name).parameterValueGroup.parameterValue) | Should -Be $values -Because "-$($p.Name) takes only these"
            }
        }
    }

    It 'has at least one example with code' {
        @($help.examples.example).Count | Should -BeGreaterThan 0
        foreach ($e in $help.examples.example) { $e.code | Should -Not -BeNullOrEmpty }
    }
}

Describe 'Documented example <Page> #<Block>' -ForEach $runnable {
    It 'runs without errors against the simulator it starts' {
        $ps = [powershell]::Create()
        try {
            [void]$ps.AddScript("Import-Module '$env:VPROTECT_MODULE_PATH'`n$Code").AddCommand('Out-String')
            $out = $ps.Invoke()
            @($ps.Streams.Error | ForEach-Object { "$_" }) | Should -BeNullOrEmpty
            $ps.HadErrors | Should -BeFalse
            "$out" | Should -Not -Match 'Exception'
        }
        finally {
            $ps.Commands.Clear()
            [void]$ps.AddScript('Stop-XenSimulator -Confirm:$false').Invoke()
            $ps.Dispose()
        }
    }
}

Describe 'about_VProtect' {
    It 'is shown by Get-Help' {
        $text = Get-Help about_VProtect | Out-String
        $text | Should -Match 'NoXenPoolSession'
        $text | Should -Match 'Connect-XenPool'
    }
}

Describe 'The docs step' {
    BeforeAll {
        $generator = Join-Path $env:VPROTECT_REPO_ROOT 'tools/ConvertTo-Maml.ps1'
        $staged = Split-Path $env:VPROTECT_MODULE_PATH
        $module = Join-Path $TestDrive 'module'
        Copy-Item $staged $module -Recurse
        Remove-Item (Join-Path $module 'en-US') -Recurse -Force -ErrorAction SilentlyContinue
    }
    BeforeEach {
        $work = Join-Path $TestDrive "docs-$([guid]::NewGuid())"
        Copy-Item $Docs $work -Recurse
    }

    It 'writes the MAML file from unchanged pages' {
        & $generator -DocsPath $work -ModulePath $module 6>$null
        [xml] $maml = Get-Content -Raw (Join-Path $module 'en-US/VProtect.PowerShell.dll-Help.xml')
        @($maml.helpItems.command).Count | Should -Be @(Get-Command -Module VProtect.PowerShell -CommandType Cmdlet).Count
    }

    It 'fails, naming every disagreement, when pages and cmdlets differ' {
        # One run (each starts a child pwsh): a wrong position, a parameter left out, and a missing page.
        Remove-Item (Join-Path $module 'en-US') -Recurse -Force -ErrorAction SilentlyContinue
        $path = Join-Path $work 'Connect-XenPool.md'
        $text = (Get-Content -Raw $path) -replace '(?s)(### -Url.+?Position: )0', '${1}3'
        $text = $text -replace '(?s)### -PassThru.+?```\r?\n(?=\r?\n###)', ''
        Set-Content $path $text
        Remove-Item (Join-Path $work 'Get-XenPoolVM.md')
        $err = { & $generator -DocsPath $work -ModulePath $module 6>$null } | Should -Throw -PassThru
        $err.Exception.Message | Should -BeLike '*Connect-XenPool.md: -Url in set*Position is ''3'', the cmdlet says ''0''*'
        $err.Exception.Message | Should -BeLike '*Connect-XenPool.md: parameter -PassThru is not documented*'
        $err.Exception.Message | Should -BeLike '*Get-XenPoolVM: no page docs/Get-XenPoolVM.md*'
        Test-Path (Join-Path $module 'en-US/VProtect.PowerShell.dll-Help.xml') | Should -BeFalse
    }
}
