//! Tenants: none can see, change or receive another's jobs and files. Over
//! HTTP with the real intake binary (keys, 401/403/404, a body naming
//! another tenant), over its Pub/Sub push (the `tenant` attribute), with
//! the `asmr` binary, and through the downloader, on both stores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use serde_json::{Value, json};
use shared::deliver::service::router;
use shared::deliver::{Downloader, DownloaderSettings};
use shared::domain::Lease;
use shared::domain::destination::Destination;
use shared::domain::job::NewJob;
use shared::domain::tenant::TenantName;
use shared::domain::values::{JobKind, JobStatus};
use shared::store::JobFilter;
use shared::store::tenants::Scope;
use std::collections::BTreeMap;
use std::time::Duration;
use tests::fake_vertex::FakeOptions;
use tests::http::{Answer, keyed_client, push_envelope};
use tests::stages::{Service, World, emulators, post_raw, serve};

fn tenant(name: &str) -> TenantName {
    name.parse().unwrap()
}

/// A job of `tenant`, made as intake makes it.
async fn job_of(world: &World, tenant_name: &str, prompt: &str) -> String {
    let mut new = NewJob::new(prompt, JobKind::Image);
    new.tenant = tenant(tenant_name);
    let job = world.store.create_job(new).await.unwrap().record;
    job.id().to_string()
}

/// A completed image job of `tenant` whose one output is in the output
/// bucket, under the tenant's prefix as a generator writes it.
async fn completed_job_of(world: &World, tenant_name: &str, data: &[u8]) -> (String, String) {
    let id = job_of(world, tenant_name, "tapping glass").await;
    let job = world.store.job(&id).await.unwrap();
    let name = format!("{}0.png", job.output_folder());
    let meta = world
        .objects
        .write(
            &world.bucket,
            &name,
            Bytes::from(data.to_vec()),
            "image/png",
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    let lease = Lease::new("w", Duration::from_secs(60));
    world.store.claim_job(&id, &lease).await.unwrap();
    world
        .store
        .complete_job(&id, "w", vec![meta.uri()])
        .await
        .unwrap();
    (id, name)
}

/// A bucket notification of object `name`, as GCS pushes it.
async fn notification(world: &World, name: &str, message_id: &str) -> String {
    let meta = world
        .objects
        .metadata(&world.bucket, name)
        .await
        .unwrap()
        .unwrap();
    let resource = json!({
        "kind": "storage#object",
        "bucket": meta.bucket,
        "name": meta.name,
        "generation": meta.generation.to_string(),
        "size": meta.size.to_string(),
        "crc32c": meta.crc32c.to_string(),
    });
    let attributes = BTreeMap::from([
        ("eventType".to_string(), "OBJECT_FINALIZE".to_string()),
        ("bucketId".to_string(), meta.bucket.clone()),
        ("objectId".to_string(), meta.name.clone()),
        ("objectGeneration".to_string(), meta.generation.to_string()),
        ("payloadFormat".to_string(), "JSON_API_V1".to_string()),
    ]);
    String::from_utf8(push_envelope(
        message_id,
        resource.to_string().as_bytes(),
        &attributes,
    ))
    .unwrap()
}

/// Each tenant's listings, counts and walkers hold its own records only;
/// the default tenant's are every record no named tenant holds (its older
/// records carry no tenant field).
async fn listings_and_counts_are_per_tenant(world: World) {
    let a = [
        job_of(&world, "acme", "a1").await,
        job_of(&world, "acme", "a2").await,
    ];
    let b = job_of(&world, "globex", "b1").await;
    let mine = job_of(&world, "default", "d1").await;
    world.api_key("acme").await;
    world.api_key("globex").await;

    let listed = async |tenant_name: Option<&str>| -> Vec<String> {
        let filter = JobFilter::default().with_tenant(tenant_name.map(tenant));
        let mut ids: Vec<String> = world
            .store
            .all_jobs(&filter)
            .await
            .unwrap()
            .iter()
            .map(|job| job.id().to_string())
            .collect();
        ids.sort();
        ids
    };
    let sorted = |mut ids: Vec<String>| {
        ids.sort();
        ids
    };
    assert_eq!(listed(Some("acme")).await, sorted(a.to_vec()));
    assert_eq!(listed(Some("globex")).await, vec![b.clone()]);
    assert_eq!(listed(Some("default")).await, vec![mine.clone()]);
    assert_eq!(listed(None).await.len(), 4);
    // One at a time, as a page of the API would: still only the tenant's.
    let (first, _) = world
        .store
        .first_jobs(
            &JobFilter::default().with_tenant(Some(tenant("default"))),
            1,
        )
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|j| j.id()).collect::<Vec<_>>(),
        [mine.as_str()]
    );
    // More asked for than there is: every page is walked, and only the
    // tenant's one job comes back, with nothing left.
    let (all, more) = world
        .store
        .first_jobs(
            &JobFilter::default().with_tenant(Some(tenant("default"))),
            10,
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert!(!more, "the default tenant has one job: {more}");

    let total = async |scope: Scope| world.store.job_counts_in(&scope).await.unwrap().total();
    assert_eq!(total(Scope::Tenant(tenant("acme"))).await, 2);
    assert_eq!(total(Scope::Tenant(tenant("globex"))).await, 1);
    assert_eq!(total(Scope::default_tenant()).await, 1);
    assert_eq!(total(Scope::Everyone).await, 4);
    let stats = world
        .store
        .stats_in(&Scope::Tenant(tenant("globex")))
        .await
        .unwrap();
    assert_eq!((stats.jobs.pending, stats.jobs.total), (1, 1));
    // Every job keeps its tenant, and a default job carries no field.
    assert_eq!(
        world.store.job(&b).await.unwrap().tenant(),
        &tenant("globex")
    );
    let doc = serde_json::to_value(world.store.job(&mine).await.unwrap()).unwrap();
    assert!(doc.get("tenant").is_none(), "{doc}");
}

