using System.Runtime.CompilerServices;

[assembly: InternalsVisibleTo("VProtect.Core.Tests")]
