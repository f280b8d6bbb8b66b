//! The HTML pages. Every value shown comes from hostile traffic (names,
//! sensor metadata, rule output), so every one goes through [`esc`]; the
//! pages load nothing from anywhere else and run no script.

use std::fmt::Write;

use serde_json::Value;

use crate::store::{Count, FileView, Overview, SearchPage, Sighting, PAGE};

/// `text` safe inside an element or a quoted attribute.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An RFC 3339 time to the second, as people read it (UTC).
fn when(rfc3339: &str) -> String {
    esc(&rfc3339.get(..19).unwrap_or(rfc3339).replacen('T', " ", 1))
}

/// `text` as a URL query value.
fn query_value(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:0;color:#1d2330}\
header{background:#1d2330;color:#fff;padding:.6em 1em;display:flex;gap:1em;align-items:center}\
header a{color:#fff;text-decoration:none;font-weight:600}\
header input{width:32em;padding:.3em}main{padding:1em}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25em .5em;border-bottom:1px solid #dde}\
th{background:#f3f4f8}.mono{font-family:ui-monospace,monospace;font-size:12px}\
.rule{background:#fde2e2;color:#8a1c1c;border-radius:3px;padding:0 .3em;margin-right:.3em}\
.err{color:#a33}pre{background:#f6f7fa;padding:.5em;overflow:auto;max-height:24em}\
section{margin-bottom:1.5em}.bar{fill:#4a6fa5}.small{color:#667}\
ul.tree{list-style:none;padding-left:0}ul.tree li{white-space:nowrap}";

fn layout(title: &str, query: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:\">\
         <title>{title} · trawl</title><style>{STYLE}</style></head><body>\
         <header><a href=\"/\">trawl</a><form action=\"/\" method=\"get\">\
         <input id=\"q\" name=\"q\" value=\"{query}\" placeholder=\"sha256, md5, sha1, name, rule, mime, IP, sensor\" autofocus>\
         <button type=\"submit\">Search</button></form></header><main>{body}</main></body></html>",
        title = esc(title),
        query = esc(query),
    )
}

fn flow_text(flow: Option<&Value>) -> String {
    let Some(f) = flow else {
        return String::new();
    };
    let end = |ip: &str, port: &str| {
        let ip = f[ip].as_str().unwrap_or("?");
        match f[port].as_u64() {
            Some(p) => format!("{ip}:{p}"),
            None => ip.to_owned(),
        }
    };
    let proto = f["app_proto"]
        .as_str()
        .or(f["proto"].as_str())
        .unwrap_or("");
    format!(
        "{} → {} {proto}",
        end("src_ip", "src_port"),
        end("dest_ip", "dest_port")
    )
}

fn rules(rules: &[String]) -> String {
    rules
        .iter()
        .map(|r| format!("<span class=\"rule\">{}</span>", esc(r)))
        .collect()
}

fn file_link(sha256: &str, label: &str) -> String {
    format!("<a href=\"/file/{}\">{}</a>", esc(sha256), esc(label))
}

/// Vertical bars, one per count, drawn here (no script, nothing fetched).
fn bars(counts: &[Count]) -> String {
    let max = counts.iter().map(|c| c.count).max().unwrap_or(0).max(1);
    let (w, h) = (12, 80);
    let mut svg = format!(
        "<svg width=\"{}\" height=\"{}\" role=\"img\" aria-label=\"files per hour\">",
        counts.len() * w + 2,
        h + 2
    );
    for (i, c) in counts.iter().enumerate() {
        let bar = (c.count * h as i64 / max).max(1);
        let _ = write!(
            svg,
            "<rect class=\"bar\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{bar}\"><title>{}: {}</title></rect>",
            i * w + 1,
            h as i64 - bar + 1,
            w - 2,
            esc(&c.key),
            c.count
        );
    }
    svg.push_str("</svg>");
    svg
}

pub fn overview(o: &Overview, recent: &SearchPage) -> String {
    let mut body = format!(
        "<section><h2>Overview</h2><p>{} files, {} results.</p>",
        o.files, o.results
    );
    if !o.per_hour.is_empty() {
        let first = &o.per_hour[0].key;
        let last = &o.per_hour[o.per_hour.len() - 1].key;
        let _ = write!(
            body,
            "<h3>Files per hour</h3>{}<p class=\"small\">{} to {} (UTC)</p>",
            bars(&o.per_hour),
            esc(first),
            esc(last)
        );
    }
    body.push_str("<h3>Top rules</h3><table><tr><th>rule</th><th>files</th></tr>");
    for c in &o.top_rules {
        let _ = write!(
            body,
            "<tr><td><a href=\"/?q={}\">{}</a></td><td>{}</td></tr>",
            query_value(&c.key),
            esc(&c.key),
            c.count
        );
    }
    body.push_str("</table><h3>Outcomes per worker</h3><table><tr><th>worker</th><th>outcome</th><th>results</th></tr>");
    for w in &o.outcomes {
        let class = if w.outcome == "ok" {
            ""
        } else {
            " class=\"err\""
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td{class}>{}</td><td>{}</td></tr>",
            esc(&w.worker),
            esc(&w.outcome),
            w.count
        );
    }
    body.push_str("</table>");
    if !o.problems.is_empty() {
        body.push_str("<h3>Latest errors and timeouts</h3><table><tr><th>time</th><th>worker</th><th>outcome</th><th>file</th><th>message</th></tr>");
        for p in &o.problems {
            let name = p.filename.as_deref().unwrap_or(&p.sha256);
            let _ = write!(
                body,
                "<tr><td>{}</td><td>{}</td><td class=\"err\">{}</td><td>{}</td><td>{}</td></tr>",
                when(&p.time),
                esc(&p.worker),
                esc(&p.outcome),
                file_link(&p.sha256, name),
                esc(p.message.as_deref().unwrap_or(""))
            );
        }
        body.push_str("</table>");
    }
    body.push_str("</section><section><h2>Latest files</h2>");
    body.push_str(&hits_table(recent));
    body.push_str("</section>");
    layout("overview", "", &body)
}

fn hits_table(page: &SearchPage) -> String {
    let mut body = String::from(
        "<table id=\"hits\"><tr><th>time</th><th>name</th><th>size</th><th>mime</th><th>matched</th><th>sensor</th><th>flow</th></tr>",
    );
    for h in &page.hits {
        let name = h.filename.as_deref().unwrap_or("(no name)");
        let nested = if h.depth > 0 {
            " <span class=\"small\">(from an archive)</span>"
        } else {
            ""
        };
        let problems = if h.problems > 0 {
            format!(" <span class=\"err\">{} error(s)</span>", h.problems)
        } else {
            String::new()
        };
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}{nested}{problems}<div class=\"mono small\">{}</div></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            when(&h.time),
            file_link(&h.sha256, name),
            esc(&h.sha256),
            h.size,
            esc(h.mime.as_deref().unwrap_or("")),
            rules(&h.rules),
            esc(&h.sensor),
            esc(&flow_text(h.flow.as_ref()))
        );
    }
    body.push_str("</table>");
    body
}

pub fn search(page: &SearchPage) -> String {
    let pages = page.total.div_ceil(PAGE).max(1);
    let mut body = format!(
        "<h2>{} file(s) for “{}”</h2>{}",
        page.total,
        esc(&page.query),
        hits_table(page)
    );
    let link = |n: usize, label: &str| {
        format!(
            "<a href=\"/?q={}&amp;page={n}\">{label}</a>",
            query_value(&page.query)
        )
    };
    let _ = write!(body, "<p>page {} of {pages} ", page.page);
    if page.page > 1 {
        body.push_str(&link(page.page - 1, "newer"));
        body.push(' ');
    }
    if page.page < pages {
        body.push_str(&link(page.page + 1, "older"));
    }
    body.push_str("</p>");
    layout(&format!("search {}", page.query), &page.query, &body)
}

fn sighting(s: &Sighting) -> String {
    let mut body = format!(
        "<section><h3>{}</h3><table>\
         <tr><th>payload</th><td class=\"mono\">{}</td></tr>\
         <tr><th>sensor</th><td>{} ({})</td></tr>\
         <tr><th>path</th><td>{}</td></tr>\
         <tr><th>flow</th><td>{}</td></tr>",
        esc(s.filename.as_deref().unwrap_or("(no name)")),
        esc(&s.payload_id),
        esc(&s.sensor),
        esc(&s.source_kind),
        esc(s.path.as_deref().unwrap_or("")),
        esc(&flow_text(s.flow.as_ref())),
    );
    if let Some(Value::Object(fields)) = &s.fields {
        for (k, v) in fields {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_owned);
            let _ = write!(body, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
        }
    }
    body.push_str("</table>");
    for f in &s.findings {
        let replay = match &f.replay_id {
            Some(id) => {
                let new = f
                    .new_matches
                    .as_ref()
                    .map(|n| format!(", new matches: {}", esc(&n.to_string())))
                    .unwrap_or_default();
                format!(" <span class=\"small\">replay {}{new}</span>", esc(id))
            }
            None => String::new(),
        };
        let class = if f.outcome == "ok" {
            ""
        } else {
            " class=\"err\""
        };
        let matched: Vec<String> = f.data["matches"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| m["rule"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let _ = write!(
            body,
            "<h4 class=\"finding\" data-worker=\"{}\">{} <span{class}>{}</span> {}{replay}</h4>\
             <p class=\"small\">{} · ruleset {} · node {} · {} ms · {}</p>",
            esc(&f.worker),
            esc(&f.worker),
            esc(&f.outcome),
            rules(&matched),
            esc(&f.worker_version),
            esc(f.ruleset.as_deref().unwrap_or("-")),
            esc(&f.node),
            f.duration_ms,
            when(&f.started_at),
        );
        if let Some(m) = &f.message {
            let _ = write!(body, "<p class=\"err\">{}</p>", esc(m));
        }
        let data = serde_json::to_string_pretty(&f.data).unwrap_or_default();
        let _ = write!(body, "<pre>{}</pre>", esc(&data));
    }
    body.push_str("</section>");
    body
}

pub fn file(v: &FileView) -> String {
    let mut body = format!(
        "<h2 class=\"mono\">{}</h2><p>{} bytes, seen {} time(s). <a href=\"/api/file/{}\">JSON</a></p>",
        esc(&v.sha256),
        v.size,
        v.sightings.len(),
        esc(&v.sha256)
    );
    if !v.lineage.is_empty() {
        body.push_str("<section><h3>Lineage</h3><ul class=\"tree\" id=\"lineage\">");
        for m in &v.lineage {
            let indent = "&nbsp;&nbsp;&nbsp;&nbsp;".repeat(usize::try_from(m.depth).unwrap_or(0));
            let this = if m.sha256 == v.sha256 { " ◀" } else { "" };
            let _ = write!(
                body,
                "<li>{indent}{} <span class=\"small\">{} bytes</span>{this}</li>",
                file_link(&m.sha256, m.filename.as_deref().unwrap_or("(no name)")),
                m.size
            );
        }
        body.push_str("</ul></section>");
    }
    for s in &v.sightings {
        body.push_str(&sighting(s));
    }
    layout(&v.sha256, "", &body)
}

pub fn not_found(what: &str) -> String {
    layout(
        "not found",
        "",
        &format!("<h2>Nothing stored for {}</h2>", esc(what)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markup_in_values_is_text() {
        assert_eq!(
            esc("<img src=x onerror=alert(1)>\"'&"),
            "&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;"
        );
        assert_eq!(query_value("a b&c/é"), "a%20b%26c%2F%C3%A9");
    }
}