/// Each tenant's files go to its own destination with its own manifest;
/// an object under one tenant's prefix never delivers another's job.
async fn each_tenants_files_land_in_its_own_destination(world: World) {
    let root = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    world.api_key("acme").await;
    world.api_key("globex").await;
    let own = elsewhere.path().join("globex-archive");
    world
        .store
        .change_tenant(&tenant("globex"), |t, now| {
            let settings = shared::domain::tenant::TenantSettings {
                destination: Some(Some(own.display().to_string())),
                ..Default::default()
            };
            t.set(&settings, now)
        })
        .await
        .unwrap();
    let downloader = std::sync::Arc::new(Downloader::new(
        world.store.clone(),
        world.objects.clone(),
        DownloaderSettings {
            output_buckets: vec![world.bucket.clone()],
            destination: Destination::Directory(root.path().into()),
            concurrency: 4,
            timeout: Duration::from_secs(60),
            lease: Duration::from_secs(30),
            image_priority: 10,
            video_priority: 0,
        },
    ));
    let url = serve(router(downloader)).await;

    let (mine, my_name) = completed_job_of(&world, "default", b"default bytes").await;
    let (acmes, acme_name) = completed_job_of(&world, "acme", b"acme bytes").await;
    let (globexs, globex_name) = completed_job_of(&world, "globex", b"globex bytes").await;
    assert_eq!(acme_name, format!("tenants/acme/images/{acmes}/0.png"));
    let http = reqwest::Client::new();
    for (n, name) in [&my_name, &acme_name, &globex_name].into_iter().enumerate() {
        let push = notification(&world, name, &format!("e{n}")).await;
        let answer = tests::http::post(&http, &format!("{url}/"), push, &[]).await;
        assert_eq!(
            (answer.status, answer.outcome()),
            (200, "done"),
            "{name}: {}",
            answer.body
        );
    }
    for (who, id) in [("default", &mine), ("acme", &acmes), ("globex", &globexs)] {
        let job = world.store.job(id).await.unwrap();
        assert_eq!(job.status(), JobStatus::Delivered, "{who}: {job:?}");
    }
    let read = |path: std::path::PathBuf| std::fs::read(&path).unwrap_or_default();
    assert_eq!(
        read(root.path().join(format!("images/{mine}/0.png"))),
        b"default bytes"
    );
    assert_eq!(
        read(root.path().join(format!("acme/images/{acmes}/0.png"))),
        b"acme bytes"
    );
    assert_eq!(
        read(own.join(format!("images/{globexs}/0.png"))),
        b"globex bytes"
    );
    assert!(!root.path().join(format!("images/{acmes}")).exists());
    assert!(!root.path().join("globex").exists());
    // One manifest per destination, each with its own tenant's lines.
    let manifest = |dir: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(dir.join("manifest.jsonl"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let lines = manifest(root.path());
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["job_id"], mine.as_str());
    assert!(lines[0].get("tenant").is_none());
    let lines = manifest(&root.path().join("acme"));
    assert_eq!(
        (lines.len(), &lines[0]["job_id"], &lines[0]["tenant"]),
        (1, &json!(acmes), &json!("acme"))
    );
    assert_eq!(lines[0]["path"], format!("images/{acmes}/0.png"));
    let lines = manifest(&own);
    assert_eq!((lines.len(), &lines[0]["tenant"]), (1, &json!("globex")));

    // An object under globex's prefix named after acme's job delivers
    // nothing of acme's.
    let (other, _) = completed_job_of(&world, "acme", b"second acme").await;
    let forged = format!("tenants/globex/images/{other}/0.png");
    world
        .objects
        .write(
            &world.bucket,
            &forged,
            Bytes::from_static(b"forged"),
            "image/png",
            &BTreeMap::new(),
        )
        .await
        .unwrap();
    let push = notification(&world, &forged, "forged").await;
    assert_eq!(post_raw(&url, push).await, 200);
    assert_eq!(
        world.store.job(&other).await.unwrap().status(),
        JobStatus::Completed
    );
    assert!(!own.join(format!("images/{other}")).exists());
    let downloads = world
        .store
        .all_downloads(None, &Scope::Tenant(tenant("globex")))
        .await
        .unwrap();
    assert_eq!(downloads.len(), 1, "only globex's own file");
}

/// Tenants acme, with a daily budget of `micros`, and globex.
async fn acme_and_globex(world: &World, micros: u64) {
    world.api_key("globex").await;
    world.api_key("acme").await;
    world
        .store
        .change_tenant(&tenant("acme"), |t, now| {
            let settings = shared::domain::tenant::TenantSettings {
                daily_budget_micros: Some(Some(micros)),
                ..Default::default()
            };
            t.set(&settings, now)
        })
        .await
        .unwrap();
}

/// A tenant's own daily budget is reserved in the same commit as the
/// deployment's: exact under concurrent claims, a tenant out of budget
/// waits while another goes on, and a settlement frees its room.
async fn a_tenant_out_of_its_budget_waits_while_another_goes_on(world: World) {
    use shared::store::Claim;
    use shared::store::budget::{Billed, Budget, Budgeted, budget_day_of};
    const COST: u64 = 40_000;
    acme_and_globex(&world, 5 * COST).await;
    let cost = |_: &shared::domain::job::Job| Some(COST);
    let budget = Budget {
        limit_micros: Some(1_000 * COST),
        cost: &cost,
        model: None,
    };
    let mut acme = Vec::new();
    for n in 0..10 {
        acme.push(job_of(&world, "acme", &format!("acme {n}")).await);
    }
    let mut globex = Vec::new();
    for n in 0..3 {
        globex.push(job_of(&world, "globex", &format!("globex {n}")).await);
    }
    // Ten claims of acme's at once, room for five.
    let claims = acme.iter().enumerate().map(|(n, id)| {
        let (store, budget) = (world.store.clone(), &budget);
        async move {
            let lease = Lease::new(format!("w{n}"), Duration::from_secs(60));
            store.claim_job_within(id, &lease, budget).await.unwrap()
        }
    });
    let outcomes = futures::future::join_all(claims).await;
    let claimed: Vec<&String> = acme
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, Budgeted::Within(Claim::Claimed(_))))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(claimed.len(), 5, "{outcomes:?}");
    for outcome in &outcomes {
        if let Budgeted::Over(over) = outcome {
            assert_eq!(over.tenant, Some(tenant("acme")));
            assert_eq!(over.limit_micros, 5 * COST);
        }
    }
    // globex is not held back by acme's budget.
    for (n, id) in globex.iter().enumerate() {
        let lease = Lease::new(format!("g{n}"), Duration::from_secs(60));
        let outcome = world
            .store
            .claim_job_within(id, &lease, &budget)
            .await
            .unwrap();
        assert!(
            matches!(outcome, Budgeted::Within(Claim::Claimed(_))),
            "{outcome:?}"
        );
    }
    let today = budget_day_of(shared::time::Timestamp::now());
    let day = |scope: Scope| {
        let (store, today) = (world.store.clone(), today.clone());
        async move { store.budget_day_in(&today, &scope).await.unwrap() }
    };
    assert_eq!(day(Scope::Everyone).await.reserved_micros, 8 * COST);
    assert_eq!(
        day(Scope::Tenant(tenant("acme"))).await.reserved_micros,
        5 * COST
    );
    assert_eq!(
        day(Scope::Tenant(tenant("globex"))).await.reserved_micros,
        3 * COST
    );
    let stats = world
        .store
        .stats_in(&Scope::Tenant(tenant("acme")))
        .await
        .unwrap();
    assert_eq!(stats.waiting.get("budget_exhausted"), Some(&5), "{stats:?}");
    assert_eq!(stats.budget.unwrap().reserved_usd, 0.2);
    let stats = world
        .store
        .stats_in(&Scope::Tenant(tenant("globex")))
        .await
        .unwrap();
    assert_eq!(stats.waiting.get("budget_exhausted"), Some(&0));

    // One of acme's calls is refused (nothing billed): its room comes back,
    // in both documents, and exactly one more acme job fits.
    let settled = world
        .store
        .settle_reservation(claimed[0], None, Billed::Nothing)
        .await
        .unwrap();
    assert!(settled.is_some());
    assert_eq!(
        day(Scope::Tenant(tenant("acme"))).await.reserved_micros,
        4 * COST
    );
    assert_eq!(day(Scope::Everyone).await.reserved_micros, 7 * COST);
    let waiting: Vec<&String> = acme.iter().filter(|id| !claimed.contains(id)).collect();
    let mut more = 0;
    for (n, id) in waiting.iter().enumerate() {
        let lease = Lease::new(format!("again{n}"), Duration::from_secs(60));
        if let Budgeted::Within(Claim::Claimed(_)) = world
            .store
            .claim_job_within(id, &lease, &budget)
            .await
            .unwrap()
        {
            more += 1;
        }
    }
    assert_eq!(more, 1);
    assert_eq!(
        day(Scope::Tenant(tenant("acme"))).await.committed_micros(),
        5 * COST
    );
}

