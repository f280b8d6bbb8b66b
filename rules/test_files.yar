// trawl starter rules: industry test files.
// License: MIT OR Apache-2.0, like the rest of trawl.

rule EICAR_Test_File : test av
{
    meta:
        description = "EICAR anti-virus test file"
        reference = "https://www.eicar.org/download-anti-malware-testfile/"
        author = "trawl"
    strings:
        $eicar = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!"
        $start = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$"
    condition:
        $start at 0 and $eicar
}
