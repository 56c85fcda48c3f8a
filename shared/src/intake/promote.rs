//! Auto-promotion: the intake service reacts to job events by making a
//! video of an image, without an operator (`AUTO_PROMOTE`).
//!
//! Job events reach it as Pub/Sub pushes on `POST /v1/job-events`. With
//! `AUTO_PROMOTE=approved`, an approval makes the video; with `all`, so does
//! the delivery of an image whose job was created with `"chain": "video"`.
//! Promotion is idempotent (one video per image however often the event
//! comes), and the new video job is published to its topic like any other.
//!
//! An event only says which image to look at. Whether a video is paid for
//! is decided on the image as stored, in the commit that creates the video
//! ([`Grounds`]): an approval event that is redelivered after the image was
//! rejected, or one that was never true, makes nothing.

use crate::ack::Handled;
use crate::bus::{Bus, Topics};
use crate::config::Adapters;
use crate::domain::TransitionError;
use crate::domain::review::{Grounds, PromoteOptions};
use crate::domain::values::{Chain, Verdict};
use crate::domain::values::{JobKind, JobStatus};
use crate::error::Error;
use crate::job_events::JobEvent;
use crate::server;
use crate::store::Store;
use axum::body::Bytes;
use axum::http::HeaderMap;
use clap::ValueEnum;
use std::sync::Arc;

/// Which job events make a video of an image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum AutoPromote {
    /// None: videos are made by `asmr promote` only.
    #[default]
    Off,
    /// An approval (`asmr approve`, `POST /v1/jobs/{id}:approve`).
    Approved,
    /// An approval, and the delivery of an image created with
    /// `"chain": "video"`.
    All,
}

impl AutoPromote {
    /// Whether `event` is worth a look: a filter on what the event says,
    /// so that most events cost no read. It decides nothing; the stored
    /// image must give [`AutoPromote::grounds`].
    pub fn wants(self, event: &JobEvent) -> bool {
        let approved = event.verdict == Some(Verdict::Approved);
        let chained = event.status == JobStatus::Delivered && event.chain == Some(Chain::Video);
        event.kind == JobKind::Image
            && match self {
                AutoPromote::Off => false,
                AutoPromote::Approved => approved,
                AutoPromote::All => approved || chained,
            }
    }

    /// What the stored image must show for this mode to make its video.
    pub fn grounds(self) -> Option<Grounds> {
        match self {
            AutoPromote::Off => None,
            AutoPromote::Approved => Some(Grounds::Approved),
            AutoPromote::All => Some(Grounds::ApprovedOrChained),
        }
    }
}

/// The handler of job events: makes the videos `mode` asks for.
pub struct Promoter {
    /// Where the jobs are.
    pub store: Store,
    /// Where new video jobs are announced.
    pub bus: Arc<dyn Bus>,
    /// The topic names.
    pub topics: Topics,
    /// Which events make a video.
    pub mode: AutoPromote,
}

impl Promoter {
    /// A promoter over `adapters` (its store, its bus and topics) making
    /// the videos `mode` asks for.
    pub fn new(adapters: &Adapters, mode: AutoPromote) -> Self {
        Self {
            store: adapters.store.clone(),
            bus: adapters.bus.clone(),
            topics: adapters.topics.clone(),
            mode,
        }
    }
}

impl server::Push for Promoter {
    type Message = JobEvent;

    fn decode(&self, _headers: &HeaderMap, body: &Bytes) -> Result<JobEvent, String> {
        JobEvent::from_push(body)
    }

    fn span(&self, event: &JobEvent) -> tracing::Span {
        event.span()
    }

