// trawl starter rules: script download cradles seen in carved HTTP and SMTP payloads.
// License: MIT OR Apache-2.0, like the rest of trawl.

rule PowerShell_Download_Cradle : script downloader
{
    meta:
        description = "PowerShell fetching and running remote content"
        author = "trawl"
    strings:
        $dl1 = "DownloadString(" ascii wide nocase
        $dl2 = "DownloadFile(" ascii wide nocase
        $dl3 = "Invoke-WebRequest" ascii wide nocase
        $dl4 = "Net.WebClient" ascii wide nocase
        $run1 = "IEX" ascii wide
        $run2 = "Invoke-Expression" ascii wide nocase
        $run3 = "Start-Process" ascii wide nocase
    condition:
        filesize < 2MB and any of ($dl*) and any of ($run*)
}

rule PowerShell_Encoded_Command : script
{
    meta:
        description = "PowerShell started with a base64-encoded command"
        author = "trawl"
    strings:
        $a = /powershell(\.exe)?["']?\s+[^\r\n]{0,64}-e(nc|ncodedcommand)?\s+[A-Za-z0-9+\/=]{40,}/ nocase
    condition:
        $a
}

rule Certutil_Download : script downloader
{
    meta:
        description = "certutil used to download or decode a payload"
        author = "trawl"
    strings:
        $a = "certutil" ascii wide nocase
        $b = "-urlcache" ascii wide nocase
        $c = "-decode" ascii wide nocase
    condition:
        $a and ($b or $c)
}
