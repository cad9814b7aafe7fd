//! Prometheus text checked by a strict parser (a grammar of the exposition
//! format), with label values unescaped for comparison.
#![allow(dead_code)]

pub mod strict;

use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{PrometheusValue, Sample};

/// One parsed sample: family, labels (unescaped), value.
#[derive(Debug)]
pub struct Parsed {
    pub family: String,
    pub labels: Vec<(String, String)>,
    pub value: PrometheusValue,
}

impl Parsed {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A counter's or gauge's value.
    pub fn number(&self) -> f64 {
        match &self.value {
            PrometheusValue::Counter(c) => c.value.as_f64(),
            PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
            other => panic!("not a number: {other:?}"),
        }
    }
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(c) => out.push(c),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every sample of `text`, or a panic naming what is invalid.
pub fn parse(text: &str) -> Vec<Parsed> {
    let exposition =
        parse_prometheus(text).unwrap_or_else(|e| panic!("invalid exposition: {e:?}\n{text}"));
    let mut out = Vec::new();
    for (family, f) in &exposition.families {
        let names: Vec<String> = f.get_label_names().to_vec();
        for s in f.iter_samples() {
            let s: &Sample<PrometheusValue> = s;
            let set = s.get_labelset().expect("bound sample");
            let labels = names
                .iter()
                .map(|n| (n.clone(), unescape(set.get_label_value(n).unwrap_or_default())))
                .collect();
            out.push(Parsed { family: family.clone(), labels, value: s.value.clone() });
        }
    }
    out
}
