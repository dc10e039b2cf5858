//! Connections that misbehave on purpose, written by hand over TCP: an idle
//! connection that sends nothing, and a slow-body request (valid headers, a
//! `Content-Length`, then a byte now and then). Each is held until released and
//! reports how it ended: still open, answered by the server (with the status it
//! read), closed by the server without an answer, reset, or never connected.
//!
//! These are what issue 13's hostile-client probes hold against a proxy; the
//! valid slow clients of a soak (a body that does finish) are in `client`.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// How a held connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// Connecting failed or timed out.
    Refused,
    /// Still open when released.
    Open,
    /// The server sent an answer with this status, then (or later) closed.
    Answered(u16),
    /// The server closed the connection without a word.
    Closed,
    /// The connection was reset, or a write failed.
    Reset,
}

/// One held connection's fate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub ending: Ending,
    /// From connecting to the ending (to the release for [`Ending::Open`]).
    pub lasted: Duration,
}

/// The status of an HTTP/1.x answer's first line (`HTTP/1.1 408 ...`).
pub fn status_of(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_whitespace();
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    words.next()?.parse().ok()
}

/// Connects within `timeout`, or `None`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Option<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => Some(tcp),
        _ => None,
    }
}

/// Reads what the server sends until it closes or resets the connection, and
/// tells which ending that is; only the status line is kept.
async fn read_ending(mut read: impl AsyncRead + Unpin) -> Ending {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let reset = match read.read(&mut buf).await {
            Ok(0) => false,
            Ok(n) => {
                if answer.len() < 256 {
                    answer.extend_from_slice(&buf[..n.min(256 - answer.len())]);
                }
                continue;
            }
            Err(_) => true,
        };
        return match (status_of(&answer), reset) {
            (Some(status), _) => Ending::Answered(status),
            (None, true) => Ending::Reset,
            (None, false) => Ending::Closed,
        };
    }
}

/// Holds an open connection that sends nothing until `release` turns true or
/// the server closes it.
pub async fn hold_idle(mut tcp: TcpStream, mut release: watch::Receiver<bool>) -> Held {
    let connected = Instant::now();
    let ending = tokio::select! {
        ending = read_ending(&mut tcp) => ending,
        _ = release.wait_for(|&r| r) => Ending::Open,
    };
    Held {
        ending,
        lasted: connected.elapsed(),
    }
}

