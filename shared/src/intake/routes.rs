//! The API's routes, in one table that `api/openapi.json` documents
//! exactly (a test compares them), and the router built from it.

use super::{Intake, actions, api};
use axum::Router;
use axum::routing::{get, post};
use std::sync::Arc;

/// A path of the API and what it serves, as the OpenAPI document spells
/// them.
pub struct Route {
    /// The path template.
    pub path: &'static str,
    /// Its methods.
    pub methods: &'static [&'static str],
    /// Whether `POST {path}:ACTION` serves each of [`actions::ACTIONS`].
    pub actions: bool,
}

impl Route {
    /// Every operation of the route, as (method, path).
    pub fn operations(&self) -> Vec<(&'static str, String)> {
        let mut all: Vec<(&'static str, String)> = self
            .methods
            .iter()
            .map(|method| (*method, self.path.to_string()))
            .collect();
        if self.actions {
            all.extend(
                actions::ACTIONS
                    .iter()
                    .map(|action| ("POST", format!("{}:{action}", self.path))),
            );
        }
        all
    }
}

/// Every route of the API; `api/openapi.json` documents exactly these
/// (a test compares them).
pub const ROUTES: [Route; 4] = [
    Route {
        path: "/v1/jobs",
        methods: &["GET", "POST"],
        actions: false,
    },
    Route {
        path: "/v1/jobs/{id}",
        methods: &["GET"],
        actions: true,
    },
    Route {
        path: "/v1/stats",
        methods: &["GET"],
        actions: false,
    },
    Route {
        path: "/openapi.json",
        methods: &["GET"],
        actions: false,
    },
];

/// The API's routes: create, list, read and act on jobs, the figures, and
/// the document that describes them all.
pub(super) fn routes() -> Router<Arc<Intake>> {
    let [jobs, job, figures, document] = &ROUTES;
    Router::new()
        .route(
            jobs.path,
            post(api::create_jobs).get(actions::list_tenant_jobs),
        )
        // The router matches whole segments only, so `{id}:approve` is one
        // parameter that the handler splits.
        .route(job.path, get(api::get_job).post(actions::job_action))
        .route(figures.path, get(api::stats))
        .route(document.path, get(api::openapi))
}
