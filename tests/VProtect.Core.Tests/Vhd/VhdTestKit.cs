using VProtect.Core.Formats.Vhd;
using VProtect.Core.IO;

namespace VProtect.Core.Tests.Vhd;

/// <summary>Shared helpers: a plain byte-array model of a disk, random extents, temp files.</summary>
internal static class VhdTestKit
{
    public const int Sector = 512;

    /// <summary>Random sector-aligned extents inside [0, size), each up to maxLength bytes.</summary>
    public static List<Extent> RandomExtents(Random rng, long size, int count, long maxLength)
    {
        var list = new List<Extent>();
        long sectors = size / Sector;
        for (int i = 0; i < count; i++)
        {
            long start = rng.NextInt64(sectors);
            long len = Math.Min(1 + rng.NextInt64(Math.Max(1, maxLength / Sector)), sectors - start);
            list.Add(new Extent(start * Sector, len * Sector));
        }
        return list;
    }

    /// <summary>Writes random bytes over each extent into both the disk and the model.</summary>
    public static async Task FillAsync(Random rng, SparseMemoryDisk disk, byte[] model, IEnumerable<Extent> extents)
    {
        foreach (var e in extents)
        {
            var data = new byte[e.Length];
            rng.NextBytes(data);
            await disk.WriteAsync(e.Offset, data, default);
            data.CopyTo(model, e.Offset);
        }
    }

    public static async Task<byte[]> ReadAllAsync(IBlockSource source)
    {
        var all = new byte[source.Length];
        // Read in odd-sized pieces so unaligned offsets and block crossings are exercised.
        int piece = 777 * 1024 + 13;
        for (long pos = 0; pos < all.Length; pos += piece)
            await source.ReadAsync(pos, all.AsMemory((int)pos, (int)Math.Min(piece, all.Length - pos)), default);
        return all;
    }

    public static async Task<byte[]> WriteVhdAsync(IBlockSource source, VhdBlockPlan plan, VhdWriteOptions options)
    {
        using var ms = new MemoryStream();
        await VhdStreamWriter.WriteAsync(source, plan, ms, options);
        return ms.ToArray();
    }

    public static string TempFile(byte[] content)
    {
        var path = Path.Combine(Path.GetTempPath(), $"vhdtest-{Guid.NewGuid():N}.vhd");
        File.WriteAllBytes(path, content);
        return path;
    }

    public static async Task<VhdFile> OpenBytesAsync(byte[] content)
    {
        var path = TempFile(content);
        try { return await VhdFile.OpenAsync(path); }
        finally { File.Delete(path); } // Linux: the open handle keeps the data readable
    }

    public static void AssertEqualBytes(byte[] expected, byte[] actual)
    {
        Xunit.Assert.Equal(expected.Length, actual.Length);
        int diff = expected.AsSpan().CommonPrefixLength(actual);
        if (diff != expected.Length)
            Xunit.Assert.Fail($"Content differs first at byte {diff} (expected 0x{expected[diff]:X2}, got 0x{actual[diff]:X2}).");
    }

    /// <summary>Bytes [offset, offset+length) as a disk target that records every write (for streamed applies).</summary>
    /// <remarks>Concurrent writes touch disjoint ranges; the counter is the only shared state.</remarks>
    public sealed class ModelTarget(byte[] model) : IBlockTarget
    {
        public long Length => model.Length;
        public long BytesWritten { get; private set; }
        public ValueTask WriteAsync(long offset, ReadOnlyMemory<byte> data, CancellationToken cancellationToken)
        {
            data.Span.CopyTo(model.AsSpan((int)offset));
            lock (model) BytesWritten += data.Length;
            return ValueTask.CompletedTask;
        }
        public ValueTask WriteZeroesAsync(long offset, long length, CancellationToken cancellationToken)
        {
            model.AsSpan((int)offset, (int)length).Clear();
            return ValueTask.CompletedTask;
        }
        public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;
    }
}
