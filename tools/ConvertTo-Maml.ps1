<#
.SYNOPSIS
    Turns docs/*.md (platyPS v1 markdown, schema 2.0.0) into the MAML help and about_ topic of the staged module.
.DESCRIPTION
    platyPS is not installable here, so this is our own markdown -> MAML step. Parameter metadata (types,
    parameter sets, required, position, pipeline input, aliases, accepted values) comes from the compiled
    cmdlets, read with Get-Command in a clean child pwsh; the markdown supplies only the prose. Get-Help shows
    only what the MAML holds, so every parameter set becomes a syntaxItem and every parameter an entry.
    The step fails (throws) when an exported cmdlet has no page, a page has no cmdlet, or a page's parameters
    or their yaml metadata disagree with the cmdlet.
    Writes <ModulePath>/en-US/VProtect.PowerShell.dll-Help.xml and <ModulePath>/en-US/about_*.help.txt.
.EXAMPLE
    ./tools/ConvertTo-Maml.ps1 -DocsPath ./docs -ModulePath ./out/VProtect.PowerShell
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $DocsPath,
    [Parameter(Mandatory)] [string] $ModulePath,
    [string] $ModuleName = 'VProtect.PowerShell',
    [string] $AssemblyName = 'VProtect.PowerShell.dll'
)
$ErrorActionPreference = 'Stop'
Set-StrictMode -Version 3.0

# ---------------------------------------------------------------- cmdlet metadata (child pwsh)
function Get-CmdletMetadata {
    param([string] $ManifestPath, [string] $Name)
    # A clean child process: the module's assembly must not stay loaded (and locked) in the build's pwsh.
    $script = {
        param($manifest, $name)
        $ErrorActionPreference = 'Stop'
        Import-Module $manifest
        $common = [System.Management.Automation.Cmdlet]::CommonParameters
        foreach ($cmd in Get-Command -Module $name -CommandType Cmdlet) {
            $params = foreach ($p in $cmd.Parameters.Values) {
                if ($p.Name -in $common) { continue }
                $valid = @()
                $set = $p.Attributes | Where-Object { $_ -is [System.Management.Automation.ValidateSetAttribute] } | Select-Object -First 1
                $t = $p.ParameterType
                $elem = if ($t.IsArray) { $t.GetElementType() } else { $t }
                if ($set) { $valid = @($set.ValidValues) }
                elseif ($elem.IsEnum) { $valid = @([Enum]::GetNames($elem)) }
                [ordered]@{
                    Name       = $p.Name
                    Type       = $t.Name
                    FullType   = $t.FullName
                    IsSwitch   = $p.SwitchParameter
                    Aliases    = @($p.Aliases)
                    Values     = $valid
                    Wildcards  = [bool]($p.Attributes | Where-Object { $_ -is [System.Management.Automation.SupportsWildcardsAttribute] })
                }
            }
            $sets = foreach ($s in $cmd.ParameterSets) {
                [ordered]@{
                    Name       = $s.Name
                    IsDefault  = $s.IsDefault
                    Parameters = @(foreach ($sp in $s.Parameters) {
                            if ($sp.Name -in $common) { continue }
                            [ordered]@{
                                Name          = $sp.Name
                                Required      = $sp.IsMandatory
                                Position      = $sp.Position
                                ByValue       = $sp.ValueFromPipeline
                                ByPropertyName = $sp.ValueFromPipelineByPropertyName
                            }
                        })
                }
            }
            [ordered]@{
                Name = $cmd.Name; Verb = $cmd.Verb; Noun = $cmd.Noun
                Parameters = @($params); ParameterSets = @($sets)
                AllSetNames = @($cmd.ParameterSets.Name)
            }
        }
    }
    $exe = [Environment]::ProcessPath
    $prefix = @()
    if ([IO.Path]::GetFileNameWithoutExtension($exe) -eq 'dotnet') { $prefix = @([Reflection.Assembly]::GetEntryAssembly().Location) }
    $encoded = [Convert]::ToBase64String([Text.Encoding]::Unicode.GetBytes(
            "& { $script } -manifest '$($ManifestPath -replace "'", "''")' -name '$Name' | ConvertTo-Json -Depth 8 -Compress"))
    $json = & $exe @prefix -NoProfile -NonInteractive -OutputFormat Text -EncodedCommand $encoded
    if ($LASTEXITCODE -ne 0) { throw "Reading the cmdlet metadata of $ManifestPath failed (exit $LASTEXITCODE)" }
    $text = ($json -join "`n").Trim()
    if (-not $text) { return @() }
    $parsed = $text | ConvertFrom-Json
    return @($parsed)
}

# ---------------------------------------------------------------- markdown
function Split-Sections {
    # Splits lines into sections headed by a '#' * Level heading; fenced code is never a heading.
    param([string[]] $Lines, [int] $Level)
    $marker = ('#' * $Level) + ' '
    $sections = [System.Collections.Generic.List[object]]::new()
    $current = $null; $inFence = $false
    foreach ($line in $Lines) {
        if ($line -match '^\s*```') { $inFence = -not $inFence }
        if (-not $inFence -and $line.StartsWith($marker)) {
            $current = [pscustomobject]@{ Title = $line.Substring($marker.Length).Trim(); Lines = [System.Collections.Generic.List[string]]::new() }
            $sections.Add($current)
        }
        elseif ($current) { $current.Lines.Add($line) }
    }
    return $sections
}

function Get-Paragraphs {
    # Prose -> paragraphs: soft-wrapped lines joined; list items and fenced blocks kept as their own paragraphs.
    param([string[]] $Lines)
    $paras = [System.Collections.Generic.List[string]]::new()
    $buf = [System.Collections.Generic.List[string]]::new()
    $inFence = $false; $fence = [System.Collections.Generic.List[string]]::new()
    $flush = { if ($buf.Count) { $paras.Add(($buf -join ' ').Trim()); $buf.Clear() } }
    foreach ($line in $Lines) {
        if ($line -match '^\s*```') {
            if ($inFence) { $paras.Add(($fence -join "`n")); $fence.Clear(); $inFence = $false }
            else { & $flush; $inFence = $true }
            continue
        }
        if ($inFence) { $fence.Add($line); continue }
        if ($line.Trim() -eq '') { & $flush; continue }
        if ($line -match '^\s*([-*]|\d+\.)\s') { & $flush }
        $buf.Add($line.Trim())
    }
    & $flush
    return , $paras.ToArray()
}

function Read-YamlBlock {
    param([string[]] $Lines)
    $map = [ordered]@{}
    foreach ($l in $Lines) {
        if ($l -match '^\s*([^:]+):\s*(.*)$') { $map[$Matches[1].Trim()] = $Matches[2].Trim() }
    }
    return $map
}

function Read-CmdletPage {
    param([string] $Path)
    $lines = Get-Content -LiteralPath $Path
    $front = @{}
    if ($lines.Count -gt 0 -and $lines[0] -eq '---') {
        $end = [Array]::IndexOf($lines, '---', 1)
        if ($end -lt 0) { throw "${Path}: front matter is not closed with ---" }
        foreach ($l in $lines[1..($end - 1)]) { if ($l -match '^([^:]+):\s*(.*)$') { $front[$Matches[1].Trim()] = $Matches[2].Trim() } }
        $lines = $lines[($end + 1)..($lines.Count - 1)]
    }
    $h1 = Split-Sections $lines 1
    if ($h1.Count -ne 1) { throw "${Path}: expected exactly one '# <Cmdlet>' heading" }
    $page = [ordered]@{
        Path = $Path; Name = $h1[0].Title; Front = $front
        Synopsis = ''; Description = @(); Examples = @(); Parameters = [ordered]@{}
        Inputs = @(); Outputs = @(); Notes = @(); Links = @()
    }
    foreach ($s in (Split-Sections $h1[0].Lines 2)) {
        switch ($s.Title) {
            'SYNOPSIS' { $page.Synopsis = (Get-Paragraphs $s.Lines) -join ' ' }
            'DESCRIPTION' { $page.Description = Get-Paragraphs $s.Lines }
            'NOTES' { $page.Notes = Get-Paragraphs $s.Lines }
            'EXAMPLES' {
                $page.Examples = @(foreach ($e in (Split-Sections $s.Lines 3)) {
                        $code = [System.Collections.Generic.List[string]]::new()
                        $text = [System.Collections.Generic.List[string]]::new()
                        $inFence = $false
                        foreach ($l in $e.Lines) {
                            if ($l -match '^\s*```') { $inFence = -not $inFence; continue }
                            if ($inFence) { $code.Add($l) } else { $text.Add($l) }
                        }
                        [pscustomobject]@{ Title = $e.Title; Code = ($code -join "`n").Trim(); Remarks = Get-Paragraphs $text }
                    })
            }
            'PARAMETERS' {
                foreach ($p in (Split-Sections $s.Lines 3)) {
                    if ($p.Title -eq 'CommonParameters') { continue }
                    if (-not $p.Title.StartsWith('-')) { throw "${Path}: parameter heading '### $($p.Title)' must start with '-'" }
                    $prose = [System.Collections.Generic.List[string]]::new()
                    $yamls = [System.Collections.Generic.List[object]]::new()
                    $inYaml = $false; $yaml = $null
                    foreach ($l in $p.Lines) {
                        if ($l -match '^\s*```yaml') { $inYaml = $true; $yaml = [System.Collections.Generic.List[string]]::new(); continue }
                        if ($inYaml -and $l -match '^\s*```') { $inYaml = $false; $yamls.Add((Read-YamlBlock $yaml)); continue }
                        if ($inYaml) { $yaml.Add($l) } else { $prose.Add($l) }
                    }
                    $page.Parameters[$p.Title.Substring(1)] = [pscustomobject]@{ Description = Get-Paragraphs $prose; Yaml = $yamls.ToArray() }
                }
            }
            { $_ -in 'INPUTS', 'OUTPUTS' } {
                $items = @(foreach ($t in (Split-Sections $s.Lines 3)) { [pscustomobject]@{ Type = $t.Title; Description = Get-Paragraphs $t.Lines } })
                if ($s.Title -eq 'INPUTS') { $page.Inputs = $items } else { $page.Outputs = $items }
            }
            'RELATED LINKS' {
                $page.Links = @(foreach ($l in $s.Lines) {
                        if ($l -match '\[([^\]]+)\]\(([^)]*)\)') { [pscustomobject]@{ Text = $Matches[1]; Uri = $Matches[2] } }
                    })
            }
        }
    }
    return [pscustomobject]$page
}

# ---------------------------------------------------------------- checking a page against its cmdlet
function Format-PipelineInput([bool] $ByValue, [bool] $ByPropertyName) {
    if ($ByValue -and $ByPropertyName) { 'True (ByValue, ByPropertyName)' }
    elseif ($ByValue) { 'True (ByValue)' }
    elseif ($ByPropertyName) { 'True (ByPropertyName)' }
    else { 'False' }
}

function Format-Position($Position) { if ($Position -lt 0) { 'Named' } else { "$Position" } }

function Test-PageAgainstCmdlet {
    # Returns the list of disagreements (empty when the page matches the compiled cmdlet).
    param($Page, $Cmd)
    $problems = [System.Collections.Generic.List[string]]::new()
    if (-not $Page.Synopsis) { $problems.Add('SYNOPSIS is empty') }
    if (-not $Page.Description) { $problems.Add('DESCRIPTION is empty') }
    if (-not @($Page.Examples | Where-Object Code).Count) { $problems.Add('EXAMPLES has no example with a code block') }
    if ($Page.Front['schema'] -ne '2.0.0') { $problems.Add("front matter 'schema' must be 2.0.0") }
    $documented = @($Page.Parameters.Keys)
    $actual = @($Cmd.Parameters.Name)
    foreach ($n in $actual) { if ($n -notin $documented) { $problems.Add("parameter -$n is not documented") } }
    foreach ($n in $documented) { if ($n -notin $actual) { $problems.Add("parameter -$n is documented but the cmdlet has no such parameter") } }
    foreach ($p in $Cmd.Parameters) {
        if ($p.Name -notin $documented) { continue }
        $doc = $Page.Parameters[$p.Name]
        if (-not $doc.Description) { $problems.Add("-$($p.Name) has no description") }
        if (-not $doc.Yaml.Count) { $problems.Add("-$($p.Name) has no yaml block"); continue }
        $inSets = @($Cmd.ParameterSets | Where-Object { $_.Parameters.Name -contains $p.Name })
        foreach ($y in $doc.Yaml) {
            if ($y['Type'] -ne $p.Type) { $problems.Add("-$($p.Name): Type is '$($y['Type'])', the cmdlet says '$($p.Type)'") }
            $aliases = @(if ($y['Aliases']) { $y['Aliases'] -split ',\s*' | Where-Object { $_ } })
            if ((@($aliases | Sort-Object) -join ',') -ne (@($p.Aliases | Sort-Object) -join ',')) {
                $problems.Add("-$($p.Name): Aliases are '$($aliases -join ', ')', the cmdlet says '$($p.Aliases -join ', ')'")
            }
            if ($p.Values.Count -and ((@($y['Accepted values'] -split ',\s*') -join ',') -ne ($p.Values -join ','))) {
                $problems.Add("-$($p.Name): Accepted values must be '$($p.Values -join ', ')'")
            }
            $wild = if ($p.Wildcards) { 'True' } else { 'False' }
            if ($y['Accept wildcard characters'] -ne $wild) { $problems.Add("-$($p.Name): Accept wildcard characters must be $wild") }
        }
        foreach ($set in $inSets) {
            $sp = $set.Parameters | Where-Object Name -EQ $p.Name
            $blocks = @($doc.Yaml | Where-Object {
                    $names = @($_['Parameter Sets'] -split ',\s*')
                    ($names -contains '(All)' -and $inSets.Count -eq $Cmd.AllSetNames.Count) -or $names -contains $set.Name
                })
            if ($blocks.Count -ne 1) { $problems.Add("-$($p.Name): expected one yaml block for parameter set '$($set.Name)', found $($blocks.Count)"); continue }
            $y = $blocks[0]
            $expect = [ordered]@{
                'Required'              = "$([bool]$sp.Required)"
                'Position'              = Format-Position $sp.Position
                'Accept pipeline input' = Format-PipelineInput $sp.ByValue $sp.ByPropertyName
            }
            foreach ($k in $expect.Keys) {
                if ($y[$k] -ne $expect[$k]) { $problems.Add("-$($p.Name) in set '$($set.Name)': $k is '$($y[$k])', the cmdlet says '$($expect[$k])'") }
            }
        }
    }
    return , $problems.ToArray()
}

# ---------------------------------------------------------------- MAML
$nsMaml = 'http://schemas.microsoft.com/maml/2004/10'
$nsCommand = 'http://schemas.microsoft.com/maml/dev/command/2004/10'
$nsDev = 'http://schemas.microsoft.com/maml/dev/2004/10'

function Write-Paras([System.Xml.XmlWriter] $W, [string[]] $Paras) {
    foreach ($p in @($Paras)) { $W.WriteElementString('maml', 'para', $nsMaml, $p) }
}

function Write-Parameter {
    param([System.Xml.XmlWriter] $W, $Param, $SetParam, $Doc, [bool] $InSyntax)
    $W.WriteStartElement('command', 'parameter', $nsCommand)
    $W.WriteAttributeString('required', "$([bool]$SetParam.Required)".ToLowerInvariant())
    $W.WriteAttributeString('variableLength', 'true')
    $W.WriteAttributeString('globbing', "$([bool]$Param.Wildcards)".ToLowerInvariant())
    $W.WriteAttributeString('pipelineInput', (Format-PipelineInput $SetParam.ByValue $SetParam.ByPropertyName))
    $W.WriteAttributeString('position', $(if ($SetParam.Position -lt 0) { 'named' } else { "$($SetParam.Position)" }))
    $W.WriteAttributeString('aliases', $(if ($Param.Aliases.Count) { $Param.Aliases -join ', ' } else { 'none' }))
    $W.WriteElementString('maml', 'name', $nsMaml, $Param.Name)
    $W.WriteStartElement('maml', 'description', $nsMaml); Write-Paras $W $Doc.Description; $W.WriteEndElement()
    if ($Param.Values.Count) {
        $W.WriteStartElement('command', 'parameterValueGroup', $nsCommand)
        foreach ($v in $Param.Values) {
            $W.WriteStartElement('command', 'parameterValue', $nsCommand)
            $W.WriteAttributeString('required', 'false'); $W.WriteAttributeString('variableLength', 'false')
            $W.WriteString($v); $W.WriteEndElement()
        }
        $W.WriteEndElement()
    }
    # Get-Help shows a value placeholder unless the parameter is a switch (inside syntax items).
    if (-not ($InSyntax -and $Param.IsSwitch)) {
        $W.WriteStartElement('command', 'parameterValue', $nsCommand)
        $W.WriteAttributeString('required', $(if ($Param.IsSwitch) { 'false' } else { 'true' }))
        $W.WriteAttributeString('variableLength', 'false')
        $W.WriteString($Param.Type); $W.WriteEndElement()
    }
    $W.WriteStartElement('dev', 'type', $nsDev); $W.WriteElementString('maml', 'name', $nsMaml, $Param.FullType); $W.WriteElementString('maml', 'uri', $nsMaml, ''); $W.WriteEndElement()
    $default = if ($Param.IsSwitch) { 'False' } else { 'None' }
    $y = @($Doc.Yaml)[0]
    if ($y -and $y['Default value']) { $default = $y['Default value'] }
    $W.WriteElementString('dev', 'defaultValue', $nsDev, $default)
    $W.WriteEndElement()
}

function Write-TypeList([System.Xml.XmlWriter] $W, [string] $ListName, [string] $ItemName, $Items) {
    $W.WriteStartElement('command', $ListName, $nsCommand)
    foreach ($i in @($Items)) {
        $W.WriteStartElement('command', $ItemName, $nsCommand)
        $W.WriteStartElement('dev', 'type', $nsDev); $W.WriteElementString('maml', 'name', $nsMaml, $i.Type); $W.WriteEndElement()
        $W.WriteStartElement('maml', 'description', $nsMaml); Write-Paras $W $i.Description; $W.WriteEndElement()
        $W.WriteEndElement()
    }
    $W.WriteEndElement()
}

function Write-Command([System.Xml.XmlWriter] $W, $Page, $Cmd) {
    $W.WriteStartElement('command', 'command', $nsCommand)
    $W.WriteAttributeString('xmlns', 'maml', $null, $nsMaml)
    $W.WriteAttributeString('xmlns', 'command', $null, $nsCommand)
    $W.WriteAttributeString('xmlns', 'dev', $null, $nsDev)
    $W.WriteStartElement('command', 'details', $nsCommand)
    $W.WriteElementString('command', 'name', $nsCommand, $Cmd.Name)
    $W.WriteStartElement('maml', 'description', $nsMaml); Write-Paras $W @($Page.Synopsis); $W.WriteEndElement()
    $W.WriteElementString('command', 'verb', $nsCommand, $Cmd.Verb)
    $W.WriteElementString('command', 'noun', $nsCommand, $Cmd.Noun)
    $W.WriteEndElement()
    $W.WriteStartElement('maml', 'description', $nsMaml); Write-Paras $W $Page.Description; $W.WriteEndElement()

    $W.WriteStartElement('command', 'syntax', $nsCommand)
    # Default set first, as Get-Command -Syntax shows it.
    foreach ($set in @($Cmd.ParameterSets | Sort-Object { -not $_.IsDefault })) {
        $W.WriteStartElement('command', 'syntaxItem', $nsCommand)
        $W.WriteElementString('maml', 'name', $nsMaml, $Cmd.Name)
        $ordered = @($set.Parameters | Sort-Object @{ e = { if ($_.Position -lt 0) { [int]::MaxValue } else { $_.Position } } }, @{ e = { -not $_.Required } })
        foreach ($sp in $ordered) {
            $param = $Cmd.Parameters | Where-Object Name -EQ $sp.Name
            Write-Parameter $W $param $sp $Page.Parameters[$sp.Name] $true
        }
        $W.WriteEndElement()
    }
    $W.WriteEndElement()

    $W.WriteStartElement('command', 'parameters', $nsCommand)
    foreach ($param in $Cmd.Parameters) {
        # One entry per parameter; required/position/pipeline from its first set (the default set if it is there).
        $set = @($Cmd.ParameterSets | Sort-Object { -not $_.IsDefault } | Where-Object { $_.Parameters.Name -contains $param.Name })[0]
        $sp = $set.Parameters | Where-Object Name -EQ $param.Name
        Write-Parameter $W $param $sp $Page.Parameters[$param.Name] $false
    }
    $W.WriteEndElement()

    Write-TypeList $W 'inputTypes' 'inputType' $Page.Inputs
    Write-TypeList $W 'returnValues' 'returnValue' $Page.Outputs
    $W.WriteStartElement('maml', 'alertSet', $nsMaml); $W.WriteStartElement('maml', 'alert', $nsMaml); Write-Paras $W $Page.Notes; $W.WriteEndElement(); $W.WriteEndElement()

    $W.WriteStartElement('command', 'examples', $nsCommand)
    foreach ($e in $Page.Examples) {
        $W.WriteStartElement('command', 'example', $nsCommand)
        $W.WriteElementString('maml', 'title', $nsMaml, "--------- $($e.Title) ---------")
        $W.WriteElementString('dev', 'code', $nsDev, $e.Code)
        $W.WriteStartElement('dev', 'remarks', $nsDev); Write-Paras $W $e.Remarks; $W.WriteEndElement()
        $W.WriteEndElement()
    }
    $W.WriteEndElement()

    $W.WriteStartElement('command', 'relatedLinks', $nsCommand)
    $links = @($Page.Links)
    if ($Page.Front['online version']) { $links = @([pscustomobject]@{ Text = 'Online Version:'; Uri = $Page.Front['online version'] }) + $links }
    foreach ($l in $links) {
        $W.WriteStartElement('maml', 'navigationLink', $nsMaml)
        $W.WriteElementString('maml', 'linkText', $nsMaml, $l.Text)
        # Relative links (other pages) mean nothing to Get-Help -Online; keep the text, drop the uri.
        $W.WriteElementString('maml', 'uri', $nsMaml, $(if ($l.Uri -match '^https?://') { $l.Uri } else { '' }))
        $W.WriteEndElement()
    }
    $W.WriteEndElement()
    $W.WriteEndElement()
}

# ---------------------------------------------------------------- about_ topics
function ConvertTo-AboutText {
    param([string] $Path)
    $lines = Get-Content -LiteralPath $Path
    if ($lines.Count -gt 0 -and $lines[0] -eq '---') {
        $end = [Array]::IndexOf($lines, '---', 1)
        $lines = $lines[($end + 1)..($lines.Count - 1)]
    }
    $out = [System.Text.StringBuilder]::new()
    $inFence = $false
    foreach ($l in $lines) {
        if ($l -match '^\s*```') { $inFence = -not $inFence; continue }
        if ($inFence) { [void]$out.AppendLine("        $l"); continue }
        if ($l -match '^# (.+)$') { [void]$out.AppendLine("TOPIC").AppendLine("    $($Matches[1].Trim())"); continue }
        if ($l -match '^#{2,} (.+)$') { [void]$out.AppendLine().AppendLine($Matches[1].Trim().ToUpperInvariant()); continue }
        [void]$out.AppendLine($(if ($l.Trim()) { "    $($l -replace '`', '')" } else { '' }))
    }
    return $out.ToString()
}

# ---------------------------------------------------------------- main
$DocsPath = (Resolve-Path -LiteralPath $DocsPath).ProviderPath
$ModulePath = (Resolve-Path -LiteralPath $ModulePath).ProviderPath
$manifest = Join-Path $ModulePath "$ModuleName.psd1"
if (-not (Test-Path $manifest)) { throw "No staged module manifest at $manifest; run the Build step first." }
$commands = @(Get-CmdletMetadata -ManifestPath $manifest -Name $ModuleName)
# Cmdlet pages are the Verb-Noun.md files with platyPS front matter; other docs (simulator.md, repository-format.md) are prose.
$pages = @(Get-ChildItem -LiteralPath $DocsPath -Filter '*.md' |
        Where-Object { $_.Name -match '^[A-Za-z]+-[A-Za-z]+\.md$' -and (Get-Content -LiteralPath $_.FullName -TotalCount 8) -contains 'schema: 2.0.0' } |
        ForEach-Object { Read-CmdletPage $_.FullName })

$errors = [System.Collections.Generic.List[string]]::new()
foreach ($cmd in $commands) {
    if (-not ($pages | Where-Object Name -EQ $cmd.Name)) { $errors.Add("$($cmd.Name): no page docs/$($cmd.Name).md") }
}
foreach ($page in $pages) {
    $cmd = $commands | Where-Object Name -EQ $page.Name
    if (-not $cmd) { $errors.Add("$(Split-Path -Leaf $page.Path): documents '$($page.Name)', which the module does not export"); continue }
    foreach ($p in (Test-PageAgainstCmdlet $page $cmd)) { $errors.Add("$(Split-Path -Leaf $page.Path): $p") }
}
if ($errors.Count) { throw ("The help pages disagree with the cmdlets:`n  " + ($errors -join "`n  ")) }

$culture = Join-Path $ModulePath 'en-US'
New-Item -ItemType Directory -Force -Path $culture | Out-Null
$helpFile = Join-Path $culture "$AssemblyName-Help.xml"
$settings = [System.Xml.XmlWriterSettings]@{ Indent = $true; Encoding = [System.Text.UTF8Encoding]::new($false) }
$w = [System.Xml.XmlWriter]::Create($helpFile, $settings)
try {
    $w.WriteStartDocument()
    $w.WriteStartElement('helpItems', 'http://msh')
    $w.WriteAttributeString('schema', 'maml')
    foreach ($cmd in @($commands | Sort-Object Name)) { Write-Command $w ($pages | Where-Object Name -EQ $cmd.Name) $cmd }
    $w.WriteEndElement()
    $w.WriteEndDocument()
}
finally { $w.Dispose() }
Write-Host "   help: $($commands.Count) cmdlets -> $helpFile"

foreach ($about in (Get-ChildItem -LiteralPath $DocsPath -Filter 'about_*.md')) {
    $target = Join-Path $culture ($about.BaseName + '.help.txt')
    [IO.File]::WriteAllText($target, (ConvertTo-AboutText $about.FullName), [System.Text.UTF8Encoding]::new($false))
    Write-Host "   help: $($about.Name) -> $target"
}
