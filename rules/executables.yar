// trawl starter rules: executables where a network sensor should notice them.
// License: MIT OR Apache-2.0, like the rest of trawl.

rule PE_Executable : executable
{
    meta:
        description = "Windows PE executable (MZ header pointing at a PE signature)"
        author = "trawl"
    condition:
        uint16(0) == 0x5A4D and uint32(0x3C) < filesize - 4 and
        uint32(uint32(0x3C)) == 0x00004550
}

rule ELF_Executable : executable
{
    meta:
        description = "ELF executable or shared object"
        author = "trawl"
    condition:
        uint32(0) == 0x464C457F
}

rule Base64_Encoded_PE : encoded executable
{
    meta:
        description = "A PE header encoded in base64, as droppers and HTML smuggling carry it"
        author = "trawl"
    strings:
        $mz_dos = "TVqQAAMAAAAEAAAA"
        $mz_dos_stub = "TVpQAAIAAAAEAA8A"
    condition:
        any of them
}
