//! docs/report.md lists every field of the reports: the merged report of `migrate --json`,
//! each host's half (`source --json`, `dest --json`) and the bench's `report.json`. A field
//! added to a report type without a line in the doc fails here, naming it.
#![cfg(feature = "cli")]

use hybridmig::driver::inject::{Injected, Side};
use hybridmig::migration::bench::{BenchResults, BenchRun, BenchSpec, MachineInfo};
use hybridmig::migration::{DestReport, MigrationReport, SourceReport};
use serde_json::Value;
use std::collections::BTreeSet;

/// Every object key in `value`, at any depth, each with the path it was found at.
fn keys(value: &Value, path: &str, out: &mut BTreeSet<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                out.insert((key.clone(), path.to_string()));
                keys(inner, &format!("{path}.{key}"), out);
            }
        }
        Value::Array(items) => items.iter().for_each(|inner| keys(inner, path, out)),
        _ => {}
    }
}

/// One injection, so the `injected` lists have an element whose keys are seen.
fn injected() -> Vec<Injected> {
    vec![Injected { side: Side::Source, what: "disconnect@start+40".into(), at_ms: 40.0 }]
}

fn documented_keys() -> Vec<(&'static str, Value)> {
    let merged = MigrationReport { injected: injected(), ..MigrationReport::default() };
    let source = SourceReport { injected: injected(), ..SourceReport::default() };
    let dest = DestReport { injected: injected(), ..DestReport::default() };
    let bench = BenchResults {
        command: "hybridmig bench".into(),
        machine: MachineInfo::default(),
        spec: BenchSpec::default(),
        runs: vec![BenchRun {
            profile: "loopback".into(),
            workload: "hotcold".into(),
            mem_bytes: 0,
            mode: "hybrid".into(),
            rep: 0,
            verified: false,
            error: None,
            report: Some(merged.clone()),
        }],
    };
    let json = |v: Result<Value, serde_json::Error>| v.expect("a report serializes");
    vec![
        ("migrate --json", json(serde_json::to_value(&merged))),
        ("source --json", json(serde_json::to_value(&source))),
        ("dest --json", json(serde_json::to_value(&dest))),
        ("report.json", json(serde_json::to_value(&bench))),
    ]
}

#[test]
fn every_report_field_is_in_docs_report_md() {
    let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/report.md");
    let doc = std::fs::read_to_string(doc_path).expect("docs/report.md");
    let mut missing = Vec::new();
    for (report, value) in documented_keys() {
        let mut found = BTreeSet::new();
        keys(&value, report, &mut found);
        assert!(found.len() > 10, "{report}: only {} keys", found.len());
        for (key, path) in found {
            if !doc.contains(&format!("`{key}`")) {
                missing.push(format!("{path}.{key}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "docs/report.md does not list {} fields: {missing:#?}",
        missing.len()
    );
}
