namespace VProtect.Core.Nbd;

/// <summary>Wire constants of the NBD protocol (NetworkBlockDevice/nbd doc/proto.md). All integers are big-endian.</summary>
public static class NbdProtocol
{
    public const ulong NbdMagic = 0x4e42444d41474943;          // "NBDMAGIC"
    public const ulong IHaveOpt = 0x49484156454F5054;          // "IHAVEOPT"
    public const ulong OptionReplyMagic = 0x0003e889045565a9;
    public const uint RequestMagic = 0x25609513;
    public const uint SimpleReplyMagic = 0x67446698;
    public const uint StructuredReplyMagic = 0x668e33ef;

    /// <summary>Options whose data exceeds this are refused; the spec caps strings at 4096 B.</summary>
    public const int MaxOptionLength = 64 * 1024;
    /// <summary>A client rejects option replies larger than this (a sane LIST/INFO reply is far smaller).</summary>
    public const int MaxOptionReplyLength = 64 * 1024;
    /// <summary>The spec's interoperable payload cap when the server gives no block size (proto.md "Size constraints").</summary>
    public const int DefaultMaxPayload = 32 * 1024 * 1024;
    public const string BaseAllocation = "base:allocation";
}

[Flags]
public enum NbdHandshakeFlags : ushort { None = 0, FixedNewstyle = 1, NoZeroes = 2 }

[Flags]
public enum NbdClientFlags : uint { None = 0, FixedNewstyle = 1, NoZeroes = 2 }

public enum NbdOption : uint
{
    ExportName = 1, Abort = 2, List = 3, PeekExport = 4, StartTls = 5, Info = 6, Go = 7,
    StructuredReply = 8, ListMetaContext = 9, SetMetaContext = 10, ExtendedHeaders = 11,
}

public enum NbdOptionReply : uint
{
    Ack = 1, Server = 2, Info = 3, MetaContext = 4,
    ErrUnsup = 0x80000001, ErrPolicy = 0x80000002, ErrInvalid = 0x80000003, ErrPlatform = 0x80000004,
    ErrTlsReqd = 0x80000005, ErrUnknown = 0x80000006, ErrShutdown = 0x80000007, ErrBlockSizeReqd = 0x80000008,
    ErrTooBig = 0x80000009,
}

public enum NbdInfoType : ushort { Export = 0, Name = 1, Description = 2, BlockSize = 3 }

[Flags]
public enum NbdTransmissionFlags : ushort
{
    None = 0, HasFlags = 1 << 0, ReadOnly = 1 << 1, SendFlush = 1 << 2, SendFua = 1 << 3, Rotational = 1 << 4,
    SendTrim = 1 << 5, SendWriteZeroes = 1 << 6, SendDf = 1 << 7, CanMultiConn = 1 << 8, SendResize = 1 << 9,
    SendCache = 1 << 10, SendFastZero = 1 << 11,
}

public enum NbdCommand : ushort { Read = 0, Write = 1, Disconnect = 2, Flush = 3, Trim = 4, Cache = 5, WriteZeroes = 6, BlockStatus = 7 }

[Flags]
public enum NbdCommandFlags : ushort { None = 0, Fua = 1, NoHole = 2, DontFragment = 4, ReqOne = 8, FastZero = 16 }

public enum NbdChunkType : ushort
{
    None = 0, OffsetData = 1, OffsetHole = 2, BlockStatus = 5, Error = 0x8001, ErrorOffset = 0x8002,
}

/// <summary>NBD error numbers (proto.md "Error values"); not the host's errno values.</summary>
public static class NbdErrno
{
    public const int EPERM = 1, EIO = 5, ENOMEM = 12, EINVAL = 22, ENOSPC = 28, EOVERFLOW = 75, ENOTSUP = 95, ESHUTDOWN = 108;

    public static string Name(int errno) => errno switch
    {
        EPERM => "EPERM", EIO => "EIO", ENOMEM => "ENOMEM", EINVAL => "EINVAL", ENOSPC => "ENOSPC",
        EOVERFLOW => "EOVERFLOW", ENOTSUP => "ENOTSUP", ESHUTDOWN => "ESHUTDOWN", _ => $"errno {errno}",
    };
}

/// <summary>Flags of one <c>base:allocation</c> extent.</summary>
[Flags]
public enum NbdAllocationFlags : uint { Data = 0, Hole = 1, Zero = 2 }
