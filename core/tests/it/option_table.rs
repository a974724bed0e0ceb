//! The shared option table (tests-shared/option_cases.json): the same cases run by the
//! Python and Node suites, here against the core parser itself.

use crate::common::Pki;
use anyhow::{anyhow, bail, Context, Result};
use burrow_core::agent::options::{self, OptionValue, Scope};
use serde_json::Value;
use std::collections::HashMap;

/// Certificates made once for the whole table, by name.
struct Fixtures {
    pki: Pki,
    leaves: HashMap<String, crate::common::Leaf>,
}

impl Fixtures {
    fn leaf(&mut self, name: &str) -> crate::common::Leaf {
        let pki = &self.pki;
        self.leaves
            .entry(name.to_owned())
            .or_insert_with(|| pki.leaf(&[name]))
            .clone()
    }

    /// A table value as the option value a binding would hand over.
    fn value(&mut self, v: &Value) -> OptionValue {
        let Value::String(s) = v else {
            return match v {
                Value::Array(items) => {
                    OptionValue::List(items.iter().map(|i| self.value(i)).collect())
                }
                other => other.clone().into(),
            };
        };
        let (kind, name) = s.split_once(':').unwrap_or((s.as_str(), ""));
        match kind {
            "$crt" => OptionValue::Bytes(self.leaf(name).crt.into_bytes()),
            "$key" => OptionValue::Bytes(self.leaf(name).key.into_bytes()),
            "$crt-text" => OptionValue::Str(self.leaf(name).crt),
            "$key-text" => OptionValue::Str(self.leaf(name).key),
            "$ca" => OptionValue::Bytes(self.pki.ca_pem.clone().into_bytes()),
            "$not-utf8" => OptionValue::Bytes(vec![0xff, 0xfe, 0x2d, 0x2d]),
            _ => OptionValue::Str(s.clone()),
        }
    }
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |v, key| v.get(key))
}

#[test]
fn every_case_of_the_shared_option_table() -> Result<()> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests-shared/option_cases.json"
    );
    let table: Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let cases = table["cases"].as_array().context("cases")?;
    let mut fixtures = Fixtures {
        pki: Pki::new("option table CA"),
        leaves: HashMap::new(),
    };
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().unwrap_or("?");
        let scope = match case["scope"].as_str().unwrap_or("forward") {
            "forward" => Scope::Forward,
            "session" => Scope::Session,
            "endpoint" => Scope::Endpoint,
            other => bail!("{name}: unknown scope {other}"),
        };
        let given: Vec<(String, OptionValue)> = case["options"]
            .as_object()
            .ok_or_else(|| anyhow!("{name}: options"))?
            .iter()
            .map(|(k, v)| (k.clone(), fixtures.value(v)))
            .collect();
        let outcome = options::parse(given, scope, None);
        match (outcome, case.get("error")) {
            (Ok(parsed), None) => {
                let described = parsed.describe();
                for (path, want) in case["expect"].as_object().into_iter().flatten() {
                    let got = lookup(&described, path).unwrap_or(&Value::Null);
                    if got != want {
                        failures.push(format!("{name}: {path} = {got}, expected {want}"));
                    }
                }
            }
            (Ok(parsed), Some(code)) => failures.push(format!(
                "{name}: expected {code}, parsed {}",
                parsed.describe()
            )),
            (Err(e), Some(code)) => {
                let part = case["message"].as_str().unwrap_or("");
                if e.code().as_str() != code || !e.message().contains(part) {
                    failures.push(format!("{name}: expected {code} with {part:?}, got {e}"));
                }
            }
            (Err(e), None) => failures.push(format!("{name}: unexpected error {e}")),
        }
    }
    if !failures.is_empty() {
        bail!(
            "{} of {} cases failed:\n{}",
            failures.len(),
            cases.len(),
            failures.join("\n")
        );
    }
    Ok(())
}
