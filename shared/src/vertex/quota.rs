//! One process's view of each model's quota.
//!
//! Vertex AI counts requests per model per minute and answers 429 beyond.
//! Left to their own back-off, calls that met a 429 each retry on their own
//! clock: every retry inside the spent minute is another 429, and when the
//! quota frees, a call in the middle of a 20 s step only notices at its end.
//! So after a 429 the model's gate closes: calls to it (new ones too) wait,
//! one call at a time probes every `probe_interval` (or when the server's
//! `Retry-After` says), and the first success opens the gate for everyone.
//! The quota is used from the moment it frees, with about one 429 per probe
//! interval instead of one per waiting call.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// The longest pause between probes of a spent quota.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// The gates of every model one client calls.
#[derive(Debug)]
pub(crate) struct QuotaGates {
    probe_interval: Duration,
    closed: Mutex<HashMap<String, Closed>>,
    opened: Notify,
}

/// A model whose quota is spent.
#[derive(Clone, Copy, Debug)]
struct Closed {
    /// When the next probe may go.
    next_probe: Instant,
    /// A probe is on its way.
    probing: bool,
}

/// Leave to make one request to a model. Report how it went with
/// [`Ticket::close`]; a ticket dropped unclosed (its call was cancelled)
/// lets another call probe.
#[derive(Debug)]
pub(crate) struct Ticket<'a> {
    gates: &'a QuotaGates,
    model: &'a str,
    probe: bool,
    closed: bool,
}

/// How a request through the gate went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The model answered: its quota is not spent.
    Answered,
    /// 429: the quota is spent; try again after this long at the earliest.
    RateLimited(Duration),
    /// Some other failure, which says nothing about the quota.
    Other,
}

