using System.Globalization;
using System.Text;
using VProtect.Core.Xapi.Transport;
using VProtect.Core.Xapi.Wire;

namespace VProtect.Core.Xapi;

/// <summary>
/// A logged-in XAPI session on a pool master. Calls take the session ref as their first argument automatically.
/// Thread-safe for concurrent calls. Dispose logs out sessions this object created (not ones passed to <see cref="FromExisting"/>).
/// </summary>
public sealed partial class XapiSession : IAsyncDisposable
{
    private const int MaxLoginRedirects = 3;

    private readonly XapiConnectionOptions _options;
    private readonly SemaphoreSlim _reloginLock = new(1, 1);
    private RpcTransport _transport;
    private byte[]? _password; // UTF-8, zeroed on dispose; only kept so an expired session can log in again
    private readonly bool _ownsSession;
    private string _opaqueRef;
    private int _disposed;

    private XapiSession(RpcTransport transport, XapiConnectionOptions options, string opaqueRef, string? userName, byte[]? password, bool ownsSession)
    {
        _transport = transport;
        _options = options;
        _opaqueRef = opaqueRef;
        UserName = userName;
        _password = password;
        _ownsSession = ownsSession;
    }

    /// <summary>The URL of the host this session talks to (the master, after any HOST_IS_SLAVE redirect).</summary>
    public Uri Url => _transport.HostUrl;
    public string OpaqueRef => Volatile.Read(ref _opaqueRef);
    public string? UserName { get; }

    /// <summary>Set when login was sent to a pool member and followed HOST_IS_SLAVE to the master.</summary>
    public Uri? RedirectedFrom { get; private set; }

    public int ApiVersionMajor { get; private set; }
    public int ApiVersionMinor { get; private set; }
    public string? PoolName { get; private set; }
    public string? PoolRef { get; private set; }
    public string? MasterRef { get; private set; }
    public string? MasterHostName { get; private set; }
    public string? MasterAddress { get; private set; }

    /// <summary>False when the account is not a local superuser (an AD user with an RBAC role); null when unknown.</summary>
    public bool? IsLocalSuperuser { get; private set; }

    public XapiProtocol Protocol => _transport.Protocol;

    private XapiHttpTransfer? _http;

    /// <summary>HTTP transfers (/export, /import, …) authenticated with this session.</summary>
    public XapiHttpTransfer Http => LazyInitializer.EnsureInitialized(ref _http, () => new XapiHttpTransfer(this));
    public XapiConnectionOptions Options => _options;

    /// <summary>True for API version ≥ major.minor (e.g. 2.8 = XenServer 7.3).</summary>
    public bool ApiVersionAtLeast(int major, int minor) => ApiVersionMajor > major || (ApiVersionMajor == major && ApiVersionMinor >= minor);

    // ---------------------------------------------------------------- login

    /// <summary>
    /// Logs in with <c>session.login_with_password</c> (falling back to fewer arguments on older hosts), follows
    /// HOST_IS_SLAVE to the master, and reads the pool name, master and API version.
    /// </summary>
    public static async Task<XapiSession> LoginAsync(Uri url, string userName, string password, XapiConnectionOptions? options = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(url);
        ArgumentNullException.ThrowIfNull(userName);
        ArgumentNullException.ThrowIfNull(password);
        options = (options ?? new XapiConnectionOptions()).Clone();
        _ = CertificatePolicy.NormalizeThumbprint(options.CertificateThumbprint); // fail early on a malformed pin
        var hostUrl = HostRoot(url);

        Uri? redirectedFrom = null;
        for (var attempt = 0; ; attempt++)
        {
            var transport = new RpcTransport(hostUrl, options.Protocol, options);
            try
            {
                var sessionRef = await LoginOnAsync(transport, userName, password, options.Originator, ct).ConfigureAwait(false);
                var session = new XapiSession(transport, options, sessionRef, userName, Encoding.UTF8.GetBytes(password), ownsSession: true)
                {
                    RedirectedFrom = redirectedFrom,
                };
                try
                {
                    await session.ReadPoolInfoAsync(ct).ConfigureAwait(false);
                }
                catch
                {
                    await session.DisposeAsync().ConfigureAwait(false);
                    throw;
                }
                return session;
            }
            catch (XapiException ex) when (ex.ErrorCode == "HOST_IS_SLAVE" && ex.ErrorParameters.Count > 0 && attempt < MaxLoginRedirects)
            {
                transport.Dispose();
                redirectedFrom ??= hostUrl;
                hostUrl = WithHost(hostUrl, ex.ErrorParameters[0]);
            }
            catch
            {
                transport.Dispose();
                throw;
            }
        }
    }

