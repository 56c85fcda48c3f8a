//! A webhook delivery (`webhooks/{id}`): one job event on its way to one
//! tenant's receiver, from the event until a 2xx, a 410, or a day of
//! refusals. The id is the `webhook-id` every attempt carries, and the body
//! is fixed when the event is raised, so a receiver sees the same message
//! however often it is sent.

use super::tenant::TenantName;
use super::webhook::WebhookEvent;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long a finished delivery is kept (for `asmr webhooks`).
pub const DELIVERY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most characters of a receiver's answer or an error that are kept.
pub const MAX_ANSWER_CHARS: usize = 300;

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryState {
    /// Not yet answered with a 2xx; sent again at `next_at`.
    Pending,
    /// The receiver answered 2xx.
    Delivered,
    /// Refused or unreachable for its whole retry window.
    Failed,
    /// Not sent: the receiver answered 410 Gone to this tenant, this time
    /// or before.
    Stopped,
}

impl DeliveryState {
    /// The name used in documents and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Stopped => "stopped",
        }
    }
}

/// What one attempt came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A 2xx.
    Accepted(u16),
    /// 410 Gone: the receiver wants no more.
    Gone,
    /// Any other status, with the start of its body and the wait the
    /// receiver asked for (`Retry-After`).
    Refused {
        /// The status.
        status: u16,
        /// The start of the body.
        excerpt: String,
        /// `Retry-After`, when given.
        retry_after: Option<Duration>,
    },
    /// No answer: a refused connection, a time-out, a refused address.
    Unreachable(String),
}

/// When to try again after a failed attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    /// The wait after the first, second... failed attempt; the last one
    /// repeats.
    pub delays: Vec<Duration>,
    /// How long after the event a delivery is tried at all.
    pub window: Duration,
}

impl Default for RetrySchedule {
    /// The Standard Webhooks example schedule, over a day: 5 s, 5 min,
    /// 30 min, 2 h, 5 h, then every 10 h.
    fn default() -> Self {
        let minutes = |m: u64| Duration::from_secs(60 * m);
        Self {
            delays: vec![
                Duration::from_secs(5),
                minutes(5),
                minutes(30),
                minutes(120),
                minutes(300),
                minutes(600),
            ],
            window: Duration::from_secs(24 * 3600),
        }
    }
}

impl RetrySchedule {
    /// The wait after failed attempt number `attempts` (from 1).
    pub fn delay_after(&self, attempts: u32) -> Duration {
        let index = (attempts.max(1) as usize - 1).min(self.delays.len().saturating_sub(1));
        self.delays.get(index).copied().unwrap_or(Duration::ZERO)
    }
}

/// A webhook delivery record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The `webhook-id`: the same for every attempt of this event.
    pub id: String,
    /// The job event it comes from.
    pub event_id: String,
    /// The job.
    pub job_id: String,
    /// Whose job it is.
    #[serde(default)]
    pub tenant: TenantName,
    /// Where it goes.
    pub url: String,
    /// Which of the webhook's events this is.
    pub event: WebhookEvent,
    /// The body, exactly as signed: the job as the API returns it when the
    /// event was raised.
    pub body: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    #[serde(default)]
    pub attempts: u32,
    /// When the event was recorded.
    pub created_at: Timestamp,
    /// When it is next due (pending only).
    pub next_at: Timestamp,
    /// When it stops being tried.
    pub give_up_at: Timestamp,
    /// Who is sending it now, until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_until: Option<Timestamp>,
    /// The last attempt's status, if it got one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// The last attempt's answer or error, cut short.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_answer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Timestamp>,
    /// When retention may delete it (set once it is finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expire_at: Option<Timestamp>,
}

impl Delivery {
    /// The `webhook-id` of webhook event `event` of job event `event_id`
    /// (one write of a job can make two: its outputs and its end, when the
    /// copy was there before the generator recorded them).
    pub fn id_of(event_id: &str, event: WebhookEvent) -> String {
        format!("msg_{event_id}_{event}")
    }

