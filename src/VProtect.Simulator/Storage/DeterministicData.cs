using System.Buffers.Binary;

namespace VProtect.Simulator.Storage;

/// <summary>
/// Reproducible disk content: every 8-byte word at absolute offset 8k is splitmix64(seed, k), little-endian,
/// so any byte depends only on (seed, absolute offset). Tests recompute expected data and hashes from this
/// without asking the simulator.
/// </summary>
public static class DeterministicData
{
    /// <summary>Fills <paramref name="buffer"/> with the content that lives at <paramref name="absoluteOffset"/>.</summary>
    public static void Fill(Span<byte> buffer, long seed, long absoluteOffset)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(absoluteOffset);
        int done = 0;
        long word = absoluteOffset >> 3;
        int skip = (int)(absoluteOffset & 7);
        Span<byte> tmp = stackalloc byte[8];
        if (skip != 0)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(tmp, Mix(seed, word++));
            int n = Math.Min(8 - skip, buffer.Length);
            tmp.Slice(skip, n).CopyTo(buffer);
            done = n;
        }
        while (buffer.Length - done >= 8)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(buffer.Slice(done, 8), Mix(seed, word++));
            done += 8;
        }
        if (done < buffer.Length)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(tmp, Mix(seed, word));
            tmp[..(buffer.Length - done)].CopyTo(buffer[done..]);
        }
    }

    private static ulong Mix(long seed, long word)
    {
        // splitmix64 of (seed * golden + word): a cheap, well-distributed hash of the position.
        ulong z = unchecked((ulong)seed * 0x9E3779B97F4A7C15UL + (ulong)word * 0xBF58476D1CE4E5B9UL + 0x94D049BB133111EBUL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}
