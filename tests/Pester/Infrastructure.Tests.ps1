# The cmdlet infrastructure: the one error table and the progress throttle of the pipeline pump.
BeforeAll {
    Import-Module $env:VPROTECT_MODULE_PATH -Force
    $script:Map = [VProtect.PowerShell.Infrastructure.ErrorMap]
}

Describe 'The error table' {
    It 'maps <Name> to <Id> / <Category>' -ForEach @(
        @{ Name = 'BackupFormatException'; Id = 'BackupFormatInvalid'; Category = 'InvalidData'; Make = { [VProtect.Core.Formats.BackupFormatException]::new('full.vhd', 512, 'bad footer checksum') } }
        @{ Name = 'IOException'; Id = 'IOFailed'; Category = 'WriteError'; Make = { [System.IO.IOException]::new('disk full') } }
        @{ Name = 'UnauthorizedAccessException'; Id = 'AccessDenied'; Category = 'PermissionDenied'; Make = { [System.UnauthorizedAccessException]::new('no') } }
        @{ Name = 'HttpRequestException'; Id = 'XenPoolConnectionFailed'; Category = 'ConnectionError'; Make = { [System.Net.Http.HttpRequestException]::new('refused') } }
        @{ Name = 'a TLS failure'; Id = 'XenPoolCertificateRejected'; Category = 'SecurityError'; Make = { [System.Net.Http.HttpRequestException]::new('ssl', [System.Security.Authentication.AuthenticationException]::new('remote certificate invalid')) } }
        @{ Name = 'a timeout'; Id = 'OperationTimedOut'; Category = 'OperationTimeout'; Make = { [System.Threading.Tasks.TaskCanceledException]::new('timed out') } }
        @{ Name = 'an AggregateException of one'; Id = 'IOFailed'; Category = 'WriteError'; Make = { [System.AggregateException]::new([Exception[]]@([System.IO.IOException]::new('inner'))) } }
        @{ Name = 'SESSION_AUTHENTICATION_FAILED'; Id = 'XenPoolAuthenticationFailed'; Category = 'AuthenticationError'; Make = { [VProtect.Core.Xapi.XapiException]::new([string[]]@('SESSION_AUTHENTICATION_FAILED'), 'session.login_with_password') } }
        @{ Name = 'SESSION_INVALID'; Id = 'XenPoolSessionExpired'; Category = 'AuthenticationError'; Make = { [VProtect.Core.Xapi.XapiException]::new([string[]]@('SESSION_INVALID', 'OpaqueRef:x'), 'VM.get_all_records') } }
        @{ Name = 'RBAC_PERMISSION_DENIED'; Id = 'XenPoolPermissionDenied'; Category = 'PermissionDenied'; Make = { [VProtect.Core.Xapi.XapiException]::new([string[]]@('RBAC_PERMISSION_DENIED', 'vm.destroy', 'no'), $null) } }
        @{ Name = 'UUID_INVALID'; Id = 'XenObjectNotFound'; Category = 'ObjectNotFound'; Make = { [VProtect.Core.Xapi.XapiException]::new([string[]]@('UUID_INVALID', 'VM', 'x'), $null) } }
        @{ Name = 'VM_BAD_POWER_STATE'; Id = 'XenObjectInWrongState'; Category = 'InvalidOperation'; Make = { [VProtect.Core.Xapi.XapiException]::new([string[]]@('VM_BAD_POWER_STATE', 'OpaqueRef:v', 'halted', 'running'), $null) } }
        @{ Name = 'LICENCE_RESTRICTION'; Id = 'XenFeatureUnavailable'; Category = 'ResourceUnavailable'; Make = { [VProtect.Core.Xapi.XapiException]::new([string[]]@('LICENCE_RESTRICTION', 'CBT'), $null) } }
        @{ Name = 'an unknown XAPI code'; Id = 'XenApiError'; Category = 'InvalidOperation'; Make = { [VProtect.Core.Xapi.XapiException]::new([string[]]@('SOMETHING_NEW', 'p'), $null) } }
        @{ Name = 'HTTP 401 from the pool'; Id = 'XenPoolAuthenticationFailed'; Category = 'AuthenticationError'; Make = { [VProtect.Core.Xapi.XapiConnectionException]::new('401', [uri]'http://127.0.0.1/', $null, 401) } }
        @{ Name = 'a refused connection'; Id = 'XenPoolConnectionFailed'; Category = 'ConnectionError'; Make = { [VProtect.Core.Xapi.XapiConnectionException]::new('refused', [uri]'http://127.0.0.1/', [System.Net.Sockets.SocketException]::new(111), $null) } }
        @{ Name = 'an incremental refused under -NoFallback'; Id = 'IncrementalNotPossible'; Category = 'InvalidOperation'; Make = { [VProtect.Core.Backup.IncrementalNotPossibleException]::new('vm1', 'disk 1 was resized.') } }
        @{ Name = 'anything else'; Id = 'UnexpectedError'; Category = 'NotSpecified'; Make = { [System.InvalidCastException]::new('?') } }
    ) {
        $target = [pscustomobject]@{ Name = 'vm1' }
        $record = $Map::ToErrorRecord((& $Make), $target)
        $record.FullyQualifiedErrorId | Should -Be $Id
        "$($record.CategoryInfo.Category)" | Should -Be $Category
        $record.TargetObject | Should -Be $target
        $record.Exception | Should -Not -BeOfType ([System.AggregateException])
    }

    It 'tells the user what to do next for a damaged backup' {
        $record = $Map::ToErrorRecord([VProtect.Core.Formats.BackupFormatException]::new('full.vhd', 512, 'bad footer checksum'), $null)
        $record.ErrorDetails.RecommendedAction | Should -Not -BeNullOrEmpty
        $record.Exception.Message | Should -BeLike '*full.vhd*512*'
    }

    It 'NoSession is InvalidOperation with a RecommendedAction naming Connect-XenPool' {
        $record = $Map::NoSession()
        $record.FullyQualifiedErrorId | Should -Be 'NoXenPoolSession'
        "$($record.CategoryInfo.Category)" | Should -Be 'InvalidOperation'
        $record.ErrorDetails.RecommendedAction | Should -BeLike '*Connect-XenPool*'
    }
}

