//! Feeds arbitrary bytes to the decoders of everything that crosses the tunnel.
#![no_main]

use burrow_core::wire::{AgentMsg, EdgeMsg, StreamHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<AgentMsg>(data);
    let _ = serde_json::from_slice::<EdgeMsg>(data);
    let _ = serde_json::from_slice::<StreamHeader>(data);
});
