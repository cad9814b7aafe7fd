//! A strict reader of the Prometheus text format for the recorder's output
//! and the served page: every sample line's grammar, unique label names per
//! sample, unique series, and one `TYPE` per family before its samples.
#![allow(dead_code)]

/// One sample of [`strict`]'s parse: its series name, family, labels (as
/// written, in order, values unescaped) and value (as written).
#[derive(Debug)]
pub struct Line {
    pub name: String,
    pub family: String,
    pub labels: Vec<(String, String)>,
    pub value: String,
}

impl Line {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

fn metric_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':' || (!first && c.is_ascii_digit())
}

fn label_char(c: char, first: bool) -> bool {
    c.is_ascii_alphabetic() || c == '_' || (!first && c.is_ascii_digit())
}

/// `s` as a name whose characters satisfy `ok`, or `None`.
fn name_of(s: &str, ok: fn(char, bool) -> bool) -> Option<&str> {
    let mut chars = s.chars();
    (chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))).then_some(s)
}

/// A Prometheus number: Go's float syntax, `+Inf`, `-Inf` or `NaN`.
fn is_number(s: &str) -> bool {
    matches!(s, "+Inf" | "-Inf" | "Inf" | "NaN")
        || (s.chars().all(|c| c.is_ascii_digit() || "+-.eE".contains(c))
            && s.chars().any(|c| c.is_ascii_digit())
            && s.parse::<f64>().is_ok())
}

/// A sample line, `name{label="value",...} number [timestamp]`, its family
/// left for the caller to find.
fn sample_line(line: &str) -> Result<Line, String> {
    let end = line.find(['{', ' ']).ok_or("no value")?;
    let name = name_of(&line[..end], metric_char).ok_or("bad metric name")?.to_string();
    let mut rest = &line[end..];
    let mut labels = Vec::new();
    if let Some(mut l) = rest.strip_prefix('{') {
        loop {
            if let Some(r) = l.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = l.find('=').ok_or("label without =")?;
            let label = name_of(&l[..eq], label_char).ok_or("bad label name")?.to_string();
            l = l[eq + 1..].strip_prefix('"').ok_or("unquoted label value")?;
            let mut value = String::new();
            let mut chars = l.char_indices();
            let close = loop {
                match chars.next().ok_or("unterminated label value")? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or("unterminated escape")?.1 {
                        'n' => value.push('\n'),
                        c @ ('\\' | '"') => value.push(c),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    (_, '\n') => return Err("line feed in a label value".into()),
                    (_, c) => value.push(c),
                }
            };
            labels.push((label, value));
            l = &l[close + 1..];
            if let Some(r) = l.strip_prefix(',') {
                l = r;
            } else if !l.starts_with('}') {
                return Err("labels not separated by ,".into());
            }
        }
    }
    let mut fields = rest.strip_prefix(' ').ok_or("no space before the value")?.split(' ');
    let value = fields.next().filter(|v| is_number(v)).ok_or("bad value")?.to_string();
    if let Some(ts) = fields.next() {
        ts.strip_prefix('-').unwrap_or(ts).parse::<u64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("trailing fields".into());
    }
    Ok(Line { name, family: String::new(), labels, value })
}

/// Every sample of `text`, or a panic listing all that a strict reader of
/// the text format (0.0.4) would reject: a line out of the grammar, a
/// family with two TYPEs or HELPs or one after its samples, a sample with
/// no TYPE, families interleaved, a label name repeated in a sample or
/// reserved (`__`), a series written twice (labels compared as a set), a
/// histogram's `le` missing or out of place, a family named like another
/// histogram family's `_bucket`, `_sum` or `_count` series.
pub fn strict(text: &str) -> Vec<Line> {
    use std::collections::{HashMap, HashSet};
    let mut problems = Vec::new();
    if !text.is_empty() && !text.ends_with('\n') {
        problems.push("no final line feed".to_string());
    }
    let mut types: HashMap<String, String> = HashMap::new();
    let mut helps = HashSet::new();
    let mut started = HashSet::new();
    let mut current: Option<String> = None;
    let mut series = HashSet::new();
    let mut lines = Vec::new();
    for (n, line) in text.lines().enumerate().map(|(i, l)| (i + 1, l)) {
        let mut bad = |why: &str| problems.push(format!("line {n}: {why}: {line:?}"));
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.splitn(4, ' ');
            let (_, what, name, rest) = (words.next(), words.next(), words.next(), words.next());
            if !matches!(what, Some("HELP" | "TYPE")) {
                continue;
            }
            let Some(name) = name.and_then(|n| name_of(n, metric_char)) else {
                bad("bad name");
                continue;
            };
            if started.contains(name) {
                bad("after the family's samples");
            }
            if what == Some("HELP") {
                if !helps.insert(name.to_string()) {
                    bad("second HELP");
                }
                let rest = rest.unwrap_or_default();
                if rest.replace("\\\\", "").replace("\\n", "").contains('\\') {
                    bad("bad escape in HELP");
                }
            } else {
                let kinds = ["counter", "gauge", "histogram", "summary", "untyped"];
                if !kinds.contains(&rest.unwrap_or_default()) {
                    bad("bad type");
                }
                if types.insert(name.to_string(), rest.unwrap_or_default().to_string()).is_some() {
                    bad("second TYPE");
                }
            }
            continue;
        }
        if line.is_empty() {
            continue;
        }
        let Line { name, labels, value, .. } = match sample_line(line) {
            Ok(s) => s,
            Err(why) => {
                bad(&why);
                continue;
            }
        };
        let histogram = ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let family = name.strip_suffix(suffix)?;
            (types.get(family).map(String::as_str) == Some("histogram")).then_some(family)
        });
        let family = match (types.get(&name).map(String::as_str), histogram) {
            (Some("histogram"), _) => {
                bad("a histogram sample without _bucket, _sum or _count");
                name.clone()
            }
            (Some(_), Some(_)) => {
                bad("a family named like a histogram's series");
                name.clone()
            }
            (Some(_), None) => name.clone(),
            (None, Some(h)) => h.to_string(),
            (None, None) => {
                bad("no TYPE");
                name.clone()
            }
        };
        if current.as_ref() != Some(&family) && !started.insert(family.clone()) {
            bad("family interleaved with another");
        }
        current = Some(family.clone());
        let names: HashSet<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        if names.len() != labels.len() {
            bad("label name repeated");
        }
        if names.iter().any(|k| k.starts_with("__")) {
            bad("reserved label name");
        }
        let is_bucket = histogram.is_some() && name.ends_with("_bucket");
        if histogram.is_some() && names.contains("le") != is_bucket {
            bad("le missing from a bucket or on a non-bucket");
        }
        let mut set = labels.clone();
        set.sort();
        if !series.insert((name.clone(), set)) {
            bad("series written twice");
        }
        lines.push(Line { name, family, labels, value });
    }
    for (family, kind) in &types {
        for suffix in ["_bucket", "_sum", "_count"] {
            if kind == "histogram" && types.contains_key(&format!("{family}{suffix}")) {
                problems.push(format!("family {family}{suffix} is also a series of {family}"));
            }
        }
    }
    assert!(problems.is_empty(), "invalid exposition:\n{}\n---\n{text}", problems.join("\n"));
    lines
}
