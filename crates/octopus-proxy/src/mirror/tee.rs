//! A body splitter: the original stream flows on untouched while each data chunk is
//! also offered to a bounded channel feeding the shadow request. If the shadow falls
//! behind, its copy is cut off (and ends with an error, so the shadow upstream never
//! sees a silently truncated body); the original is never held back.

use crate::body::{Body, BoxError};
use bytes::Bytes;
use http_body::Frame;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Chunks the shadow may lag behind the original before it is cut off.
const SHADOW_BUFFER: usize = 16;

pub(super) fn tee(body: Body) -> (Body, Body) {
    let (tx, rx) = mpsc::channel(SHADOW_BUFFER);
    let cut = Arc::new(AtomicBool::new(false));
    let primary = Body::new(Tee {
        inner: body,
        tx: Some(tx),
        cut: cut.clone(),
    });
    (primary, Body::new(Shadow { rx, cut }))
}

struct Tee {
    inner: Body,
    tx: Option<mpsc::Sender<Bytes>>,
    cut: Arc<AtomicBool>,
}

impl Tee {
    fn cut_off(&mut self) {
        self.cut.store(true, Ordering::Release);
        self.tx = None;
    }
}

impl http_body::Body for Tee {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(tx)) = (frame.data_ref(), self.tx.as_ref()) {
                    if tx.try_send(data.clone()).is_err() {
                        self.cut_off();
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => self.cut_off(),
            // End of the original: dropping the sender ends the copy cleanly.
            Poll::Ready(None) => self.tx = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        // Dropped before its end (client went away): the copy must not look complete.
        if self.tx.is_some() {
            self.cut.store(true, Ordering::Release);
        }
    }
}

struct Shadow {
    rx: mpsc::Receiver<Bytes>,
    cut: Arc<AtomicBool>,
}

impl http_body::Body for Shadow {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(chunk)) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
            Poll::Ready(None) if self.cut.load(Ordering::Acquire) => Poll::Ready(Some(Err(
                "mirror copy cut off: the shadow fell behind the original".into(),
            ))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn chunks(n: usize) -> Body {
        let (tx, rx) = mpsc::channel::<Bytes>(n.max(1));
        for i in 0..n {
            tx.try_send(Bytes::from(vec![i as u8; 10])).unwrap();
        }
        drop(tx);
        Body::new(Shadow {
            rx,
            cut: Arc::new(AtomicBool::new(false)),
        })
    }

    #[tokio::test]
    async fn copy_matches_the_original() {
        let (a, b) = tee(chunks(5));
        let original = a.collect().await.unwrap().to_bytes();
        let copy = b.collect().await.unwrap().to_bytes();
        assert_eq!(original.len(), 50);
        assert_eq!(original, copy);
    }

    #[tokio::test]
    async fn a_lagging_copy_is_cut_off_with_an_error_and_the_original_flows() {
        let (a, b) = tee(chunks(SHADOW_BUFFER + 5));
        // Read the whole original while nobody reads the copy.
        assert_eq!(
            a.collect().await.unwrap().to_bytes().len(),
            (SHADOW_BUFFER + 5) * 10
        );
        assert!(
            b.collect().await.is_err(),
            "a truncated copy must fail, not look complete"
        );
    }
}