/// Claiming the next job in queue order goes past a tenant out of its own
/// budget, however many of its jobs are ahead: the other tenants' work goes
/// on, and only when nothing else fits does the claim say so.
async fn the_next_claim_goes_past_a_tenant_out_of_budget(world: World) {
    use shared::store::budget::{Budget, Budgeted};
    const COST: u64 = 40_000;
    acme_and_globex(&world, 2 * COST).await;
    let cost = |_: &shared::domain::job::Job| Some(COST);
    let budget = Budget {
        limit_micros: None,
        cost: &cost,
        model: None,
    };
    // More of acme's jobs ahead than one claim reads at a time.
    for n in 0..40 {
        job_of(&world, "acme", &format!("acme {n}")).await;
    }
    let mut globex = Vec::new();
    for n in 0..3 {
        globex.push(job_of(&world, "globex", &format!("globex {n}")).await);
    }
    let mut claimed: Vec<(String, String)> = Vec::new();
    let over = loop {
        let lease = Lease::new(format!("drain{}", claimed.len()), Duration::from_secs(60));
        match world
            .store
            .claim_next_job_within(JobKind::Image, &lease, &budget)
            .await
            .unwrap()
        {
            Budgeted::Within(Some(job)) => {
                claimed.push((job.tenant().to_string(), job.id().to_string()));
            }
            Budgeted::Within(None) => panic!("acme's jobs are still pending: {claimed:?}"),
            Budgeted::Over(over) => break over,
        }
        assert!(claimed.len() <= 5, "{claimed:?}");
    };
    let of = |name: &str| claimed.iter().filter(|(t, _)| t == name).count();
    assert_eq!((of("acme"), of("globex")), (2, 3), "{claimed:?}");
    assert_eq!(over.tenant, Some(tenant("acme")));
    let stats = world
        .store
        .stats_in(&Scope::Tenant(tenant("acme")))
        .await
        .unwrap();
    assert!(
        stats.waiting.get("budget_exhausted").copied().unwrap_or(0) >= 1,
        "{stats:?}"
    );
}

