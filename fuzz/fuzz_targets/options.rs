//! Feeds arbitrary JSON objects to the option parser behind every front door
//! (Python, Node, the CLI, the config file): it must refuse, never panic.
#![no_main]

use burrow_core::agent::options::{parse, Scope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(data) {
        for scope in [Scope::Forward, Scope::Session, Scope::Endpoint] {
            let options = map.clone().into_iter().map(|(k, v)| (k, v.into()));
            let _ = parse(options, scope, None);
        }
    }
});
