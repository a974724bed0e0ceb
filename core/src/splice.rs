//! Copying bytes both ways between two connections, half-close included.

use crate::error::{Error, Result};
use tokio::io::{AsyncRead, AsyncWrite};

/// Size of each direction's copy buffer.
const BUF: usize = 64 * 1024;

/// Copies `a`→`b` and `b`→`a` until both directions finish; a shutdown on one side
/// is passed to the other as a write shutdown.
pub async fn splice<A, B>(a: &mut A, b: &mut B) -> Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    tokio::io::copy_bidirectional_with_sizes(a, b, BUF, BUF)
        .await
        .map_err(|e| Error::io("relay", e))
}
