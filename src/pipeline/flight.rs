//! Single-flight: identical concurrent misses share one upstream call.
//!
//! The first request for a key starts a flight: a task that makes the upstream
//! call (fallback and all) and publishes the answer into the flight as it
//! arrives, frame by frame for streams. Every request for the key, the first
//! included, subscribes and renders what the flight publishes, so followers of a
//! stream get each event as soon as the leader does, not when it ends. The call
//! is independent of any one client: it stops only when every subscriber is gone.
//!
//! A flight that fails before its answer started tells its subscribers so; the
//! one whose request started it gets the error, the others try again on their
//! own (a failed leader does not poison its followers). A flight that fails
//! mid-stream ends every subscriber's stream with the same exception.

use axum::http::HeaderMap;
use bedrock_wire::converse::Summary;
use bytes::Bytes;
use futures_util::stream;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

use crate::answer::{Answer, Record};
use crate::cache::CacheKey;
use crate::error::ProxyError;
use crate::stream::{FrameStream, RelayedFrame};
use crate::support;

/// How an answer starts.
#[derive(Clone)]
pub enum Head {
    Whole {
        headers: HeaderMap,
        body: Bytes,
        summary: Summary,
    },
    Stream {
        headers: HeaderMap,
    },
}

#[derive(Default)]
struct State {
    head: Option<Head>,
    frames: Vec<RelayedFrame>,
    end: Option<Result<(), ProxyError>>,
    record: Record,
}

/// One upstream call and everyone waiting for it.
pub struct Flight {
    state: Mutex<State>,
    changes: watch::Sender<u64>,
}

/// What a subscriber gets when the answer starts.
pub enum Joined {
    Answer {
        answer: Answer,
        record: Record,
    },
    /// The flight failed before answering.
    Failed {
        error: ProxyError,
        record: Record,
    },
}

impl Flight {
    /// A new flight and the receiver of whoever starts it (which keeps the
    /// flight alive until that subscriber is gone).
    pub fn new() -> (Arc<Flight>, watch::Receiver<u64>) {
        let (changes, rx) = watch::channel(0);
        (
            Arc::new(Flight {
                state: Mutex::new(State::default()),
                changes,
            }),
            rx,
        )
    }

    /// Short critical sections only; never held across an await.
    fn with<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let result = f(&mut support::lock(&self.state));
        self.changes.send_modify(|v| *v += 1);
        result
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&support::lock(&self.state))
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Resolves once nobody is subscribed any more.
    pub async fn abandoned(&self) {
        self.changes.closed().await;
    }

    /// What the upstream call took (attempts, cache points...).
    pub fn set_record(&self, record: Record) {
        self.with(|s| s.record = record);
    }

    pub fn start(&self, head: Head) {
        self.with(|s| s.head = Some(head));
    }

    pub fn push(&self, frame: RelayedFrame) {
        self.with(|s| s.frames.push(frame));
    }

    pub fn finish(&self, result: Result<(), ProxyError>) {
        self.with(|s| s.end = Some(result));
    }

    /// Waits for the answer to start (or fail), using `rx` from [`Flight::new`]
    /// or [`Flight::subscribe`], and returns it for this subscriber.
    pub async fn join(self: &Arc<Self>, mut rx: watch::Receiver<u64>) -> Joined {
        loop {
            rx.borrow_and_update();
            let ready = self.read(|s| match (&s.head, &s.end) {
                (Some(head), _) => Some(Ok((head.clone(), s.record.clone()))),
                (None, Some(Err(e))) => Some(Err((e.clone(), s.record.clone()))),
                (None, Some(Ok(()))) => Some(Err((
                    ProxyError::internal("the upstream call ended without an answer"),
                    s.record.clone(),
                ))),
                (None, None) => None,
            });
            match ready {
                Some(Ok((
                    Head::Whole {
                        headers,
                        body,
                        summary,
                    },
                    record,
                ))) => {
                    return Joined::Answer {
                        answer: Answer::Whole {
                            headers,
                            body,
                            summary,
                        },
                        record,
                    }
                }
                Some(Ok((Head::Stream { headers }, record))) => {
                    return Joined::Answer {
                        answer: Answer::Stream {
                            headers,
                            frames: self.frames(rx),
                            joined: None,
                        },
                        record,
                    }
                }
                Some(Err((error, record))) => return Joined::Failed { error, record },
                None => {}
            }
            if rx.changed().await.is_err() {
                return Joined::Failed {
                    error: ProxyError::internal("the upstream call was dropped"),
                    record: Record::default(),
                };
            }
        }
    }

    /// The flight's frames from the first, then live as they arrive.
    fn frames(self: &Arc<Self>, rx: watch::Receiver<u64>) -> FrameStream {
        let flight = self.clone();
        Box::pin(stream::unfold(
            (flight, rx, 0usize, false),
            |(flight, mut rx, next, done)| async move {
                if done {
                    return None;
                }
                loop {
                    rx.borrow_and_update();
                    let next_item = flight.read(|s| match (s.frames.get(next), &s.end) {
                        (Some(f), _) => Next::Frame(f.clone()),
                        (None, Some(Ok(()))) => Next::End,
                        (None, Some(Err(e))) => Next::Failed(e.clone()),
                        (None, None) => Next::Wait,
                    });
                    match next_item {
                        Next::Frame(f) => return Some((Ok(f), (flight, rx, next + 1, false))),
                        Next::End => return None,
                        Next::Failed(e) => return Some((Err(e), (flight, rx, next, true))),
                        Next::Wait => {
                            if rx.changed().await.is_err() {
                                let e = ProxyError::internal(
                                    "the upstream call was dropped mid-stream",
                                );
                                return Some((Err(e), (flight, rx, next, true)));
                            }
                        }
                    }
                }
            },
        ))
    }
}