macro_rules! scenarios {
    ($world:ident, $make:path) => {
        mod $world {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn listings_and_counts_are_per_tenant() {
                super::listings_and_counts_are_per_tenant($make(FakeOptions::default()).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_tenant_out_of_its_budget_waits_while_another_goes_on() {
                super::a_tenant_out_of_its_budget_waits_while_another_goes_on(
                    $make(FakeOptions::default()).await,
                )
                .await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn the_next_claim_goes_past_a_tenant_out_of_budget() {
                super::the_next_claim_goes_past_a_tenant_out_of_budget(
                    $make(FakeOptions::default()).await,
                )
                .await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn each_tenants_files_land_in_its_own_destination() {
                super::each_tenants_files_land_in_its_own_destination(
                    $make(FakeOptions::default()).await,
                )
                .await
            }
        }
    };
}

scenarios!(local, tests::stages::local);
scenarios!(emulators_world, tests::stages::emulators);

async fn call(http: &reqwest::Client, method: &str, url: &str, body: Value) -> Answer {
    let request = match method {
        "GET" => http.get(url),
        _ => http.post(url).json(&body),
    };
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    Answer {
        status,
        body: response.json().await.unwrap_or(Value::Null),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn over_http_a_key_sees_and_changes_only_its_tenants_jobs() {
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let acme = keyed_client(&world.api_key("acme").await);
    let globex = keyed_client(&world.api_key("globex").await);
    let frozen_key = world.api_key("frozen").await;
    world
        .store
        .change_tenant(&tenant("frozen"), |t, now| {
            t.set_disabled(true, now);
            Ok(())
        })
        .await
        .unwrap();
    let intake = Service::start("intake", &world, &[]).await;
    let jobs = format!("{}/v1/jobs", intake.url);
    let image = json!({"prompt": "crinkling foil", "kind": "image", "request_id": "shared-id"});

    // Who is who.
    let none = call(&reqwest::Client::new(), "POST", &jobs, image.clone()).await;
    assert_eq!(none.status, 401, "{}", none.body);
    let unknown = call(
        &keyed_client("asmr_not-a-key"),
        "POST",
        &jobs,
        image.clone(),
    )
    .await;
    assert_eq!(unknown.status, 401, "{}", unknown.body);
    let disabled = call(&keyed_client(&frozen_key), "POST", &jobs, image.clone()).await;
    assert_eq!(disabled.status, 403, "{}", disabled.body);
    let mut naming = image.clone();
    naming["tenant"] = json!("acme");
    let named = call(&globex, "POST", &jobs, naming).await;
    assert_eq!(named.status, 403, "{}", named.body);
    assert_eq!(world.store.job_counts().await.unwrap().total(), 0);

    // The same request id in two tenants: two jobs, each its tenant's.
    let made = call(&acme, "POST", &jobs, image.clone()).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let theirs = made.body["jobs"][0]["id"].as_str().unwrap().to_string();
    let mine = call(&globex, "POST", &jobs, image.clone()).await;
    assert_eq!(mine.status, 201, "{}", mine.body);
    let ours = mine.body["jobs"][0]["id"].as_str().unwrap().to_string();
    assert_ne!(theirs, ours);
    assert_eq!(
        world.store.job(&theirs).await.unwrap().tenant(),
        &tenant("acme")
    );

    // Another tenant's job is exactly a job that does not exist.
    let missing = "0123456789abcdef0123456789abcdef";
    let absent = call(&globex, "GET", &format!("{jobs}/{missing}"), Value::Null).await;
    for (method, path) in [
        ("GET", theirs.clone()),
        ("POST", format!("{theirs}:approve")),
        ("POST", format!("{theirs}:reject")),
    ] {
        let answer = call(&globex, method, &format!("{jobs}/{path}"), json!({})).await;
        assert_eq!(answer.status, 404, "{method} {path}: {}", answer.body);
        assert_eq!(
            answer.body["error"]
                .as_str()
                .unwrap()
                .replace(&theirs, "ID"),
            absent.body["error"]
                .as_str()
                .unwrap()
                .replace(missing, "ID"),
        );
    }
    let own = call(&globex, "GET", &format!("{jobs}/{ours}"), Value::Null).await;
    assert_eq!((own.status, &own.body["tenant"]), (200, &json!("globex")));
    let job = world.store.job(&theirs).await.unwrap();
    assert!(job.reviewed().is_none() && job.status() == JobStatus::Pending);

    // Figures: each tenant its own.
    let stats = call(
        &globex,
        "GET",
        &format!("{}/v1/stats", intake.url),
        Value::Null,
    )
    .await;
    assert_eq!(stats.body["jobs"]["total"], 1, "{}", stats.body);
    let stats = call(
        &acme,
        "GET",
        &format!("{}/v1/stats", intake.url),
        Value::Null,
    )
    .await;
    assert_eq!(stats.body["jobs"]["total"], 1, "{}", stats.body);

    // Pub/Sub: the tenant attribute names the tenant; an unknown one is a
    // rejected request; none is the default tenant.
    let push = |id: &str, attributes: &[(&str, &str)]| {
        let attributes: BTreeMap<String, String> = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        push_envelope(id, b"rustling leaves", &attributes)
    };
    let http = reqwest::Client::new();
    let root = format!("{}/", intake.url);
    for (id, attributes, outcome) in [
        ("p1", vec![("kind", "image"), ("tenant", "globex")], "done"),
        (
            "p2",
            vec![("kind", "image"), ("tenant", "nobody")],
            "poison",
        ),
        (
            "p3",
            vec![("kind", "image"), ("tenant", "frozen")],
            "poison",
        ),
        ("p4", vec![("kind", "image")], "done"),
    ] {
        let answer = tests::http::post(&http, &root, push(id, &attributes), &[]).await;
        assert_eq!(
            (answer.status, answer.outcome()),
            (200, outcome),
            "{id}: {}",
            answer.body
        );
    }
    let total = async |name: &str| {
        world
            .store
            .job_counts_in(&Scope::Tenant(tenant(name)))
            .await
            .unwrap()
            .total()
    };
    assert_eq!(
        (
            total("acme").await,
            total("globex").await,
            total("default").await
        ),
        (1, 2, 1)
    );
    let rejected = world
        .store
        .first_rejected(&Scope::Everyone, 10)
        .await
        .unwrap()
        .0;
    let reasons: Vec<&str> = rejected.iter().map(|r| r.reason.as_str()).collect();
    assert_eq!(rejected.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("\"nobody\" does not exist")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("frozen is disabled")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_acts_for_its_tenant_and_shows_every_tenant_only_when_asked() {
    let world = emulators(FakeOptions::default()).await;
    let _topics = world.topics().await;
    let added = world.operator(&[
        "tenant", "add", "acme", "--budget", "12.50", "--weight", "3",
    ]);
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let key = String::from_utf8(added.stdout).unwrap().trim().to_string();
    assert!(key.starts_with("asmr_"), "{key}");
    let stored = world.store.tenant(&tenant("acme")).await.unwrap().unwrap();
    assert_eq!(
        (stored.daily_budget_micros(), stored.weight()),
        (Some(12_500_000), 3)
    );
    assert!(!serde_json::to_string(&stored).unwrap().contains(&key));
    let again = world.operator(&["tenant", "add", "acme"]);
    assert!(!again.status.success());

    let add = world.operator(&[
        "--tenant", "acme", "add", "--prompt", "rain", "--kind", "image",
    ]);
    assert!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let theirs = String::from_utf8(add.stdout).unwrap().trim().to_string();
    assert_eq!(
        world.store.job(&theirs).await.unwrap().tenant(),
        &tenant("acme")
    );
    let mine = job_of(&world, "default", "wind").await;

    // Acting for the default tenant, acme's job is not there.
    for args in [
        vec!["show", theirs.as_str()],
        vec!["cancel", theirs.as_str()],
        vec!["approve", theirs.as_str()],
    ] {
        let output = world.operator(&args);
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("not found"), "{args:?}: {stderr}");
    }
    assert_eq!(
        world.store.job(&theirs).await.unwrap().status(),
        JobStatus::Pending
    );
    let listed = |args: &[&str]| {
        let output = world.operator(args);
        assert!(output.status.success(), "{args:?}");
        let jobs: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
        let mut ids: Vec<String> = jobs
            .iter()
            .map(|j| j["id"].as_str().unwrap().into())
            .collect();
        ids.sort();
        ids
    };
    assert_eq!(listed(&["list", "--json"]), vec![mine.clone()]);
    assert_eq!(
        listed(&["--tenant", "acme", "list", "--json"]),
        vec![theirs.clone()]
    );
    let mut both = vec![mine.clone(), theirs.clone()];
    both.sort();
    assert_eq!(listed(&["list", "--json", "--all-tenants"]), both);
    let stats = world.operator(&["--tenant", "acme", "stats", "--json"]);
    let stats: Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert_eq!(stats["jobs"]["total"], 1, "{stats}");

    // A disabled tenant adds nothing; an unknown one is named.
    let disable = world.operator(&["tenant", "disable", "acme"]);
    assert!(disable.status.success());
    let refused = world.operator(&[
        "--tenant", "acme", "add", "--prompt", "x", "--kind", "image",
    ]);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("acme is disabled"));
    let unknown = world.operator(&[
        "--tenant", "nobody", "add", "--prompt", "x", "--kind", "image",
    ]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("nobody does not exist"));
    let listing = world.operator(&["tenant", "list"]);
    let text = String::from_utf8_lossy(&listing.stdout);
    assert!(
        text.contains("acme") && text.contains("disabled") && text.contains("$12.50"),
        "{text}"
    );
}

/// Every file below `root`, as text.
fn walk(root: &std::path::Path) -> Vec<String> {
    tests::harness::files_below(root)
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// `asmr run --tenant`: the local run's jobs are the tenant's, its files go
/// under the tenant's folder with their own manifest, and the same prompts
/// run for another tenant are that tenant's own jobs.
#[tokio::test]
async fn a_local_run_acts_for_its_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let (state, out) = (dir.path().join("state"), dir.path().join("out"));
    let prompts = dir.path().join("prompts.txt");
    std::fs::write(&prompts, "rain on a tin roof\nslow page turns\n").unwrap();
    let asmr = |args: &[&str]| tests::harness::asmr_local(&state, args);

    let run = |tenant: &str| {
        let report: Value = serde_json::from_str(&asmr(&[
            "run",
            prompts.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--tenant",
            tenant,
            "--json",
        ]))
        .unwrap();
        assert_eq!(report["statuses"], json!({"delivered": 2}), "{report}");
    };
    run("acme");
    let files: Vec<String> = walk(&out)
        .into_iter()
        .filter(|p| p.ends_with(".png"))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|p| p.contains("/acme/")), "{files:?}");
    let manifests: Vec<String> = walk(&out)
        .into_iter()
        .filter(|p| p.ends_with("manifest.jsonl"))
        .collect();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    let lines = std::fs::read_to_string(&manifests[0]).unwrap();
    assert_eq!(lines.matches(r#""tenant":"acme""#).count(), 2, "{lines}");

    let listed = |tenant: &str| -> usize {
        let jobs: Value =
            serde_json::from_str(&asmr(&["list", "--tenant", tenant, "--json"])).unwrap();
        jobs.as_array().unwrap().len()
    };
    assert_eq!((listed("acme"), listed("default")), (2, 0));
    // The same prompts for the default tenant: its own jobs, not acme's.
    run("default");
    assert_eq!((listed("acme"), listed("default")), (2, 2));
}
