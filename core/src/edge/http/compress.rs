//! Response compression (ngrok's `compression`, and a policy's `compress-response`):
//! gzip or brotli, streamed; which one is `policy::choose_encoding`'s call.

use super::{Body, BoxError};
use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder};
use futures::TryStreamExt;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyDataStream, BodyExt, StreamBody};
use tokio_util::io::{ReaderStream, StreamReader};

/// Responses smaller than this are sent as they are.
const MIN_LENGTH: u64 = 256;

/// True for a response worth compressing: a body of text-like content, not encoded yet.
fn compressible(method: &Method, res: &Response<Body>) -> bool {
    let status = res.status();
    if method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational()
        || res.headers().contains_key(header::CONTENT_ENCODING)
    {
        return false;
    }
    let small = res
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|n| n < MIN_LENGTH);
    let kind = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let textual = kind.starts_with("text/") && !kind.starts_with("text/event-stream")
        || [
            "json",
            "javascript",
            "xml",
            "svg",
            "wasm",
            "x-www-form-urlencoded",
        ]
        .iter()
        .any(|t| kind.contains(t));
    textual && !small
}

/// Compresses `res` with `encoding` when it is worth it.
pub(crate) fn apply(
    method: &Method,
    encoding: &'static str,
    res: Response<Body>,
) -> Response<Body> {
    if !compressible(method, &res) {
        return res;
    }
    let (mut parts, body) = res.into_parts();
    let reader = StreamReader::new(BodyDataStream::new(body).map_err(std::io::Error::other));
    let body: Body = match encoding {
        "br" => stream_body(ReaderStream::new(BrotliEncoder::new(reader))),
        _ => stream_body(ReaderStream::new(GzipEncoder::new(reader))),
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.remove(header::ACCEPT_RANGES);
    parts
        .headers
        .insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding));
    parts
        .headers
        .append(header::VARY, HeaderValue::from_static("accept-encoding"));
    Response::from_parts(parts, body)
}

fn stream_body<S>(stream: S) -> Body
where
    S: futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync + 'static,
{
    StreamBody::new(
        stream
            .map_ok(Frame::data)
            .map_err(|e| Box::new(e) as BoxError),
    )
    .boxed()
}