    /// <summary>
    /// Same as the string overload, for a credential unwrapped at the boundary (e.g. <c>PSCredential.GetNetworkCredential()</c>).
    /// A domain, when set, is sent as <c>DOMAIN\user</c> (how AD users log in to XAPI).
    /// </summary>
    public static Task<XapiSession> LoginAsync(Uri url, System.Net.NetworkCredential credential, XapiConnectionOptions? options = null, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(credential);
        var user = string.IsNullOrEmpty(credential.Domain) ? credential.UserName : credential.Domain + "\\" + credential.UserName;
        return LoginAsync(url, user, credential.Password, options, ct);
    }

    /// <summary>Wraps a session ref obtained elsewhere (e.g. XenServerPSModule). It is not logged out on dispose and cannot re-login.</summary>
    public static XapiSession FromExisting(Uri url, string opaqueRef, XapiConnectionOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(url);
        ArgumentException.ThrowIfNullOrEmpty(opaqueRef);
        options = (options ?? new XapiConnectionOptions()).Clone();
        _ = CertificatePolicy.NormalizeThumbprint(options.CertificateThumbprint);
        var transport = new RpcTransport(HostRoot(url), options.Protocol, options);
        return new XapiSession(transport, options, opaqueRef, null, null, ownsSession: false);
    }

    /// <summary>For a session from <see cref="FromExisting"/>: checks it and reads pool name, master and API version.</summary>
    public Task RefreshPoolInfoAsync(CancellationToken ct = default) => ReadPoolInfoAsync(ct);

    private static async Task<string> LoginOnAsync(RpcTransport transport, string userName, string password, string originator, CancellationToken ct)
    {
        // 4 args as the C# SDK does; older hosts count fewer parameters and say MESSAGE_PARAMETER_COUNT_MISMATCH.
        var attempts = new[]
        {
            new object?[] { userName, password, "1.1", originator },
            new object?[] { userName, password, "1.1" },
            new object?[] { userName, password },
        };
        for (var i = 0; ; i++)
        {
            var result = await transport.InvokeAsync("session.login_with_password", attempts[i], ct).ConfigureAwait(false);
            if (result.Success) return XapiValue.AsString(result.Value);
            var description = result.ErrorDescription ?? Array.Empty<string>();
            if (i + 1 < attempts.Length && description.Count > 0 && description[0] == "MESSAGE_PARAMETER_COUNT_MISMATCH") continue;
            throw new XapiException(description, "session.login_with_password");
        }
    }

    private async Task ReadPoolInfoAsync(CancellationToken ct)
    {
        // The calls the C# SDK makes after login (Session.cs), so a host sees the same conversation.
        var pools = XapiValue.AsStruct(await CallAsync("pool.get_all_records", Array.Empty<object?>(), ct).ConfigureAwait(false));
        var pool = pools.FirstOrDefault();
        if (pool.Key is not null)
        {
            var record = XapiValue.AsStruct(pool.Value);
            PoolRef = pool.Key;
            PoolName = XapiValue.AsString(record.GetValueOrDefault("name_label"));
            MasterRef = XapiValue.AsString(record.GetValueOrDefault("master"));
        }
        if (!XapiValue.IsNullRef(MasterRef))
        {
            var host = XapiValue.AsStruct(await CallAsync("host.get_record", new object?[] { MasterRef }, ct).ConfigureAwait(false));
            ApiVersionMajor = (int)XapiValue.AsLong(host.GetValueOrDefault("API_version_major"), "API_version_major");
            ApiVersionMinor = (int)XapiValue.AsLong(host.GetValueOrDefault("API_version_minor"), "API_version_minor");
            MasterHostName = XapiValue.AsString(host.GetValueOrDefault("hostname"));
            MasterAddress = XapiValue.AsString(host.GetValueOrDefault("address"));
        }
        try
        {
            IsLocalSuperuser = XapiValue.AsBool(await CallAsync("session.get_is_local_superuser", Array.Empty<object?>(), ct).ConfigureAwait(false));
        }
        catch (XapiException)
        {
            IsLocalSuperuser = null; // informational only; a restricted role may not read it
        }
        if (_transport.Protocol == XapiProtocol.JsonRpc && ApiVersionAtLeast(2, 8))
            _transport.JsonVersion = JsonRpcVersion.V2;
    }

    // ---------------------------------------------------------------- calls

