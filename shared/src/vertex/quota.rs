//! One process's view of each model's quota, and the share of it each
//! tenant gets.
//!
//! Vertex AI counts requests per model per minute and answers 429 beyond.
//! Left to their own back-off, calls that met a 429 each retry on their own
//! clock: every retry inside the spent minute is another 429, and when the
//! quota frees, a call in the middle of a 20 s step only notices at its end.
//! So after a 429 the model's gate closes: calls to it (new ones too) wait,
//! one call at a time probes every `probe_interval` (or when the server's
//! `Retry-After` says), and the first success opens the gate again.
//! The quota is used from the moment it frees, with about one 429 per probe
//! interval instead of one per waiting call.
//!
//! Waiting calls go in turn, not all at once: the next to go (and the next
//! to probe) is the one whose tenant has made the fewest calls to the model
//! in the last [`SHARE_WINDOW`] per unit of its weight, counting the calls
//! on their way; between calls of one tenant, the one that waited longest.
//! So when the quota is the bottleneck, tenants share it by weight, and a
//! tenant with ten jobs is not held behind one with a thousand; with a
//! single tenant the order is arrival order.
//!
//! Two things keep that order when the quota frees. Calls do not all rush
//! out at once after a successful probe (the first few to reach the model
//! would win, whoever's turn it was): the gate reopens slowly, one more call
//! on its way for every call answered, which doubles the calls in flight
//! every round trip. And probes come at a jittered interval, so that of
//! several instances the one whose probe last found the quota free does not
//! always find it first again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Calls in flight past which a reopening gate counts as open.
const OPEN_WINDOW: u64 = 4096;

/// The longest pause between probes of a spent quota.
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// How far back a tenant's calls count towards its turn: Vertex AI counts
/// quota per minute.
pub(crate) const SHARE_WINDOW: Duration = Duration::from_secs(60);

/// Whose call it is: the tenant and its weight, for its share of a model's
/// quota when the quota is the bottleneck.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaShare {
    /// The tenant's name.
    pub tenant: String,
    /// Its weight (at least 1): twice the weight, twice the calls.
    pub weight: u32,
}

impl QuotaShare {
    /// The share of `tenant` at `weight` (0 counts as 1).
    pub fn new(tenant: impl Into<String>, weight: u32) -> Self {
        Self {
            tenant: tenant.into(),
            weight: weight.max(1),
        }
    }
}

impl Default for QuotaShare {
    /// The default tenant at weight 1.
    fn default() -> Self {
        Self::new(crate::domain::tenant::TenantName::DEFAULT, 1)
    }
}

/// The gates of every model one client calls.
#[derive(Debug)]
pub(crate) struct QuotaGates {
    probe_interval: Duration,
    /// Probes go between half the interval and the whole of it.
    jitter: bool,
    models: Mutex<HashMap<String, ModelGate>>,
    /// Something changed: the gate opened or closed, a call went or ended.
    changed: Notify,
}

/// One model: whether its quota is spent, who waits, who called lately.
#[derive(Debug, Default)]
struct ModelGate {
    closed: Option<Closed>,
    /// After a reopening, how many calls may be on their way (`None`: as
    /// many as come).
    window: Option<u64>,
    /// Waiting calls in arrival order.
    waiting: BTreeMap<u64, QuotaShare>,
    next_seq: u64,
    /// Per tenant: its calls of the window.
    used: HashMap<String, Used>,
}

/// A tenant's recent calls to one model.
#[derive(Debug, Default)]
struct Used {
    /// When its calls were answered, within the window.
    answered: VecDeque<Instant>,
    /// Calls on their way.
    in_flight: u64,
}

impl Used {
    fn load(&self) -> u64 {
        self.answered.len() as u64 + self.in_flight
    }
}

impl ModelGate {
    fn forget_before(&mut self, now: Instant) {
        let since = now.checked_sub(SHARE_WINDOW);
        self.used.retain(|_, used| {
            while let (Some(first), Some(since)) = (used.answered.front(), since)
                && *first < since
            {
                used.answered.pop_front();
            }
            used.load() > 0
        });
    }