    async fn handle(&self, event: JobEvent) -> Handled {
        let grounds = match self.mode.grounds() {
            Some(grounds) if self.mode.wants(&event) => grounds,
            _ => {
                return Handled::Ignored(format!(
                    "{} event of {} job {} makes no video (AUTO_PROMOTE={:?})",
                    event.status, event.kind, event.job_id, self.mode
                ));
            }
        };
        let options = PromoteOptions {
            grounds,
            ..PromoteOptions::default()
        };
        let promoted = match self.store.promote(&event.job_id, &options).await {
            Ok(promoted) => promoted,
            // The event claimed what the stored image does not show: stale
            // (a verdict changed since) or untrue. Nothing is made.
            Err(Error::Transition {
                reason: TransitionError::NoGrounds(why),
                ..
            }) => {
                tracing::warn!(image = %event.job_id, event = "auto_promote_refused", reason = %why, "the stored image does not warrant a video");
                return Handled::Ignored(why);
            }
            Err(e @ (Error::Transition { .. } | Error::Invalid(_) | Error::NotFound { .. })) => {
                return Handled::Poison(e.to_string());
            }
            Err(e) => return Handled::store_trouble(&e),
        };
        let video = &promoted.video;
        // A video made by an earlier delivery of this event whose publish
        // failed is still pending: announce it again. A second job message
        // is harmless, the generator claims the job once.
        if promoted.created || video.status() == JobStatus::Pending {
            let published =
                crate::bus::publish_job(self.bus.as_ref(), &self.topics, video, "auto-promote");
            if let Err(e) = published.await {
                return Handled::Retry {
                    rate_limited: false,
                    reason: format!("video job {} is made but not queued: {e}", video.id()),
                };
            }
        }
        if !promoted.created {
            return Handled::Duplicate(format!(
                "image {} has its video already: job {}",
                event.job_id,
                video.id()
            ));
        }
        tracing::info!(image = %event.job_id, video = %video.id(), event = "auto_promoted", "video job made from the image");
        Handled::Done(format!(
            "video job {} made from image {}",
            video.id(),
            event.job_id
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::memory::{MemoryBus, Message};
    use crate::config::Adapters;
    use crate::domain::Lease;
    use crate::domain::job::NewJob;
    use crate::intake::Intake;
    use crate::intake::service::router;
    use crate::job_events::BusJobEvents;
    use crate::store::embedded::EmbeddedBackend;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use base64::Engine;
    use std::time::Duration;
    use tower::ServiceExt;

    struct World {
        app: axum::Router,
        /// The default tenant's API key.
        key: String,
        store: Store,
        bus: Arc<MemoryBus>,
        topics: Topics,
    }

    /// Intake over an in-memory store whose job events go to an in-memory
    /// bus, as the Firestore deployment's go to Pub/Sub.
    async fn world(mode: AutoPromote) -> World {
        let bus = Arc::new(MemoryBus::new());
        let topics = Topics::default();
        for topic in topics.all() {
            bus.ensure_topic(&topic).await.unwrap();
        }
        let store = Store::new(Arc::new(EmbeddedBackend::in_memory().unwrap())).with_events(
            Arc::new(BusJobEvents::new(bus.clone(), topics.job_events())),
        );
        let adapters = Adapters {
            store: store.clone(),
            bus: bus.clone(),
            topics: topics.clone(),
        };
        let intake = Intake::new(adapters, true, mode);
        World {
            app: router(Arc::new(intake)),
            key: crate::intake::testing::key_of(&store, "default").await,
            store,
            bus,
            topics,
        }
    }

    impl World {
        async fn post(&self, path: &str, body: Vec<u8>) -> StatusCode {
            let request = Request::post(path)
                .header(crate::intake::api::API_KEY, &self.key)
                .body(Body::from(body))
                .unwrap();
            self.app.clone().oneshot(request).await.unwrap().status()
        }

        /// A completed image job, made as a generator would.
        async fn completed_image(&self, prompt: &str, chain: Option<Chain>) -> String {
            let mut new = NewJob::new(prompt, JobKind::Image);
            new.chain = chain;
            let id = self
                .store
                .create_job(new)
                .await
                .unwrap()
                .record
                .id()
                .to_string();
            let lease = Lease::new("w", Duration::from_secs(60));
            self.store.claim_job(&id, &lease).await.unwrap();
            let output = format!("gs://out/images/{id}/0.png");
            self.store
                .complete_job(&id, "w", vec![output.parse().unwrap()])
                .await
                .unwrap();
            id
        }

        /// A delivered image job, made as a generator and the downloader
        /// would.
        async fn delivered_image(&self, prompt: &str, chain: Option<Chain>) -> String {
            let id = self.completed_image(prompt, chain).await;
            let delivery = crate::domain::values::DeliveredOutput {
                source: format!("gs://out/images/{id}/0.png").parse().unwrap(),
                destination: format!("/archive/images/{id}/0.png").parse().unwrap(),
            };
            self.store.record_delivery(&id, delivery).await.unwrap();
            id
        }

        /// Every job event published so far, pushed to intake as Pub/Sub
        /// would push them; the statuses intake answered.
        async fn push_events(&self) -> Vec<StatusCode> {
            self.store.flush_events().await;
            let mut answers = Vec::new();
            for message in self.bus.published(&self.topics.job_events()) {
                answers.push(self.post("/v1/job-events", envelope(&message)).await);
            }
            answers
        }

        fn videos_queued(&self) -> Vec<String> {
            self.bus.job_ids(&self.topics.video_jobs())
        }
    }

    fn envelope(message: &Message) -> Vec<u8> {
        serde_json::json!({
            "message": {
                "data": base64::engine::general_purpose::STANDARD.encode(&message.data),
                "attributes": message.attributes,
                "messageId": message.id,
            },
            "subscription": "projects/p/subscriptions/asmr-job-events-intake",
        })
        .to_string()
        .into_bytes()
    }

    #[tokio::test]
    async fn an_approval_makes_one_video_of_the_image_however_often_its_event_comes() {
        let w = world(AutoPromote::Approved).await;
        let image = w.delivered_image("soap cutting", None).await;
        let approve = format!("/v1/jobs/{image}:approve");
        assert_eq!(w.post(&approve, Vec::new()).await, StatusCode::OK);

        let answers = w.push_events().await;
        assert!(answers.iter().all(|s| s.is_success()), "{answers:?}");
        let image = w.store.job(&image).await.unwrap();
        let [video] = image.children() else {
            panic!("one video, not {:?}", image.children());
        };
        let video = w.store.job(video).await.unwrap();
        assert_eq!(video.kind(), JobKind::Video);
        assert_eq!(video.parent(), Some(image.id()));
        assert_eq!(
            video.first_frame().map(|f| f.gcs_uri.as_str()),
            Some(image.outputs()[0].to_string().as_str())
        );
        assert_eq!(w.videos_queued(), [video.id()]);

        // Pub/Sub delivers at least once: the same events again make no
        // second video (while the video waits, its message is sent again,
        // which the generator's claim makes harmless).
        let again = w.push_events().await;
        assert!(again.iter().all(|s| s.is_success()), "{again:?}");
        assert_eq!(w.store.job(image.id()).await.unwrap().children().len(), 1);
        let queued = w.videos_queued();
        assert!(queued.iter().all(|id| id == video.id()), "{queued:?}");
    }

    /// The push of `event` as Pub/Sub would send it, whoever forged it.
    fn event_envelope(event: &JobEvent) -> Vec<u8> {
        envelope(&Message {
            id: event.event_id.clone(),
            topic: "asmr-job-events".into(),
            data: bytes::Bytes::from(serde_json::to_vec(event).unwrap()),
            attributes: event.attributes(),
        })
    }

    #[tokio::test]
    async fn an_approval_redelivered_after_a_rejection_makes_no_video() {
        let w = world(AutoPromote::Approved).await;
        let image = w.delivered_image("soap cutting", None).await;
        w.store
            .review_job(&image, Verdict::Approved, None)
            .await
            .unwrap();
        w.store.flush_events().await;
        let approval = w.bus.published(&w.topics.job_events()).last().cloned();
        let approval = approval.expect("the approval raised an event");
        w.store
            .review_job(&image, Verdict::Rejected, Some("too dark".into()))
            .await
            .unwrap();

        // The approval comes (again) only now, after the rejection.
        let status = w.post("/v1/job-events", envelope(&approval)).await;
        assert_eq!(status, StatusCode::OK, "acknowledged, not redelivered");
        assert!(w.store.job(&image).await.unwrap().children().is_empty());
        assert!(w.videos_queued().is_empty());
        assert_eq!(w.store.job_counts().await.unwrap().total(), 1);
    }

    #[tokio::test]
    async fn a_forged_event_makes_no_video_of_an_image_the_store_does_not_warrant() {
        for mode in [AutoPromote::Approved, AutoPromote::All] {
            let w = world(mode).await;
            // Never reviewed, created without a chain, delivered.
            let image = w.delivered_image("wet sand", None).await;
            let job = w.store.job(&image).await.unwrap();
            let mut approval = JobEvent::of(&job);
            approval.verdict = Some(Verdict::Approved);
            let mut chained = JobEvent::of(&job);
            chained.chain = Some(Chain::Video);
            for forged in [approval, chained] {
                let status = w.post("/v1/job-events", event_envelope(&forged)).await;
                assert_eq!(status, StatusCode::OK, "{mode:?}");
            }
            assert!(
                w.store.job(&image).await.unwrap().children().is_empty(),
                "{mode:?}"
            );
            assert!(w.videos_queued().is_empty(), "{mode:?}");
        }
    }

    #[tokio::test]
    async fn a_stored_chain_is_grounds_only_once_its_image_is_delivered() {
        let w = world(AutoPromote::All).await;
        let id = w.completed_image("rain on glass", Some(Chain::Video)).await;

        // Completed, not delivered: an event that says delivered is not
        // believed.
        let mut early = JobEvent::of(&w.store.job(&id).await.unwrap());
        early.status = JobStatus::Delivered;
        w.post("/v1/job-events", event_envelope(&early)).await;
        assert!(w.store.job(&id).await.unwrap().children().is_empty());
    }

    #[tokio::test]
    async fn approved_mode_leaves_chained_deliveries_and_all_mode_promotes_them() {
        for (mode, videos) in [(AutoPromote::Approved, 0), (AutoPromote::All, 1)] {
            let w = world(mode).await;
            w.delivered_image("rain on glass", Some(Chain::Video)).await;
            w.delivered_image("no chain here", None).await;
            w.push_events().await;
            assert_eq!(w.videos_queued().len(), videos, "{mode:?}");
        }
    }

    #[tokio::test]
    async fn with_auto_promotion_off_no_event_makes_a_video() {
        let w = world(AutoPromote::Off).await;
        let image = w.delivered_image("sand", Some(Chain::Video)).await;
        w.post(&format!("/v1/jobs/{image}:approve"), Vec::new())
            .await;
        let answers = w.push_events().await;
        assert!(!answers.is_empty() && answers.iter().all(|s| s.is_success()));
        assert!(w.videos_queued().is_empty());
        assert!(w.store.job(&image).await.unwrap().children().is_empty());
    }

    #[tokio::test]
    async fn a_video_that_could_not_be_queued_is_asked_for_again_and_queued_on_redelivery() {
        let w = world(AutoPromote::Approved).await;
        let image = w.delivered_image("wet sand", None).await;
        w.post(&format!("/v1/jobs/{image}:approve"), Vec::new())
            .await;
        w.store.flush_events().await;
        let events = w.bus.published(&w.topics.job_events());
        let approval = events.last().unwrap();

        // The video topic is gone: the video is made, its message is not sent,
        // and Pub/Sub is asked to deliver the event again.
        let promoter = Promoter {
            store: w.store.clone(),
            bus: Arc::new(MemoryBus::new()),
            topics: w.topics.clone(),
            mode: AutoPromote::Approved,
        };
        let event: JobEvent = serde_json::from_slice(&approval.data).unwrap();
        let handled = server::Push::handle(&promoter, event).await;
        assert!(matches!(handled, Handled::Retry { .. }), "{handled:?}");
        let children = w.store.job(&image).await.unwrap().children().to_vec();
        let [video] = children.as_slice() else {
            panic!("the video is made once: {children:?}");
        };
        let video = video.clone();
        assert!(w.videos_queued().is_empty());

        // The redelivery, with the bus back: the same video, now queued.
        assert_eq!(
            w.post("/v1/job-events", envelope(approval)).await,
            StatusCode::OK
        );
        assert_eq!(
            w.store.job(&image).await.unwrap().children(),
            std::slice::from_ref(&video)
        );
        assert_eq!(w.videos_queued(), [video]);
    }

    #[tokio::test]
    async fn a_push_that_is_not_a_job_event_is_acknowledged_as_poison() {
        let w = world(AutoPromote::All).await;
        let message = Message {
            id: "7".into(),
            topic: "asmr-job-events".into(),
            data: bytes::Bytes::from_static(b"{\"not\": \"an event\"}"),
            attributes: Default::default(),
        };
        // Refused at decoding, so it is poison (acknowledged), not a job
        // event that merely asks for nothing.
        let promoter = Promoter {
            store: w.store.clone(),
            bus: w.bus.clone(),
            topics: w.topics.clone(),
            mode: AutoPromote::All,
        };
        let body = Bytes::from(envelope(&message));
        let refused = server::Push::decode(&promoter, &HeaderMap::new(), &body).unwrap_err();
        assert!(refused.contains("is not a job event"), "{refused}");
        assert_eq!(
            w.post("/v1/job-events", envelope(&message)).await,
            StatusCode::OK
        );
        assert!(w.videos_queued().is_empty());
    }
}