Describe 'The pipeline sink' {
    BeforeAll {
        $type = [VProtect.PowerShell.Infrastructure.PipelineSink]
        $ctor = $type.GetConstructors([System.Reflection.BindingFlags]'NonPublic,Instance')[0]
        $script:Flags = [System.Reflection.BindingFlags]'NonPublic,Instance'
        function New-Sink([scriptblock] $Clock) { $ctor.Invoke(@([System.Threading.CancellationToken]::None, [Func[datetime]]$Clock)) }
        function Get-Queued($Sink) {
            [void]$Sink.GetType().GetMethod('Complete', $Flags).Invoke($Sink, @())
            @($Sink.GetType().GetMethod('Drain', $Flags).Invoke($Sink, @())).Count
        }
        function New-Progress([int] $Id, [int] $Percent, [int] $Parent = -1) {
            $r = [System.Management.Automation.ProgressRecord]::new($Id, "activity $Id", "$Percent %")
            $r.PercentComplete = $Percent; $r.ParentActivityId = $Parent
            $r
        }
    }

    It 'drops progress of one activity that comes sooner than 250 ms after the last, but never a Completed record' {
        $script:now = [datetime]'2026-01-01'
        $sink = New-Sink { $script:now }
        $sink.WriteProgress((New-Progress 1 10))
        $script:now = $now.AddMilliseconds(100); $sink.WriteProgress((New-Progress 1 20))   # dropped
        $script:now = $now.AddMilliseconds(200); $sink.WriteProgress((New-Progress 1 30))   # 300 ms after the first
        $done = New-Progress 1 100; $done.RecordType = 'Completed'
        $sink.WriteProgress($done)
        Get-Queued $sink | Should -Be 3
    }

    It 'throttles each activity on its own' {
        $script:now = [datetime]'2026-01-01'
        $sink = New-Sink { $script:now }
        $sink.WriteProgress((New-Progress 1 10))
        $sink.WriteProgress((New-Progress 2 10 1))
        $sink.WriteProgress((New-Progress 1 11))   # dropped
        $sink.WriteProgress((New-Progress 2 11 1)) # dropped
        Get-Queued $sink | Should -Be 2
    }

    It 'completes every activity left open, children before parents' {
        $script:now = [datetime]'2026-01-01'
        $sink = New-Sink { $script:now }
        $sink.WriteProgress((New-Progress 1 10))
        $sink.WriteProgress((New-Progress 2 10 1))
        $sink.WriteProgress((New-Progress 3 10))
        $done = New-Progress 3 100; $done.RecordType = 'Completed'; $sink.WriteProgress($done)
        $open = @($sink.GetType().GetMethod('TakeOpenActivities', $Flags).Invoke($sink, @()))
        $open.Count | Should -Be 2
        $open[0].ActivityId | Should -Be 2
        $open[1].ActivityId | Should -Be 1
        $open | ForEach-Object { "$($_.RecordType)" | Should -Be 'Completed' }
        @($sink.GetType().GetMethod('TakeOpenActivities', $Flags).Invoke($sink, @())).Count | Should -Be 0
    }

    It 'drops writes that arrive after the work ended instead of throwing' {
        $sink = New-Sink { [datetime]::UtcNow }
        $sink.WriteObject(1)
        [void]$sink.GetType().GetMethod('Complete', $Flags).Invoke($sink, @())
        { $sink.WriteObject(2); $sink.WriteWarning('late') } | Should -Not -Throw
        @($sink.GetType().GetMethod('Drain', $Flags).Invoke($sink, @())).Count | Should -Be 1
    }

    It 'is bounded: when the pipeline falls behind, a stopped cmdlet releases the producer with a cancellation' {
        $cts = [System.Threading.CancellationTokenSource]::new()
        $sink = $ctor.Invoke(@($cts.Token, [Func[datetime]] { [datetime]::UtcNow }))
        $capacity = [VProtect.PowerShell.Infrastructure.PipelineSink].GetField('Capacity', [System.Reflection.BindingFlags]'NonPublic,Static').GetValue($null)
        for ($i = 0; $i -lt $capacity; $i++) { $sink.WriteObject($i) }
        $cts.Cancel()
        $err = { $sink.WriteObject('one too many') } | Should -Throw -PassThru
        $err.Exception.InnerException | Should -BeOfType ([System.OperationCanceledException])
        [void]$sink.GetType().GetMethod('Complete', $Flags).Invoke($sink, @())
        @($sink.GetType().GetMethod('Drain', $Flags).Invoke($sink, @())).Count | Should -Be $capacity
    }
}
