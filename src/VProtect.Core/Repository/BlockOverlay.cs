namespace VProtect.Core.Repository;

/// <summary>A piece of the disk served by one record of one layer (layers numbered oldest first).</summary>
internal readonly record struct OverlaySegment(long Start, long End, int Layer, int Record)
{
    public long Length => End - Start;
}

/// <summary>What a stack of layers uses of each layer: what reads still need, what is dead.</summary>
internal sealed class LayerUsage
{
    /// <summary>Per layer: records of which reads use at least one byte.</summary>
    public required int[] LiveRecords { get; init; }
    /// <summary>Per layer: bytes of the data file that no read uses (shadowed records, parts of cut records, unreferenced bytes).</summary>
    public required long[] DeadBytes { get; init; }
    /// <summary>Non-zero disk bytes the stack provides (what a restore reads from data files).</summary>
    public long VisibleDataBytes { get; init; }
}

/// <summary>
/// Newest wins: the records of a stack of layers (a chain of backups, and the layers of each) overlaid into one map of
/// non-overlapping segments, each naming the layer and record it is read from. Memory and time are proportional to the
/// number of records, never to the disk size.
/// </summary>
internal static class BlockOverlay
{
    /// <summary>
    /// Sweeps the records of all layers in disk order and keeps, for each point, the record of the highest layer
    /// covering it. Records within a layer never overlap, so at most one per layer is active.
    /// </summary>
    public static OverlaySegment[] Compute(IReadOnlyList<BlockRecord[]> records, long length)
    {
        int count = 0;
        foreach (var l in records) count += l.Length;
        var events = new List<(long At, int Layer, int Record, bool Start)>(count * 2);
        for (int l = 0; l < records.Count; l++)
            for (int r = 0; r < records[l].Length; r++)
            {
                var rec = records[l][r];
                long end = Math.Min(rec.DiskEnd, length);
                if (rec.DiskOffset >= end) continue;
                events.Add((rec.DiskOffset, l, r, true));
                events.Add((end, l, r, false));
            }
        events.Sort((a, b) => a.At != b.At ? a.At.CompareTo(b.At) : a.Start.CompareTo(b.Start)); // ends before starts
        var active = new int[records.Count];
        Array.Fill(active, -1);
        int top = -1;
        var result = new List<OverlaySegment>();
        long segStart = 0;
        int i = 0;
        while (i < events.Count)
        {
            long at = events[i].At;
            int previousTop = top, previousRecord = top >= 0 ? active[top] : -1;
            for (; i < events.Count && events[i].At == at; i++)
            {
                var e = events[i];
                active[e.Layer] = e.Start ? e.Record : (active[e.Layer] == e.Record ? -1 : active[e.Layer]);
            }
            top = -1;
            for (int l = active.Length - 1; l >= 0; l--) if (active[l] >= 0) { top = l; break; }
            int topRecord = top >= 0 ? active[top] : -1;
            if (top != previousTop || topRecord != previousRecord)
            {
                if (previousTop >= 0 && at > segStart) result.Add(new OverlaySegment(segStart, at, previousTop, previousRecord));
                segStart = at;
            }
        }
        return result.ToArray();
    }

    /// <summary>
    /// Live and dead bytes per layer. A record's stored bytes count as live in proportion to the share of its disk
    /// range that reads still take from it; everything else in the data file (<paramref name="dataFileLengths"/>) is dead.
    /// </summary>
    public static LayerUsage Analyze(IReadOnlyList<BlockRecord[]> records, OverlaySegment[] segments, IReadOnlyList<long> dataFileLengths)
    {
        var visible = new long[records.Count][];
        for (int l = 0; l < records.Count; l++) visible[l] = new long[records[l].Length];
        long visibleData = 0;
        foreach (var s in segments)
        {
            visible[s.Layer][s.Record] += s.Length;
            if (!records[s.Layer][s.Record].IsZero) visibleData += s.Length;
        }
        var live = new int[records.Count];
        var dead = new long[records.Count];
        for (int l = 0; l < records.Count; l++)
        {
            long liveStored = 0;
            for (int r = 0; r < records[l].Length; r++)
            {
                if (visible[l][r] == 0) continue;
                live[l]++;
                var rec = records[l][r];
                if (!rec.IsZero) liveStored += rec.StoredLength * visible[l][r] / rec.Length;
            }
            dead[l] = Math.Max(0, dataFileLengths[l] - liveStored);
        }
        return new LayerUsage { LiveRecords = live, DeadBytes = dead, VisibleDataBytes = visibleData };
    }
}