    /// The waiting call whose turn it is: the fewest calls in the window per
    /// unit of weight, then the longest wait.
    fn in_turn(&self) -> Option<u64> {
        let load = |share: &QuotaShare| self.used.get(&share.tenant).map_or(0, Used::load);
        let mut best: Option<(u64, u64, u32)> = None;
        for (seq, share) in &self.waiting {
            let mine = load(share);
            // mine/weight < theirs/their weight, without division.
            let fewer = best.is_none_or(|(_, theirs, their_weight)| {
                u128::from(mine) * u128::from(their_weight)
                    < u128::from(theirs) * u128::from(share.weight)
            });
            if fewer {
                best = Some((*seq, mine, share.weight));
            }
        }
        best.map(|(seq, _, _)| seq)
    }

    /// Calls on their way, of every tenant.
    fn in_flight(&self) -> u64 {
        self.used.values().map(|u| u.in_flight).sum()
    }

    /// Whether one more call may go while the gate is open.
    fn has_room(&self) -> bool {
        self.window.is_none_or(|window| self.in_flight() < window)
    }

    /// Lets waiting call `seq` go.
    fn admit(&mut self, seq: u64) -> Option<String> {
        let share = self.waiting.remove(&seq)?;
        self.used.entry(share.tenant.clone()).or_default().in_flight += 1;
        Some(share.tenant)
    }

    /// A call of `tenant` ended; `answered` when it counted against the
    /// quota.
    fn ended(&mut self, tenant: &str, answered: bool, now: Instant) {
        let used = self.used.entry(tenant.to_string()).or_default();
        used.in_flight = used.in_flight.saturating_sub(1);
        if answered {
            used.answered.push_back(now);
        }
    }
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
    tenant: String,
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

/// A call in the waiting line; leaving it (given up, cancelled) lets the
/// next one's turn come.
struct InLine<'a> {
    gates: &'a QuotaGates,
    model: &'a str,
    seq: u64,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let mut models = self.gates.lock();
        if let Some(gate) = models.get_mut(self.model)
            && gate.waiting.remove(&self.seq).is_some()
        {
            drop(models);
            self.gates.changed.notify_waiters();
        }
    }
}

impl QuotaGates {
    /// Gates that probe a spent quota every `probe_interval`.
    pub(crate) fn new(probe_interval: Duration) -> Self {
        QuotaGates {
            probe_interval,
            jitter: false,
            models: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        }
    }

