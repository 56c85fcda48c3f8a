//! `asmr doctor`: a deployed project checked against what terraform
//! deploys (`shared::doctor`), one line per check on stdout (or a JSON
//! array with --json), and exit code 1 when any check fails.

use crate::args::DoctorArgs;
use crate::out;
use anyhow::Result;
use shared::config::StoreArgs;
use shared::doctor::Doctor;
use shared::doctor::expected::Names;
use shared::vertex::RetryPolicy;

/// Runs every check of the deployment in --project named with --prefix.
pub async fn run(store: &StoreArgs, args: DoctorArgs) -> Result<()> {
    let project = store.project()?;
    let prefix = args.prefix.unwrap_or_else(|| store.topic_prefix.clone());
    let vertex = args
        .vertex
        .config(project.clone(), RetryPolicy::default(), args.timeout);
    let endpoints = args
        .endpoints
        .endpoints(&vertex, store.pubsub_emulator_host.as_deref());
    out::note(format_args!(
        "asmr doctor: project {project}, prefix {prefix:?}, region {}, models in {}",
        args.region, vertex.location
    ));
    let checks = shared::doctor::run(Doctor {
        names: Names {
            project,
            prefix,
            database: store.database.clone(),
        },
        region: args.region,
        location: vertex.location.clone(),
        models: [vertex.image_model.clone(), vertex.video_model.clone()],
        endpoints,
        token: vertex.access_token.clone(),
        timeout: args.timeout,
    })
    .await;
    if args.json {
        out::json_pretty(&checks)?;
    } else {
        for check in &checks {
            out::line(check)?;
        }
    }
    let failed = checks.iter().filter(|c| !c.ok).count();
    if failed > 0 {
        anyhow::bail!("{failed} of {} checks failed", checks.len());
    }
    Ok(())
}