impl QuotaGates {
    /// Gates that probe a spent quota every `probe_interval`.
    pub(crate) fn new(probe_interval: Duration) -> Self {
        QuotaGates {
            probe_interval,
            closed: Mutex::new(HashMap::new()),
            opened: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Closed>> {
        self.closed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a request to `model` may go: at once while its quota is
    /// not known to be spent, else when the gate opens or it is this call's
    /// turn to probe. `None` when `deadline` comes first.
    pub(crate) async fn enter<'a>(
        &'a self,
        model: &'a str,
        deadline: Instant,
    ) -> Option<Ticket<'a>> {
        loop {
            // Registered before the state is read, so an opening between the
            // two is not missed.
            let opened = self.opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            let wake_at = {
                let mut closed = self.lock();
                match closed.get_mut(model) {
                    None => return Some(self.ticket(model, false)),
                    Some(gate) if !gate.probing && Instant::now() >= gate.next_probe => {
                        gate.probing = true;
                        return Some(self.ticket(model, true));
                    }
                    // A probe in flight closes and wakes everyone; else wait
                    // for the probe time.
                    Some(gate) if gate.probing => deadline,
                    Some(gate) => gate.next_probe.min(deadline),
                }
            };
            if Instant::now() >= deadline {
                return None;
            }
            tokio::select! {
                () = &mut opened => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    fn ticket<'a>(&'a self, model: &'a str, probe: bool) -> Ticket<'a> {
        Ticket {
            gates: self,
            model,
            probe,
            closed: false,
        }
    }

    /// Whether `model`'s gate is closed.
    #[cfg(test)]
    fn is_closed(&self, model: &str) -> bool {
        self.lock().contains_key(model)
    }
}

impl Ticket<'_> {
    /// Whether this request probes a spent quota.
    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }

    /// Records how the request went: an answer opens the gate, a 429 closes
    /// it (or keeps it closed) until the next probe.
    pub(crate) fn close(mut self, outcome: Outcome) {
        self.closed = true;
        let gates = self.gates;
        let mut closed = gates.lock();
        match outcome {
            Outcome::Answered => {
                if closed.remove(self.model).is_some() {
                    drop(closed);
                    gates.opened.notify_waiters();
                }
            }
            Outcome::RateLimited(retry_after) => {
                let next_probe = Instant::now() + retry_after.max(gates.probe_interval);
                let gate = closed.entry(self.model.to_string()).or_insert(Closed {
                    next_probe,
                    probing: false,
                });
                gate.next_probe = gate.next_probe.max(next_probe);
                if self.probe {
                    // The others wait for the next probe time now.
                    gate.probing = false;
                    drop(closed);
                    gates.opened.notify_waiters();
                }
            }
            Outcome::Other => self.release(&mut closed),
        }
    }

    /// A probe that learnt nothing lets the next waiter probe.
    fn release(&self, closed: &mut HashMap<String, Closed>) {
        if self.probe
            && let Some(gate) = closed.get_mut(self.model)
        {
            gate.probing = false;
            self.gates.opened.notify_waiters();
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.closed {
            let gates = self.gates;
            self.release(&mut gates.lock());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const MODEL: &str = "imagen-4.0-generate-001";
    const PROBE: Duration = Duration::from_secs(2);

    /// A call meets a 429 (the server asking for `retry_after`).
    async fn spend(gates: &QuotaGates, retry_after: Duration) {
        let ticket = gates.enter(MODEL, far()).await.unwrap();
        ticket.close(Outcome::RateLimited(retry_after));
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(3600)
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_gate_lets_every_call_through_at_once() {
        let gates = QuotaGates::new(PROBE);
        let started = Instant::now();
        for _ in 0..10 {
            let ticket = gates.enter(MODEL, far()).await.unwrap();
            assert!(!ticket.probe);
            ticket.close(Outcome::Answered);
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        assert!(!gates.is_closed(MODEL));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_429_one_call_probes_per_interval_and_a_success_releases_all() {
        let gates = Arc::new(QuotaGates::new(PROBE));
        spend(&gates, Duration::ZERO).await;
        assert!(gates.is_closed(MODEL));

        // Twenty waiting calls; the quota frees after three probes (6 s).
        let requests = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let gates = gates.clone();
                let requests = requests.clone();
                tokio::spawn(async move {
                    // A call retries through the gate until it is answered.
                    loop {
                        let ticket = gates.enter(MODEL, far()).await.unwrap();
                        if requests.fetch_add(1, Ordering::SeqCst) < 2 {
                            ticket.close(Outcome::RateLimited(Duration::ZERO));
                        } else {
                            ticket.close(Outcome::Answered);
                            return Instant::now();
                        }
                    }
                })
            })
            .collect();
        let mut finished = Vec::new();
        for call in calls {
            finished.push(call.await.unwrap() - started);
        }
        // Probes at 2, 4 and 6 s; the third succeeds and all go at 6 s.
        assert!(finished.iter().all(|t| *t == PROBE * 3), "{finished:?}");
        // 20 calls and their 2 probes that met a 429.
        assert_eq!(requests.load(Ordering::SeqCst), 22);
        assert!(!gates.is_closed(MODEL));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_longer_than_the_interval_holds_the_probe_back() {
        let gates = QuotaGates::new(PROBE);
        spend(&gates, Duration::from_secs(30)).await;
        let started = Instant::now();
        let probe = gates.enter(MODEL, far()).await.unwrap();
        assert!(probe.probe);
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_gives_up_at_its_deadline() {
        let gates = QuotaGates::new(PROBE);
        spend(&gates, Duration::from_secs(60)).await;
        let started = Instant::now();
        assert!(
            gates
                .enter(MODEL, Instant::now() + Duration::from_secs(5))
                .await
                .is_none()
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_lets_another_call_probe() {
        let gates = QuotaGates::new(PROBE);
        spend(&gates, Duration::ZERO).await;
        let probe = gates.enter(MODEL, far()).await.unwrap();
        assert!(probe.probe);
        drop(probe);
        let started = Instant::now();
        let next = gates.enter(MODEL, far()).await.unwrap();
        assert!(next.probe);
        assert_eq!(started.elapsed(), Duration::ZERO);
        // Other failures say nothing about the quota: still closed.
        next.close(Outcome::Other);
        assert!(gates.is_closed(MODEL));
    }

    #[tokio::test(start_paused = true)]
    async fn models_have_gates_of_their_own() {
        let gates = QuotaGates::new(PROBE);
        spend(&gates, Duration::from_secs(60)).await;
        let started = Instant::now();
        let other = gates.enter("veo-3.1-generate-001", far()).await.unwrap();
        assert!(!other.probe);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
