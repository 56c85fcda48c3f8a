//! Start-up and footprint of each service: exec to the first successful
//! `/healthz`, resident memory once idle, and the size of the stripped
//! release binary.

use crate::common::{self, Context, SERVICES, median};
use crate::table::{Report, mib};
use anyhow::{Context as _, Result};
use std::process::Command;
use std::time::Duration;

const GROUP: &str = "Start-up";

/// How long a service sits idle before its memory is read.
const IDLE: Duration = Duration::from_secs(2);

/// Starts each service `runs` times.
pub async fn run(ctx: &Context, runs: usize, report: &mut Report) -> Result<()> {
    let prefix = common::unique_prefix();
    let bucket = common::unique_bucket();
    let destination = ctx.dir("startup-destination")?;
    for name in SERVICES {
        let mut env = ctx.stage_env(&prefix, &bucket);
        if name == "downloader" {
            env.push((
                "DOWNLOAD_DESTINATION".into(),
                destination.display().to_string(),
            ));
        }
        let mut startups = Vec::new();
        let mut idle_kib = Vec::new();
        for _ in 0..runs {
            let mut service = ctx.spawn(name, &env)?;
            startups.push(service.healthy(&ctx.http).await?.as_secs_f64() * 1000.0);
            tokio::time::sleep(IDLE).await;
            idle_kib.push(service.memory_kib("VmRSS")? as f64);
        }
        let startup_ms = median(&startups);
        let idle = median(&idle_kib) as u64;
        let (bytes, stripped) = stripped_size(ctx, name)?;
        common::detail(&format!(
            "{name}: first /healthz after {startup_ms:.0} ms (median of {runs}), idle RSS {}, {:.1} MiB",
            mib(idle),
            bytes as f64 / 1_048_576.0
        ));
        report.figure(
            GROUP,
            format!("{name}: exec to first /healthz"),
            format!(
                "{startup_ms:.0} ms (median of {runs}; {:.0}–{:.0} ms)",
                startups.iter().copied().fold(f64::INFINITY, f64::min),
                startups.iter().copied().fold(0.0, f64::max)
            ),
        );
        report.figure(GROUP, format!("{name}: idle RSS"), mib(idle));
        report.figure(
            GROUP,
            format!(
                "{name}: release binary{}",
                if stripped { ", stripped" } else { "" }
            ),
            format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
        );
    }
    report.note(format!(
        "Start-up: each service binary started {runs} times with its documented environment on the emulators (the store and object clients are built before it listens); the time runs from just before the exec to the first 2xx of `GET /healthz`, polled every 2 ms. Idle RSS is `VmRSS` after {} s with no work. Size: a copy of the release binary after `strip`.",
        IDLE.as_secs()
    ));
    Ok(())
}

/// The size of a stripped copy of a release binary, and whether `strip`
/// ran (without it, the size as built: the release profile strips symbols).
fn stripped_size(ctx: &Context, name: &str) -> Result<(u64, bool)> {
    let copy = ctx.dir("strip")?.join(name);
    std::fs::copy(ctx.binary(name)?, &copy).with_context(|| format!("copying {name}"))?;
    let stripped = Command::new("strip")
        .arg(&copy)
        .status()
        .is_ok_and(|s| s.success());
    let bytes = std::fs::metadata(&copy)?.len();
    std::fs::remove_file(&copy)?;
    Ok((bytes, stripped))
}