    /// <summary>Calls <paramref name="method"/> with the session ref prepended; throws <see cref="XapiException"/> on failure.</summary>
    public async Task<object?> CallAsync(string method, IReadOnlyList<object?> args, CancellationToken ct = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(method);
        ArgumentNullException.ThrowIfNull(args);
        ThrowIfDisposed();
        var sessionRef = OpaqueRef;
        var result = await _transport.InvokeAsync(method, Prepend(sessionRef, args), ct).ConfigureAwait(false);
        if (result.Success) return result.Value;

        var description = result.ErrorDescription ?? Array.Empty<string>();
        if (description.Count > 0 && description[0] == "SESSION_INVALID" && _password is not null)
        {
            await ReloginAsync(sessionRef, ct).ConfigureAwait(false);
            result = await _transport.InvokeAsync(method, Prepend(OpaqueRef, args), ct).ConfigureAwait(false);
            if (result.Success) return result.Value;
            description = result.ErrorDescription ?? Array.Empty<string>();
        }
        throw new XapiException(description, method);
    }

    /// <summary>Calls a method that takes no session (rare: e.g. <c>session.login_with_password</c> variants).</summary>
    public async Task<object?> CallWithoutSessionAsync(string method, IReadOnlyList<object?> args, CancellationToken ct = default)
    {
        ThrowIfDisposed();
        var result = await _transport.InvokeAsync(method, args, ct).ConfigureAwait(false);
        if (result.Success) return result.Value;
        throw new XapiException(result.ErrorDescription ?? Array.Empty<string>(), method);
    }

    private async Task ReloginAsync(string expiredRef, CancellationToken ct)
    {
        await _reloginLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            if (OpaqueRef != expiredRef) return; // another caller already logged in again
            var password = _password ?? throw new ObjectDisposedException(nameof(XapiSession));
            var fresh = await LoginOnAsync(_transport, UserName!, Encoding.UTF8.GetString(password), _options.Originator, ct).ConfigureAwait(false);
            Volatile.Write(ref _opaqueRef, fresh);
        }
        finally
        {
            _reloginLock.Release();
        }
    }

    private static object?[] Prepend(string sessionRef, IReadOnlyList<object?> args)
    {
        var all = new object?[args.Count + 1];
        all[0] = sessionRef;
        for (var i = 0; i < args.Count; i++) all[i + 1] = args[i];
        return all;
    }

    // ---------------------------------------------------------------- logout / dispose

    public async Task LogoutAsync(CancellationToken ct = default)
    {
        ThrowIfDisposed();
        var result = await _transport.InvokeAsync("session.logout", new object?[] { OpaqueRef }, ct).ConfigureAwait(false);
        ForgetPassword();
        if (!result.Success)
        {
            var description = result.ErrorDescription ?? Array.Empty<string>();
            if (description.Count > 0 && description[0] == "SESSION_INVALID") return; // already gone: the goal is met
            throw new XapiException(description, "session.logout");
        }
    }

    /// <summary>Logs out (best effort, bounded by the timeout) when this object created the session, then frees resources.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        if (_ownsSession)
        {
            try
            {
                await _transport.InvokeAsync("session.logout", new object?[] { OpaqueRef }, CancellationToken.None).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is XapiConnectionException or XapiWireException)
            {
                // The host is gone; its session will expire on its own.
            }
        }
        ForgetPassword();
        _transport.Dispose();
        _reloginLock.Dispose();
    }

    private void ForgetPassword()
    {
        var password = Interlocked.Exchange(ref _password, null);
        if (password is not null) Array.Clear(password);
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);

    internal RpcTransport Transport => _transport;

    // ---------------------------------------------------------------- URLs

    private static Uri HostRoot(Uri url)
    {
        if (!url.IsAbsoluteUri || (url.Scheme != Uri.UriSchemeHttps && url.Scheme != Uri.UriSchemeHttp))
            throw new ArgumentException($"'{url}' is not an http(s) URL; pass e.g. https://xen-master.example.", nameof(url));
        return new UriBuilder(url.Scheme, url.Host, url.Port).Uri;
    }

    /// <summary>Same scheme and port, another host (an IP or name from HOST_IS_SLAVE or a 302 Location).</summary>
    internal static Uri WithHost(Uri url, string host)
    {
        host = host.Trim();
        if (host.Contains(':') && !host.StartsWith('[')) host = "[" + host + "]"; // bare IPv6
        return new UriBuilder(url.Scheme, host, url.Port).Uri;
    }

    public override string ToString() =>
        string.Create(CultureInfo.InvariantCulture, $"{UserName ?? "(existing session)"}@{Url} (API {ApiVersionMajor}.{ApiVersionMinor}, pool '{PoolName}')");
}
