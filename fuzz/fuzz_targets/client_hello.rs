//! Feeds arbitrary bytes to the edge's ClientHello reader.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Duration;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut input = data;
        let _ = burrow_core::tls::read_client_hello(&mut input, Duration::from_secs(1), 16 * 1024).await;
    });
});