    /// A delivery of one event, due now, tried for `schedule.window`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        event_id: &str,
        job_id: &str,
        tenant: TenantName,
        url: &str,
        event: WebhookEvent,
        body: String,
        schedule: &RetrySchedule,
        now: Timestamp,
    ) -> Self {
        Self {
            id: Self::id_of(event_id, event),
            event_id: event_id.to_string(),
            job_id: job_id.to_string(),
            tenant,
            url: url.to_string(),
            event,
            body,
            state: DeliveryState::Pending,
            attempts: 0,
            created_at: now,
            next_at: now,
            give_up_at: now.plus(schedule.window),
            lease_owner: None,
            lease_until: None,
            last_status: None,
            last_answer: None,
            last_attempt_at: None,
            delivered_at: None,
            expire_at: None,
        }
    }

    /// Whether `owner` may send it at `now`: pending, due, and not held
    /// by another sender whose lease runs.
    pub fn is_due(&self, now: Timestamp) -> bool {
        self.state == DeliveryState::Pending
            && self.next_at <= now
            && self.lease_until.is_none_or(|until| until <= now)
    }

    /// Takes it for sending until `now + lease`.
    pub fn take(&mut self, owner: &str, lease: Duration, now: Timestamp) {
        self.lease_owner = Some(owner.to_string());
        self.lease_until = Some(now.plus(lease));
    }

    /// Whether `owner` holds it.
    pub fn held_by(&self, owner: &str) -> bool {
        self.state == DeliveryState::Pending && self.lease_owner.as_deref() == Some(owner)
    }

    /// Records one attempt's `answer`: delivered on a 2xx, stopped on a
    /// 410, failed when tried at or after `give_up_at`, due
    /// again after the schedule's wait (or the receiver's `Retry-After`,
    /// if longer) otherwise.
    pub fn settle(&mut self, answer: &Answer, schedule: &RetrySchedule, now: Timestamp) {
        self.attempts += 1;
        self.lease_owner = None;
        self.lease_until = None;
        self.last_attempt_at = Some(now);
        let (status, text) = match answer {
            Answer::Accepted(status) => (Some(*status), format!("{status}")),
            Answer::Gone => (Some(410), "410 Gone: no more deliveries to this URL".into()),
            Answer::Refused {
                status, excerpt, ..
            } => (Some(*status), format!("{status} {excerpt}")),
            Answer::Unreachable(why) => (None, why.clone()),
        };
        self.last_status = status;
        self.last_answer = Some(text.chars().take(MAX_ANSWER_CHARS).collect());
        match answer {
            Answer::Accepted(_) => {
                self.state = DeliveryState::Delivered;
                self.delivered_at = Some(now);
            }
            Answer::Gone => self.state = DeliveryState::Stopped,
            Answer::Refused { retry_after, .. } => {
                self.retry_later(retry_after.unwrap_or_default(), schedule, now)
            }
            Answer::Unreachable(_) => self.retry_later(Duration::ZERO, schedule, now),
        }
        if self.state != DeliveryState::Pending {
            self.expire_at = Some(now.plus(DELIVERY_RETENTION));
        }
    }

    fn retry_later(&mut self, asked: Duration, schedule: &RetrySchedule, now: Timestamp) {
        // The last try falls on the window's end.
        let next = now.plus(schedule.delay_after(self.attempts).max(asked));
        match now >= self.give_up_at {
            true => self.state = DeliveryState::Failed,
            false => self.next_at = next.min(self.give_up_at),
        }
    }

    /// Marks it not sent, since the tenant's receiver at its URL answered
    /// 410 before.
    pub fn stop(&mut self, now: Timestamp) {
        self.state = DeliveryState::Stopped;
        self.last_answer = Some("not sent: this URL answered 410 Gone before".into());
        self.expire_at = Some(now.plus(DELIVERY_RETENTION));
    }

    /// Makes it due again now, for another full window (`asmr webhooks
    /// redeliver`).
    pub fn rearm(&mut self, schedule: &RetrySchedule, now: Timestamp) {
        self.state = DeliveryState::Pending;
        self.next_at = now;
        self.give_up_at = now.plus(schedule.window);
        self.lease_owner = None;
        self.lease_until = None;
        self.expire_at = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(schedule: &RetrySchedule, now: Timestamp) -> Delivery {
        Delivery::new(
            "e1",
            "j1",
            TenantName::default(),
            "https://h.example.com/",
            WebhookEvent::Completed,
            "{}".into(),
            schedule,
            now,
        )
    }

    fn refused(status: u16) -> Answer {
        Answer::Refused {
            status,
            excerpt: "no".into(),
            retry_after: None,
        }
    }

    #[test]
    fn a_refused_delivery_follows_the_schedule_then_fails_after_its_window() {
        let schedule = RetrySchedule::default();
        let t0 = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        let mut d = delivery(&schedule, t0);
        assert!(d.is_due(t0));
        let mut now = t0;
        let mut waits = Vec::new();
        while d.state == DeliveryState::Pending {
            d.take("a", Duration::from_secs(30), now);
            assert!(!d.is_due(now), "leased");
            d.settle(&refused(500), &schedule, now);
            if d.state == DeliveryState::Pending {
                waits.push(d.next_at.as_datetime() - now.as_datetime());
                now = d.next_at;
            }
        }
        assert_eq!(d.state, DeliveryState::Failed);
        let secs: Vec<i64> = waits.iter().map(|w| w.num_seconds()).collect();
        assert_eq!(secs, [5, 300, 1800, 7200, 18000, 36000, 23095]);
        assert_eq!(now, d.give_up_at, "the last try ends the window");
        assert!(d.expire_at.is_some());
        assert_eq!(d.last_status, Some(500));
    }

    #[test]
    fn retry_after_lengthens_a_wait_and_410_stops_and_2xx_delivers() {
        let schedule = RetrySchedule::default();
        let t0 = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        let mut d = delivery(&schedule, t0);
        let asked = Answer::Refused {
            status: 429,
            excerpt: String::new(),
            retry_after: Some(Duration::from_secs(120)),
        };
        d.settle(&asked, &schedule, t0);
        assert_eq!(d.next_at, t0.plus(Duration::from_secs(120)));
        d.settle(&Answer::Gone, &schedule, t0);
        assert_eq!(d.state, DeliveryState::Stopped);
        let mut d = delivery(&schedule, t0);
        d.settle(&Answer::Unreachable("timed out".into()), &schedule, t0);
        assert_eq!((d.state, d.last_status), (DeliveryState::Pending, None));
        d.settle(&Answer::Accepted(204), &schedule, t0);
        assert_eq!(d.state, DeliveryState::Delivered);
        assert_eq!(d.attempts, 2);
        d.rearm(&schedule, t0);
        assert!(d.is_due(t0));
    }
}