    /// Gates whose probes go at a random point between half the interval
    /// and the whole of it.
    pub(crate) fn jittered(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The pause before the next probe.
    fn probe_pause(&self) -> Duration {
        if self.jitter {
            self.probe_interval
                .mul_f64(0.5 + rand::random::<f64>() / 2.0)
        } else {
            self.probe_interval
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, ModelGate>> {
        self.models.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until a request to `model` for `share` may go: when it is its
    /// turn and the model's quota is not known to be spent, or it is its
    /// turn to probe. `None` when `deadline` comes first.
    pub(crate) async fn enter<'a>(
        &'a self,
        model: &'a str,
        share: &QuotaShare,
        deadline: Instant,
    ) -> Option<Ticket<'a>> {
        let seq = {
            let mut models = self.lock();
            let gate = models.entry(model.to_string()).or_default();
            let seq = gate.next_seq;
            gate.next_seq += 1;
            gate.waiting.insert(seq, share.clone());
            seq
        };
        let in_line = InLine {
            gates: self,
            model,
            seq,
        };
        loop {
            // Registered before the state is read, so a change between the
            // two is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now = Instant::now();
            let wake_at = {
                let mut models = self.lock();
                let gate = models.entry(model.to_string()).or_default();
                gate.forget_before(now);
                let my_turn = gate.in_turn() == Some(seq);
                let probe = match &mut gate.closed {
                    None => (my_turn && gate.has_room()).then_some(false),
                    Some(closed) if my_turn && !closed.probing && now >= closed.next_probe => {
                        closed.probing = true;
                        Some(true)
                    }
                    _ => None,
                };
                if let Some(probe) = probe {
                    let tenant = gate.admit(seq).unwrap_or_default();
                    drop(models);
                    drop(in_line);
                    // The next in line may go now.
                    self.changed.notify_waiters();
                    return Some(Ticket {
                        gates: self,
                        model,
                        tenant,
                        probe,
                        closed: false,
                    });
                }
                match gate.closed {
                    // Everyone looks again at the probe time: whose turn
                    // it is may have changed as old calls left the window.
                    Some(closed) if !closed.probing && now < closed.next_probe => {
                        closed.next_probe.min(deadline)
                    }
                    // A probe in flight, or another call's turn: the
                    // change wakes this one.
                    _ => deadline,
                }
            };
            if now >= deadline {
                return None;
            }
            tokio::select! {
                () = &mut changed => {}
                () = tokio::time::sleep_until(wake_at) => {}
            }
        }
    }

    /// Whether `model`'s gate is closed.
    #[cfg(test)]
    fn is_closed(&self, model: &str) -> bool {
        self.lock().get(model).is_some_and(|g| g.closed.is_some())
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
        let now = Instant::now();
        let mut models = gates.lock();
        let gate = models.entry(self.model.to_string()).or_default();
        gate.ended(&self.tenant, outcome == Outcome::Answered, now);
        match outcome {
            Outcome::Answered => {
                if gate.closed.take().is_some() {
                    // Reopening: the probe's answer lets one more go.
                    gate.window = Some(1);
                }
                // One more on its way per call answered, until the
                // window is wider than any burst.
                gate.window = gate.window.map(|w| w + 1).filter(|w| *w < OPEN_WINDOW);
            }
            Outcome::RateLimited(retry_after) => {
                let next_probe = now + retry_after.max(gates.probe_pause());
                let closed = gate.closed.get_or_insert(Closed {
                    next_probe,
                    probing: false,
                });
                closed.next_probe = closed.next_probe.max(next_probe);
                if self.probe {
                    // The others wait for the next probe time now.
                    closed.probing = false;
                }
            }
            Outcome::Other => self.release(gate),
        }
        drop(models);
        gates.changed.notify_waiters();
    }

    /// A probe that learnt nothing lets the next waiter probe.
    fn release(&self, gate: &mut ModelGate) {
        if self.probe
            && let Some(closed) = &mut gate.closed
        {
            closed.probing = false;
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.closed {
            let gates = self.gates;
            let mut models = gates.lock();
            let gate = models.entry(self.model.to_string()).or_default();
            gate.ended(&self.tenant, false, Instant::now());
            self.release(gate);
            drop(models);
            gates.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    const MODEL: &str = "imagen-4.0-generate-001";
    const PROBE: Duration = Duration::from_secs(2);

    /// A call meets a 429 (the server asking for `retry_after`).
    async fn spend(gates: &QuotaGates, retry_after: Duration) {
        let ticket = gates
            .enter(MODEL, &QuotaShare::default(), far())
            .await
            .unwrap();
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
            let ticket = gates
                .enter(MODEL, &QuotaShare::default(), far())
                .await
                .unwrap();
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
                        let ticket = gates
                            .enter(MODEL, &QuotaShare::default(), far())
                            .await
                            .unwrap();
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
        let probe = gates
            .enter(MODEL, &QuotaShare::default(), far())
            .await
            .unwrap();
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
                .enter(
                    MODEL,
                    &QuotaShare::default(),
                    Instant::now() + Duration::from_secs(5)
                )
                .await
                .is_none()
        );
        assert_eq!(started.elapsed(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_probe_lets_another_call_probe() {
        let gates = QuotaGates::new(PROBE);
        spend(&gates, Duration::ZERO).await;
        let probe = gates
            .enter(MODEL, &QuotaShare::default(), far())
            .await
            .unwrap();
        assert!(probe.probe);
        drop(probe);
        let started = Instant::now();
        let next = gates
            .enter(MODEL, &QuotaShare::default(), far())
            .await
            .unwrap();
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
        let other = gates
            .enter("veo-3.1-generate-001", &QuotaShare::default(), far())
            .await
            .unwrap();
        assert!(!other.probe);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    /// Calls of `line` (tenant, weight) wait behind a spent quota in that
    /// order; the quota frees at the first probe. The order they went in.
    async fn order_after_a_429(gates: Arc<QuotaGates>, line: &[(&str, u32)]) -> Vec<String> {
        spend(&gates, Duration::ZERO).await;
        let went = Arc::new(Mutex::new(Vec::new()));
        let mut calls = Vec::new();
        for (tenant, weight) in line {
            let (gates, went) = (gates.clone(), went.clone());
            let share = QuotaShare::new(*tenant, *weight);
            calls.push(tokio::spawn(async move {
                let ticket = gates.enter(MODEL, &share, far()).await.unwrap();
                went.lock().unwrap().push(share.tenant.clone());
                ticket.close(Outcome::Answered);
            }));
            // Each is in line before the next arrives.
            tokio::task::yield_now().await;
        }
        for call in calls {
            call.await.unwrap();
        }
        went.lock().unwrap().clone()
    }

    fn count(went: &[String], tenant: &str) -> usize {
        went.iter().filter(|t| *t == tenant).count()
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_tenants_go_in_turn_not_in_arrival_order() {
        // Ten of a's calls arrive first, then two of b's.
        let mut line = vec![("a", 1); 10];
        line.extend([("b", 1); 2]);
        let went = order_after_a_429(Arc::new(QuotaGates::new(PROBE)), &line).await;
        assert_eq!(went.len(), 12);
        // Equal weights: b's two are among the first four, not the last two.
        assert_eq!(count(&went[..4], "b"), 2, "{went:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_tenant_that_called_lately_waits_for_one_that_did_not() {
        let gates = Arc::new(QuotaGates::new(PROBE));
        // a made five calls this minute before the quota ran out.
        for _ in 0..5 {
            let ticket = gates
                .enter(MODEL, &QuotaShare::new("a", 1), far())
                .await
                .unwrap();
            ticket.close(Outcome::Answered);
        }
        let mut line = vec![("a", 1); 4];
        line.extend([("b", 1); 4]);
        let went = order_after_a_429(gates.clone(), &line).await;
        assert_eq!(went[..4], ["b", "b", "b", "b"], "{went:?}");
        // A minute later a's old calls no longer count: arrival order again.
        tokio::time::advance(SHARE_WINDOW + PROBE).await;
        let went = order_after_a_429(gates, &[("a", 1), ("b", 1), ("a", 1)]).await;
        assert_eq!(went, ["a", "b", "a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn weights_set_the_share() {
        // a at weight 3, b at 1, eight calls each, b's first in line.
        let mut line = vec![("b", 1); 8];
        line.extend([("a", 3); 8]);
        let went = order_after_a_429(Arc::new(QuotaGates::new(PROBE)), &line).await;
        // Of any first eight, a has six and b two (3:1), give or take one.
        let a = count(&went[..8], "a");
        assert!((5..=7).contains(&a), "{went:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_gives_up_passes_its_turn_on() {
        let gates = Arc::new(QuotaGates::new(PROBE));
        spend(&gates, Duration::from_secs(10)).await;
        // b's call is in turn but gives up before the probe time; a's call,
        // behind it, probes at the probe time.
        let (g, started) = (gates.clone(), Instant::now());
        let b = tokio::spawn(async move {
            g.enter(MODEL, &QuotaShare::new("b", 1), Instant::now() + PROBE)
                .await
                .is_none()
        });
        tokio::task::yield_now().await;
        let probe = gates
            .enter(MODEL, &QuotaShare::new("a", 1), far())
            .await
            .unwrap();
        assert!(probe.probe);
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(b.await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reopened_gate_lets_calls_out_a_few_more_each_round_trip() {
        let gates = Arc::new(QuotaGates::new(PROBE));
        spend(&gates, Duration::ZERO).await;
        let on_way = Arc::new(AtomicUsize::new(0));
        let rounds = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let calls: Vec<_> = (0..15)
            .map(|_| {
                let (gates, on_way, rounds) = (gates.clone(), on_way.clone(), rounds.clone());
                tokio::spawn(async move {
                    let ticket = gates
                        .enter(MODEL, &QuotaShare::default(), far())
                        .await
                        .unwrap();
                    let now = on_way.fetch_add(1, Ordering::SeqCst) + 1;
                    rounds.lock().unwrap().push((started.elapsed(), now));
                    // Each call takes 100 ms to answer.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    on_way.fetch_sub(1, Ordering::SeqCst);
                    ticket.close(Outcome::Answered);
                })
            })
            .collect();
        for call in calls {
            call.await.unwrap();
        }
        let rounds = rounds.lock().unwrap().clone();
        // The probe alone, then at most 2, 4, 8... on their way.
        let most = |at: Duration| {
            rounds
                .iter()
                .filter(|(t, _)| *t >= at && *t < at + Duration::from_millis(100))
                .map(|(_, n)| *n)
                .max()
                .unwrap_or(0)
        };
        let first = PROBE;
        assert_eq!(most(first), 1, "{rounds:?}");
        assert!(most(first + Duration::from_millis(100)) <= 2, "{rounds:?}");
        assert!(most(first + Duration::from_millis(200)) <= 4, "{rounds:?}");
        assert_eq!(rounds.len(), 15);
    }
}
