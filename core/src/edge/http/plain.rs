//! The plain HTTP listener (`http_addr`): requests routed by `Host` to http endpoints
//! that serve the `http` scheme; https-only endpoints redirect there.

use super::{serve, ConnCtx};
use crate::agent::http::Scheme;
use crate::edge::Shared;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Serves the plain HTTP listener until the edge stops.
pub(crate) async fn accept_http(shared: Arc<Shared>, listener: TcpListener) {
    let stop = shared.stop.clone();
    crate::edge::public::accept_loop(shared, listener, stop, |shared, tcp, peer| async move {
        let ctx = ConnCtx {
            peer,
            server_addr: tcp.local_addr().ok(),
            sni: None,
            scheme: Scheme::Http,
            client_cert_subject: None,
        };
        if let Err(e) = serve(shared, tcp, ctx, None).await {
            tracing::debug!(reason = %e, "http connection ended");
        }
    })
    .await
}