/// What a subscriber reads next from a streaming flight.
enum Next {
    Frame(RelayedFrame),
    End,
    Failed(ProxyError),
    Wait,
}

const SHARDS: usize = 16;

/// What a flight is shared by: the cache key and whether the answer streams.
/// Converse and ConverseStream share cache entries, but a flight hands its
/// followers the leader's answer as it comes (a body or a stream), so only
/// requests that want the same shape may join it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlightKey {
    pub key: CacheKey,
    pub streamed: bool,
}

/// The flights in progress, by key; sharded so unrelated misses do not contend.
pub struct Flights {
    shards: Vec<Mutex<HashMap<FlightKey, Arc<Flight>>>>,
}

impl Default for Flights {
    fn default() -> Self {
        Flights {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// Whether this request started the flight or joined one.
pub enum Role {
    Leader(Arc<Flight>, watch::Receiver<u64>),
    Follower(Arc<Flight>, watch::Receiver<u64>),
}

impl Flights {
    fn shard(&self, key: &FlightKey) -> &Mutex<HashMap<FlightKey, Arc<Flight>>> {
        &self.shards[usize::from(key.key.0[0]) % SHARDS]
    }

    /// Joins the flight for `key`, or starts one.
    pub fn join_or_start(&self, key: FlightKey) -> Role {
        let mut map = support::lock(self.shard(&key));
        if let Some(flight) = map.get(&key) {
            let rx = flight.subscribe();
            return Role::Follower(flight.clone(), rx);
        }
        let (flight, rx) = Flight::new();
        map.insert(key, flight.clone());
        Role::Leader(flight, rx)
    }

    /// Forgets the flight for `key` (if it is still `flight`).
    pub fn remove(&self, key: &FlightKey, flight: &Arc<Flight>) {
        let mut map = support::lock(self.shard(key));
        if map.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            map.remove(key);
        }
    }

    /// How many flights are in progress.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bedrock_wire::eventstream::{decode, event_frame};
    use futures_util::StreamExt;

    fn frame(i: u8) -> RelayedFrame {
        let raw = event_frame("contentBlockDelta", vec![b'0' + i]);
        RelayedFrame {
            frame: decode(raw.clone()).unwrap(),
            raw,
        }
    }

    #[tokio::test]
    async fn followers_get_every_frame_live() {
        let flights = Flights::default();
        let key = FlightKey {
            key: CacheKey([7; 32]),
            streamed: false,
        };
        let Role::Leader(flight, leader_rx) = flights.join_or_start(key) else {
            panic!("first is leader")
        };
        let Role::Follower(same, follower_rx) = flights.join_or_start(key) else {
            panic!("second follows")
        };
        assert!(Arc::ptr_eq(&flight, &same));
        flight.start(Head::Stream {
            headers: HeaderMap::new(),
        });
        flight.push(frame(1));
        let mut streams = Vec::new();
        for rx in [leader_rx, follower_rx] {
            let Joined::Answer {
                answer: Answer::Stream { frames, .. },
                ..
            } = flight.join(rx).await
            else {
                panic!("a stream");
            };
            streams.push(frames);
        }
        let producer = flight.clone();
        let feed = tokio::spawn(async move {
            for i in 2..5 {
                tokio::task::yield_now().await;
                producer.push(frame(i));
            }
            producer.finish(Ok(()));
        });
        for s in streams {
            let got: Vec<_> = s.map(|f| f.unwrap().frame.payload).collect().await;
            assert_eq!(got, [&b"1"[..], b"2", b"3", b"4"]);
        }
        feed.await.unwrap();
        flights.remove(&key, &flight);
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn a_failure_before_the_answer_reaches_every_subscriber() {
        let (flight, rx) = Flight::new();
        let follower = flight.subscribe();
        flight.finish(Err(ProxyError::throttled("busy")));
        assert!(matches!(flight.join(rx).await, Joined::Failed { .. }));
        assert!(matches!(flight.join(follower).await, Joined::Failed { .. }));
    }

    #[tokio::test]
    async fn a_flight_knows_when_it_is_abandoned() {
        let (flight, rx) = Flight::new();
        drop(rx);
        tokio::time::timeout(std::time::Duration::from_secs(1), flight.abandoned())
            .await
            .expect("no subscriber left");
    }
}
