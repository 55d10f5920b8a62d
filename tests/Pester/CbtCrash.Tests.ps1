# Crash test: a pwsh process running Start-VMBackup is killed at random moments, twenty times. After each kill the
# repository must list only complete backups, and every listed backup must restore to the disk's content (app-02 is
# suspended, so its disk does not change and every backup must hold exactly the live disk).
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Sim = Start-XenSimulator
    Connect-XenPool -Url $Sim.Url -Credential $Sim.Credential
    $script:Control = [uri]$Sim.ControlUrl
    $script:Repo = Join-Path ([IO.Path]::GetTempPath()) "vprotect-pester-crash-$([guid]::NewGuid())"
    $script:Vm = Get-XenPoolVM -Name app-02
    $script:LiveHash = (Invoke-RestMethod -Uri ([uri]::new($Control, "sim/vdi/$($Vm.Disks[0].VdiUuid)/sha256"))).sha256
    $apphost = Join-Path $PSHOME 'pwsh'
    $script:Exe = if (Test-Path $apphost) { $apphost } else { 'dotnet' }
    $script:PreArgs = if (Test-Path $apphost) { @() } else { @((Join-Path $PSHOME 'pwsh.dll')) }
    $script:Child = Join-Path $TestDrive 'backup.ps1'
    Set-Content $Child @'
param($Module, $Url, $User, $Password, $Repo, $Type)
Import-Module $Module
Connect-XenPool -Url $Url -Credential ([pscredential]::new($User, (ConvertTo-SecureString $Password -AsPlainText -Force)))
Start-VMBackup -VM app-02 -Repository $Repo -Type $Type -WarningAction SilentlyContinue | Out-Null
'@
}

AfterAll {
    Get-Variable -Scope Global -Name VProtectXenPoolSession -ErrorAction SilentlyContinue | Remove-Variable -Scope Global
    $Sim | Stop-XenSimulator -Confirm:$false
    Remove-Item $Repo -Recurse -Force -ErrorAction SilentlyContinue
}

Describe 'A backup process killed at random points' {
    It 'leaves only complete backups, each restoring exactly, twenty times' {
        $rng = [Random]::new(20261127)
        $password = $Sim.Credential.GetNetworkCredential().Password
        $kills = 0
        for ($i = 0; $i -lt 20; $i++) {
            $type = if ($i % 2) { 'Incremental' } else { 'Full' }
            $childArgs = $PreArgs + @('-NoProfile', '-NonInteractive', '-File', $Child, $env:VPROTECT_MODULE_PATH, $Sim.Url, $Sim.Credential.UserName, $password, $Repo, $type)
            $p = Start-Process -FilePath $Exe -ArgumentList $childArgs -PassThru -RedirectStandardOutput (Join-Path $TestDrive "o$i.txt") -RedirectStandardError (Join-Path $TestDrive "e$i.txt")
            # Random moment: from module load to after the commit.
            $null = $p.WaitForExit($rng.Next(300, 4000))
            if (-not $p.HasExited) { $p.Kill($true); $kills++ }
            $null = $p.WaitForExit(10000)
            $p.HasExited | Should -BeTrue
            if (Test-Path $Repo) {
                foreach ($b in @(Get-VMBackup -Repository $Repo)) { $b.Status | Should -Be 'Complete' }
            }
        }
        $kills | Should -BeGreaterThan 0 -Because 'some runs must actually have been interrupted'
        $listed = @(Get-VMBackup -Repository $Repo)
        $listed.Count | Should -BeGreaterThan 0 -Because 'some runs must have completed'
        foreach ($b in $listed) {
            $r = $b | Restore-VMBackup -Disk 0 -Confirm:$false
            (Invoke-RestMethod -Uri ([uri]::new($Control, "sim/vdi/$($r.Disks[0].VdiUuid)/sha256"))).sha256 | Should -Be $LiveHash
        }
        # A run after all the kills succeeds (it cleans what the killed runs left in the repository).
        (Start-VMBackup -VM app-02 -Repository $Repo -WarningAction SilentlyContinue).Status | Should -Be 'Complete'
    }
}