/// Holds a request whose body never finishes: `head` (the request line and
/// headers, `Content-Length` included) at once, then one byte of `body` every
/// `every` (all but its last byte, so that it never completes), until `release`
/// turns true or the server ends the connection.
pub async fn hold_slow_body(
    mut tcp: TcpStream,
    head: &[u8],
    body: &[u8],
    every: Duration,
    mut release: watch::Receiver<bool>,
) -> Held {
    let connected = Instant::now();
    let held = |ending| Held {
        ending,
        lasted: connected.elapsed(),
    };
    if tcp.write_all(head).await.is_err() {
        return held(Ending::Reset);
    }
    let (read, mut write) = tcp.split();
    let mut next = 0;
    let mut tick = tokio::time::interval_at(Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reading = read_ending(read);
    tokio::pin!(reading);
    loop {
        // The select only decides; writing happens after it, so that no guard
        // of the release channel is held across the write.
        let send = tokio::select! {
            ending = &mut reading => return held(ending),
            _ = release.wait_for(|&r| r) => return held(Ending::Open),
            _ = tick.tick() => next + 1 < body.len(),
        };
        // The last byte is never sent: the body must not complete.
        if send {
            if write.write_all(&body[next..next + 1]).await.is_err() {
                return held(Ending::Reset);
            }
            next += 1;
        }
    }
}

/// The request line and headers of a POST to `path` on `host`, with `headers`
/// (authorization and content type) and `Content-Length: content_length`.
pub fn request_head(
    path: &str,
    host: &str,
    headers: &http::HeaderMap,
    content_length: usize,
) -> Vec<u8> {
    let mut head = format!("POST {path} HTTP/1.1\r\nhost: {host}\r\n").into_bytes();
    for (name, value) in headers {
        if name == http::header::HOST || name == http::header::CONTENT_LENGTH {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(format!("content-length: {content_length}\r\n\r\n").as_bytes());
    head
}

/// How a group of held connections ended (a report's JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeldCounts {
    pub attempted: u64,
    /// Never connected (refused, or no answer to the connect within the timeout).
    pub refused: u64,
    /// Still open when released: the server kept them.
    pub open_at_release: u64,
    /// Answered by the server, by status.
    pub answered: BTreeMap<u16, u64>,
    /// Closed by the server without an answer.
    pub closed: u64,
    pub reset: u64,
}

impl HeldCounts {
    pub fn add(&mut self, held: &Held) {
        self.attempted += 1;
        match held.ending {
            Ending::Refused => self.refused += 1,
            Ending::Open => self.open_at_release += 1,
            Ending::Answered(status) => *self.answered.entry(status).or_insert(0) += 1,
            Ending::Closed => self.closed += 1,
            Ending::Reset => self.reset += 1,
        }
    }

    /// Connections the server ended before the release (answered, closed or reset).
    pub fn ended_by_server(&self) -> u64 {
        self.answered.values().sum::<u64>() + self.closed + self.reset
    }

    /// `1000 connections: 998 open at release, 2 refused, ...` for a report line.
    pub fn describe(&self) -> String {
        let mut parts = vec![
            format!("{} open at release", self.open_at_release),
            format!("{} refused", self.refused),
        ];
        for (status, n) in &self.answered {
            parts.push(format!("{n} answered {status}"));
        }
        parts.push(format!("{} closed without an answer", self.closed));
        parts.push(format!("{} reset", self.reset));
        format!("{} connections: {}", self.attempted, parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn statuses_are_read_from_the_first_line() {
        assert_eq!(
            status_of(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n"),
            Some(408)
        );
        assert_eq!(status_of(b"HTTP/1.0 503 x"), Some(503));
        assert_eq!(status_of(b"HTTP/1.1 20"), Some(20));
        assert_eq!(status_of(b"SSH-2.0-x"), None);
        assert_eq!(status_of(b""), None);
        assert_eq!(status_of(b"HTTP/1.1\r\n"), None);
    }

    #[test]
    fn the_head_carries_the_given_headers_and_length() {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer k".parse().unwrap());
        headers.insert("content-length", "1".parse().unwrap());
        let head = request_head("/model/m/converse", "127.0.0.1:9", &headers, 1000);
        let text = String::from_utf8(head).unwrap();
        assert!(text.starts_with("POST /model/m/converse HTTP/1.1\r\nhost: 127.0.0.1:9\r\n"));
        assert!(text.contains("authorization: Bearer k\r\n"));
        assert_eq!(text.matches("content-length").count(), 1);
        assert!(text.ends_with("content-length: 1000\r\n\r\n"));
    }

    #[test]
    fn counts_add_up() {
        let mut c = HeldCounts::default();
        for ending in [
            Ending::Open,
            Ending::Answered(408),
            Ending::Answered(408),
            Ending::Closed,
            Ending::Refused,
            Ending::Reset,
        ] {
            c.add(&Held {
                ending,
                lasted: Duration::ZERO,
            });
        }
        assert_eq!(c.attempted, 6);
        assert_eq!(c.answered.get(&408), Some(&2));
        assert_eq!(c.ended_by_server(), 4);
        assert!(c.describe().contains("2 answered 408"));
    }

    /// A server that reads the head, waits for `bytes` body bytes, then answers
    /// 408 and closes: a slow body ends as `Answered(408)`.
    #[tokio::test]
    async fn a_slow_body_sees_the_servers_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            // Head plus two body bytes.
            while !seen.windows(4).any(|w| w == b"\r\n\r\n")
                || seen.len() - (seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4) < 2
            {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0);
                seen.extend_from_slice(&buf[..n]);
            }
            tcp.write_all(b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
            seen
        });
        let (_tx, rx) = watch::channel(false);
        let tcp = connect(addr, Duration::from_secs(5)).await.unwrap();
        let head = request_head("/x", "h", &http::HeaderMap::new(), 5);
        let held = hold_slow_body(tcp, &head, b"{...}", Duration::from_millis(10), rx).await;
        assert_eq!(held.ending, Ending::Answered(408));
        let seen = server.await.unwrap();
        assert!(seen.starts_with(b"POST /x HTTP/1.1"));
    }

    #[tokio::test]
    async fn idle_connections_end_when_released_or_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(false);
        let kept = tokio::spawn(hold_idle(
            connect(addr, Duration::from_secs(5)).await.unwrap(),
            rx.clone(),
        ));
        let (first, _) = listener.accept().await.unwrap();
        let dropped = tokio::spawn(hold_idle(
            connect(addr, Duration::from_secs(5)).await.unwrap(),
            rx,
        ));
        let (second, _) = listener.accept().await.unwrap();
        drop(second);
        assert_eq!(dropped.await.unwrap().ending, Ending::Closed);
        tx.send(true).unwrap();
        assert_eq!(kept.await.unwrap().ending, Ending::Open);
        drop(first);
    }
}
