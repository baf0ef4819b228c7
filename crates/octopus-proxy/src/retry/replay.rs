//! Keeping a request body for replay: bodies up to the limit are read into memory
//! before the first try; a larger one is passed on as a stream (what was read so far,
//! then the rest) and its request gets a single try.

use crate::body::{Body, BoxError};
use crate::error::ProxyError;
use bytes::{Bytes, BytesMut};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

pub(super) enum Replay {
    Buffered(Bytes),
    Stream(Body),
}

pub(super) async fn buffer(mut body: Body, limit: usize) -> Result<Replay, ProxyError> {
    if body.is_end_stream() {
        return Ok(Replay::Buffered(Bytes::new()));
    }
    if body.size_hint().lower() > limit as u64 {
        return Ok(Replay::Stream(body));
    }
    let mut buf = BytesMut::new();
    let mut read: VecDeque<Frame<Bytes>> = VecDeque::new();
    while let Some(frame) = body.frame().await {
        // The body is the client's: its failure (abort, bad framing, too large,
        // stalled) is reported as such, cause kept, and never retried.
        let frame = frame.map_err(ProxyError::client_body)?;
        match frame.into_data() {
            Ok(data) => {
                buf.extend_from_slice(&data);
                read.push_back(Frame::data(data));
                if buf.len() > limit {
                    return Ok(Replay::Stream(Body::new(Prefixed { read, rest: body })));
                }
            }
            // Trailers cannot be replayed: stream, single try.
            Err(trailers) => {
                read.push_back(trailers);
                return Ok(Replay::Stream(Body::new(Prefixed { read, rest: body })));
            }
        }
    }
    Ok(Replay::Buffered(buf.freeze()))
}

/// Frames already read, then the rest of the original body.
struct Prefixed {
    read: VecDeque<Frame<Bytes>>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(f) = self.read.pop_front() {
            return Poll::Ready(Some(Ok(f)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body;

    #[tokio::test]
    async fn small_bodies_are_kept_large_ones_streamed_whole() {
        match buffer(body::full(vec![1u8; 1000]), 4096).await.unwrap() {
            Replay::Buffered(b) => assert_eq!(b.len(), 1000),
            Replay::Stream(_) => panic!("1000 bytes fit in 4096"),
        }
        match buffer(body::full(vec![2u8; 10_000]), 4096).await.unwrap() {
            Replay::Stream(b) => {
                assert_eq!(b.collect().await.unwrap().to_bytes(), vec![2u8; 10_000])
            }
            Replay::Buffered(_) => panic!("10000 bytes exceed 4096"),
        }
    }
}
