using System.Text;
using VProtect.Core.Xapi.Wire;
using Xunit;

namespace VProtect.Core.Tests.Xapi;

/// <summary>
/// Damaged input of every kind must end in either a value or <see cref="XapiWireException"/>; never another exception
/// type (the simulator maps XapiWireException to HTTP 500, the XVA reader to a format error). Deterministic seeds.
/// </summary>
public class WireCodecFuzzTests
{
    private static readonly object?[] Sample =
    {
        new Dictionary<string, object?>
        {
            ["s"] = "a & <b> ü", ["n"] = 10737418240L, ["b"] = true, ["d"] = 0.125, ["t"] = DateTime.UnixEpoch,
            ["a"] = new object?[] { "x", new object?[0], new Dictionary<string, object?> { ["k"] = "v" } },
            ["bin"] = new byte[] { 1, 2, 3 },
        },
    };

    private static IEnumerable<byte[]> Damaged(byte[] original, int seed)
    {
        for (var cut = 0; cut < original.Length; cut += 3)
            yield return original[..cut];
        var random = new Random(seed);
        for (var i = 0; i < 600; i++)
        {
            var copy = (byte[])original.Clone();
            var flips = 1 + random.Next(3);
            for (var f = 0; f < flips; f++)
                copy[random.Next(copy.Length)] = (byte)random.Next(256);
            yield return copy;
        }
    }

    private static void OnlyWireErrors(Action decode)
    {
        try
        {
            decode();
        }
        catch (XapiWireException)
        {
        }
    }

    [Fact]
    public void Xml_decoders_only_ever_throw_wire_exceptions()
    {
        var response = Encoding.UTF8.GetBytes(XmlRpc.EncodeSuccess(Sample));
        foreach (var bytes in Damaged(response, 1))
        {
            OnlyWireErrors(() => XmlRpc.DecodeResponse(new MemoryStream(bytes)));
            var text = Encoding.UTF8.GetString(bytes);
            OnlyWireErrors(() => XmlRpc.DecodeResponse(text));
        }
        var call = Encoding.UTF8.GetBytes(XmlRpc.EncodeMethodCall("VM.create", Sample));
        foreach (var bytes in Damaged(call, 2))
            OnlyWireErrors(() => XmlRpc.DecodeMethodCall(Encoding.UTF8.GetString(bytes)));
        var value = Encoding.UTF8.GetBytes(XmlRpc.EncodeValue(Sample[0]));
        foreach (var bytes in Damaged(value, 3))
            OnlyWireErrors(() => XmlRpc.DecodeValue(new MemoryStream(bytes)));
    }

    [Fact]
    public void Json_decoders_only_ever_throw_wire_exceptions()
    {
        var v1 = Encoding.UTF8.GetBytes(JsonRpc.EncodeSuccess(Sample, 1L, JsonRpcVersion.V1));
        foreach (var bytes in Damaged(v1, 4))
        {
            OnlyWireErrors(() => JsonRpc.DecodeResponse(new MemoryStream(bytes)));
            OnlyWireErrors(() => JsonRpc.DecodeResponse(Encoding.UTF8.GetString(bytes)));
        }
        var v2Failure = Encoding.UTF8.GetBytes(JsonRpc.EncodeFailure(new[] { "SR_FULL", "1", "2" }, "id", JsonRpcVersion.V2));
        foreach (var bytes in Damaged(v2Failure, 5))
            OnlyWireErrors(() => JsonRpc.DecodeResponse(Encoding.UTF8.GetString(bytes)));
        var request = Encoding.UTF8.GetBytes(JsonRpc.EncodeRequest("VM.create", Sample, 7L, JsonRpcVersion.V2));
        foreach (var bytes in Damaged(request, 6))
            OnlyWireErrors(() => JsonRpc.DecodeRequest(Encoding.UTF8.GetString(bytes)));
    }

    [Fact]
    public void The_undamaged_samples_decode()
    {
        // Guards the fuzz tests above: they would pass vacuously if the originals never decoded.
        Assert.True(XmlRpc.DecodeResponse(XmlRpc.EncodeSuccess(Sample)).Success);
        Assert.Equal("VM.create", XmlRpc.DecodeMethodCall(XmlRpc.EncodeMethodCall("VM.create", Sample)).Method);
        Assert.IsType<Dictionary<string, object?>>(XmlRpc.DecodeValue(XmlRpc.EncodeValue(Sample[0])));
        Assert.True(JsonRpc.DecodeResponse(JsonRpc.EncodeSuccess(Sample, 1L, JsonRpcVersion.V1)).Success);
        Assert.Equal(new[] { "SR_FULL", "1", "2" }, JsonRpc.DecodeResponse(JsonRpc.EncodeFailure(new[] { "SR_FULL", "1", "2" }, "id", JsonRpcVersion.V2)).ErrorDescription);
        Assert.Equal(JsonRpcVersion.V2, JsonRpc.DecodeRequest(JsonRpc.EncodeRequest("VM.create", Sample, 7L, JsonRpcVersion.V2)).Version);
    }
}
