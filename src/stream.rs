//! The live stream of incident changes behind `GET /api/v1/stream` (Server-Sent Events).
//!
//! The writer thread publishes one event per durable fact that changed an incident, after
//! the read model shows it, so a client that refetches on an event finds the change. Events
//! carry the fact's log sequence as their id and the incident's summary as the list renders
//! it, so a board updates without refetching.
//!
//! A ring of the latest events lets a reconnecting client (`Last-Event-ID: N`) get exactly
//! what it missed. When N is older than the ring (or from another log), or a slow client fell
//! behind the broadcast channel, it gets `reset` instead and refetches: the writer never
//! waits for a client.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{broadcast, watch};

use crate::engine::IncidentId;

/// Events held for reconnecting clients unless configured otherwise.
pub const DEFAULT_RING: usize = 65_536;
/// Events a subscriber may fall behind the writer before it is told to reset.
const BROADCAST: usize = 16_384;

/// One durable fact that changed an incident.
#[derive(Clone, Debug)]
pub struct Event {
    pub seq: u64,
    pub kind: &'static str,
    pub incident: IncidentId,
    /// The incident's summary JSON after the writer's group of facts (shared by the group's
    /// events about the same incident).
    pub summary: Arc<str>,
    /// For a merge: the summary of the incident merged away.
    pub merged: Option<Arc<str>>,
}

impl Event {
    /// The SSE `data` line: compact JSON, no newlines.
    pub fn data(&self) -> String {
        let mut s = format!(
            "{{\"seq\":{},\"kind\":\"{}\",\"incident\":\"{}\",\"summary\":{}",
            self.seq, self.kind, self.incident, self.summary
        );
        if let Some(m) = &self.merged {
            s.push_str(",\"merged\":");
            s.push_str(m);
        }
        s.push('}');
        s
    }
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    capacity: usize,
    /// Events with a sequence up to here may be missing (evicted, or before this start).
    floor: u64,
    /// The last sequence the writer made durable (any fact).
    head: u64,
}

/// Where a new subscriber starts.
pub enum Start {
    /// Missed events to send first (possibly none), then the live ones.
    Replay(Vec<Arc<Event>>),
    /// What the client knows is gone or unknown: it must refetch, then follow from `head`.
    Reset,
}

/// A client's view of the stream.
pub struct Subscription {
    pub start: Start,
    /// The writer's last sequence when the subscription began.
    pub head: u64,
    pub live: broadcast::Receiver<Arc<Event>>,
    pub closed: watch::Receiver<bool>,
}

/// The ring, the broadcast channel and the shutdown signal, shared by writer and handlers.
pub struct Hub {
    ring: Mutex<Ring>,
    tx: broadcast::Sender<Arc<Event>>,
    closed: watch::Sender<bool>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub::new(DEFAULT_RING)
    }
}

impl Hub {
    pub fn new(capacity: usize) -> Hub {
        let (tx, _) = broadcast::channel(BROADCAST);
        let (closed, _) = watch::channel(false);
        Hub {
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                capacity: capacity.max(1),
                floor: 0,
                head: 0,
            }),
            tx,
            closed,
        }
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets how many events the ring holds (before the writer starts).
    pub fn set_capacity(&self, capacity: usize) {
        self.ring().capacity = capacity.max(1);
    }

    /// The log's last sequence at start: nothing before it can be replayed.
    pub fn start_at(&self, seq: u64) {
        let mut ring = self.ring();
        ring.floor = ring.floor.max(seq);
        ring.head = ring.head.max(seq);
    }

    /// Called by the writer after the read model shows these facts; never blocks on clients.
    pub fn publish(&self, events: Vec<Event>, head: u64) {
        let mut ring = self.ring();
        for event in events {
            let event = Arc::new(event);
            if ring.events.len() >= ring.capacity
                && let Some(old) = ring.events.pop_front()
            {
                ring.floor = ring.floor.max(old.seq);
            }
            ring.events.push_back(event.clone());
            // No subscriber is no error.
            let _ = self.tx.send(event);
        }
        ring.head = ring.head.max(head);
    }

    /// Subscribes after `after` (the client's last event id; `None`: from now on).
    pub fn subscribe(&self, after: Option<u64>) -> Subscription {
        let ring = self.ring();
        // Subscribing under the ring's lock: nothing published falls between replay and live.
        let live = self.tx.subscribe();
        let start = match after {
            None => Start::Replay(Vec::new()),
            Some(n) if n < ring.floor || n > ring.head => Start::Reset,
            Some(n) => {
                let from = ring.events.partition_point(|e| e.seq <= n);
                Start::Replay(ring.events.range(from..).cloned().collect())
            }
        };
        Subscription {
            start,
            head: ring.head,
            live,
            closed: self.closed.subscribe(),
        }
    }

    /// The writer's last durable sequence.
    pub fn head(&self) -> u64 {
        self.ring().head
    }

    /// Ends every stream (shutdown), so graceful HTTP shutdown does not wait for them.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq: u64) -> Event {
        Event {
            seq,
            kind: "alert_attached",
            incident: IncidentId(1),
            summary: Arc::from("{}"),
            merged: None,
        }
    }

    fn replayed(s: &Subscription) -> Option<Vec<u64>> {
        match &s.start {
            Start::Replay(events) => Some(events.iter().map(|e| e.seq).collect()),
            Start::Reset => None,
        }
    }

    #[test]
    fn replays_what_is_held_and_resets_what_is_not() {
        let hub = Hub::new(3);
        hub.start_at(10);
        hub.publish(vec![event(11), event(13)], 13);
        hub.publish(vec![event(14), event(16)], 17);
        // The ring holds 13, 14, 16; 11 was evicted.
        assert_eq!(replayed(&hub.subscribe(Some(13))), Some(vec![14, 16]));
        assert_eq!(replayed(&hub.subscribe(Some(11))), Some(vec![13, 14, 16]));
        assert_eq!(replayed(&hub.subscribe(Some(17))), Some(vec![]));
        assert_eq!(replayed(&hub.subscribe(None)), Some(vec![]));
        assert_eq!(replayed(&hub.subscribe(Some(10))), None, "11 is gone");
        assert_eq!(replayed(&hub.subscribe(Some(99))), None, "from another log");
        assert_eq!(hub.head(), 17);
    }

    #[test]
    fn live_events_follow_the_subscription_and_close_ends_it() {
        let hub = Hub::new(8);
        let mut s = hub.subscribe(None);
        hub.publish(vec![event(1)], 1);
        assert_eq!(s.live.try_recv().map(|e| e.seq).ok(), Some(1));
        assert!(!*s.closed.borrow());
        hub.close();
        assert!(*s.closed.borrow());
        assert_eq!(
            event(5).data(),
            r#"{"seq":5,"kind":"alert_attached","incident":"INC-000001","summary":{}}"#
        );
    }
}
