//! Feeds arbitrary text to the traffic-policy, expression and config-file parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = burrow_core::policy::TrafficPolicy::parse(text);
        let _ = burrow_core::policy::Expr::parse(text);
        let _ = burrow_core::config::AgentConfig::from_yaml(text, std::path::Path::new("/nonexistent"));
    }
});
