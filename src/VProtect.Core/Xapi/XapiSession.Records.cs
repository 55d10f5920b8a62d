using VProtect.Core.Xapi.Records;

namespace VProtect.Core.Xapi;

public sealed partial class XapiSession
{
    /// <summary><c>&lt;class&gt;.get_all_records</c> as typed records (the raw map is kept on each).</summary>
    public async Task<IReadOnlyList<T>> GetAllRecordsAsync<T>(CancellationToken ct = default) where T : XapiRecord, IXapiRecord, new()
    {
        var all = XapiValue.AsStruct(await CallAsync(T.XapiClass + ".get_all_records", Array.Empty<object?>(), ct).ConfigureAwait(false));
        var records = new List<T>(all.Count);
        foreach (var (opaqueRef, raw) in all)
            records.Add(XapiRecord.Create<T>(opaqueRef, XapiValue.AsStruct(raw, opaqueRef)));
        return records;
    }

    /// <summary><c>&lt;class&gt;.get_record(ref)</c> as a typed record.</summary>
    public async Task<T> GetRecordAsync<T>(string opaqueRef, CancellationToken ct = default) where T : XapiRecord, IXapiRecord, new()
    {
        ArgumentException.ThrowIfNullOrEmpty(opaqueRef);
        var raw = XapiValue.AsStruct(await CallAsync(T.XapiClass + ".get_record", new object?[] { opaqueRef }, ct).ConfigureAwait(false));
        return XapiRecord.Create<T>(opaqueRef, raw);
    }

    /// <summary>The record of the object with this UUID (<c>get_by_uuid</c> then <c>get_record</c>); UUID_INVALID when there is none.</summary>
    public async Task<T> GetRecordByUuidAsync<T>(string uuid, CancellationToken ct = default) where T : XapiRecord, IXapiRecord, new()
    {
        var opaqueRef = await GetByUuidAsync(T.XapiClass, uuid, ct).ConfigureAwait(false);
        return await GetRecordAsync<T>(opaqueRef, ct).ConfigureAwait(false);
    }

    /// <summary><c>&lt;cls&gt;.get_by_uuid</c>: the ref of the object with that UUID; XapiException UUID_INVALID when there is none.</summary>
    public async Task<string> GetByUuidAsync(string cls, string uuid, CancellationToken ct = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(cls);
        ArgumentException.ThrowIfNullOrEmpty(uuid);
        return XapiValue.AsString(await CallAsync(cls + ".get_by_uuid", new object?[] { uuid }, ct).ConfigureAwait(false));
    }

    /// <summary><c>&lt;cls&gt;.get_by_name_label</c>: every ref with that name (names are not unique; may be empty).</summary>
    public async Task<IReadOnlyList<string>> GetByNameLabelAsync(string cls, string name, CancellationToken ct = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(cls);
        ArgumentNullException.ThrowIfNull(name);
        return XapiValue.AsStringList(await CallAsync(cls + ".get_by_name_label", new object?[] { name }, ct).ConfigureAwait(false));
    }
}
