//! The terraform in `terraform/` checked against the code, without reaching
//! Google: every stage binary is deployed as a Cloud Run service or job under
//! its own service account, nothing is granted to the public, every push
//! subscription is authenticated, retried and dead-lettered, every variable a
//! binary reads from the environment is set for it (read from the binary's
//! own `--help`), the topics are the code's, and every Firestore index the
//! store's queries need (`shared::store::indexes`) is declared.
//!
//! The files are parsed with hcl-rs; `tests/run` builds the binaries first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use hcl::{Block, Body, Expression, ObjectKey};
use shared::store::backend::{Collection, Dir};
use shared::store::indexes::INDEXES;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

/// Every deployable binary (the `asmr` CLI is not deployed).
const STAGE_BINARIES: [&str; 6] = [
    "intake",
    "image-generator",
    "video-generator",
    "video-poller",
    "downloader",
    "janitor",
];

/// Variables only tests and local runs set; terraform must not.
const LOCAL_ONLY: [&str; 8] = [
    "FIRESTORE_EMULATOR_HOST",
    "PUBSUB_EMULATOR_HOST",
    "STORAGE_EMULATOR_HOST",
    "VERTEX_BASE_URL",
    "VERTEX_ACCESS_TOKEN",
    "ASMR_STATE_DIR",
    "ASMR_OBJECTS_DIR",
    // Cloud Run sets it.
    "PORT",
];

/// Variables a binary reads that terraform may leave unset, with why the
/// binary's default is right in the cloud.
const OPTIONAL: [(&str, &str); 0] = [];

/// Every top-level block of terraform/*.tf, and the merged `locals`.
struct Terraform {
    blocks: Vec<Block>,
    locals: BTreeMap<String, Expression>,
}

impl Terraform {
    fn load() -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../terraform");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "tf"))
            .collect();
        files.sort();
        assert!(!files.is_empty(), "no .tf file in {}", dir.display());
        let mut blocks = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).unwrap();
            let body: Body =
                hcl::parse(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()));
            blocks.extend(body.blocks().cloned());
        }
        let mut locals = BTreeMap::new();
        for block in blocks.iter().filter(|b| b.identifier() == "locals") {
            for attribute in block.body().attributes() {
                let previous = locals.insert(attribute.key.to_string(), attribute.expr.clone());
                assert!(
                    previous.is_none(),
                    "local.{} is defined twice",
                    attribute.key
                );
            }
        }
        Self { blocks, locals }
    }

    /// `resource "KIND" "NAME"` blocks of one kind, by name.
    fn resources(&self, kind: &str) -> BTreeMap<String, &Body> {
        self.blocks
            .iter()
            .filter(|b| b.identifier() == "resource" && label(b, 0) == kind)
            .map(|b| (label(b, 1), b.body()))
            .collect()
    }

    fn resource(&self, kind: &str, name: &str) -> &Body {
        self.resources(kind)
            .remove(name)
            .unwrap_or_else(|| panic!("no resource {kind}.{name}"))
    }

    fn local(&self, name: &str) -> &Expression {
        self.locals
            .get(name)
            .unwrap_or_else(|| panic!("no local.{name}"))
    }

    /// The keys an expression of `local`s yields as a map: object literals,
    /// `merge(...)` of them, `local.x` references, and both branches of a
    /// conditional (a key set in some configuration counts as set).
    fn keys(&self, expr: &Expression) -> BTreeSet<String> {
        match expr {
            Expression::Object(object) => object.keys().map(key).collect(),
            Expression::Parenthesis(inner) => self.keys(inner),
            Expression::Conditional(c) => {
                let mut keys = self.keys(&c.true_expr);
                keys.extend(self.keys(&c.false_expr));
                keys
            }
            Expression::FuncCall(call) if call.name.name.as_str() == "merge" => {
                call.args.iter().flat_map(|arg| self.keys(arg)).collect()
            }
            Expression::Traversal(t) => match (&t.expr, t.operators.as_slice()) {
                (Expression::Variable(v), [hcl::TraversalOperator::GetAttr(name)])
                    if v.as_str() == "local" =>
                {
                    self.keys(self.local(name.as_str()))
                }
                _ => panic!("cannot read the keys of {expr}"),
            },
            _ => panic!("cannot read the keys of {expr}"),
        }
    }
}

fn label(block: &Block, i: usize) -> String {
    match block.labels().get(i) {
        Some(hcl::BlockLabel::String(s)) => s.clone(),
        Some(hcl::BlockLabel::Identifier(id)) => id.to_string(),
        None => String::new(),
    }
}

fn key(key: &ObjectKey) -> String {
    match key {
        ObjectKey::Identifier(id) => id.to_string(),
        ObjectKey::Expression(Expression::String(s)) => s.clone(),
        other => panic!("object key {other:?} is not a literal"),
    }
}

fn entries(expr: &Expression) -> Vec<(String, &Expression)> {
    match expr {
        Expression::Object(object) => object.iter().map(|(k, v)| (key(k), v)).collect(),
        other => panic!("expected an object literal, found {other}"),
    }
}

fn field<'a>(expr: &'a Expression, name: &str) -> &'a Expression {
    entries(expr)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("{expr} has no {name}"))
}

fn string(expr: &Expression) -> String {
    match expr {
        Expression::String(s) => s.clone(),
        other => panic!("expected a string literal, found {other}"),
    }
}

fn strings(expr: &Expression) -> Vec<String> {
    match expr {
        Expression::Array(items) => items.iter().map(string).collect(),
        other => panic!("expected a list of strings, found {other}"),
    }
}

fn attr<'a>(body: &'a Body, name: &str) -> Option<&'a Expression> {
    body.attributes()
        .find(|a| a.key.as_str() == name)
        .map(|a| &a.expr)
}

/// The source text of an attribute, for references.
fn attr_text(body: &Body, name: &str) -> String {
    attr(body, name)
        .map(ToString::to_string)
        .unwrap_or_else(|| panic!("no attribute {name}"))
}

fn blocks<'a>(body: &'a Body, name: &str) -> Vec<&'a Body> {
    body.blocks()
        .filter(|b| b.identifier() == name)
        .map(Block::body)
        .collect()
}

fn only_block<'a>(body: &'a Body, name: &str) -> &'a Body {
    match blocks(body, name).as_slice() {
        [one] => one,
        other => panic!("expected one {name} block, found {}", other.len()),
    }
}

/// Every expression in a body, nested blocks included.
fn all_expressions(body: &Body, out: &mut Vec<String>) {
    for attribute in body.attributes() {
        out.push(attribute.expr.to_string());
    }
    for block in body.blocks() {
        out.push(
            block
                .labels()
                .iter()
                .map(|l| format!("{l:?}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        all_expressions(block.body(), out);
    }
}

/// A Cloud Run service or job: its name, binary, arguments and environment.
struct Deployment {
    name: String,
    binary: String,
    args: Vec<String>,
    env: BTreeSet<String>,
}

fn deployments(tf: &Terraform) -> Vec<Deployment> {
    ["services", "jobs"]
        .into_iter()
        .flat_map(|local| entries(tf.local(local)))
        .map(|(name, stage)| Deployment {
            binary: string(field(stage, "binary")),
            args: strings(field(stage, "args")),
            env: tf.keys(field(stage, "env")),
            name,
        })
        .collect()
}

/// The variables `binary` reads, from its `--help` (`[env: NAME=...]`, or
/// `[env: NAME]` for a hidden value).
fn env_of(binary: &str) -> BTreeSet<String> {
    let output = Command::new(tests::harness::binary(binary))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success(), "{binary} --help failed");
    let help = String::from_utf8(output.stdout).unwrap();
    let names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect()
        })
        .collect();
    assert!(!names.is_empty(), "{binary} --help names no variable");
    names
}

#[test]
fn every_stage_binary_runs_as_a_service_or_job_with_its_own_service_account() {
    let tf = Terraform::load();
    let binaries: BTreeSet<String> = STAGE_BINARIES.iter().map(|b| b.to_string()).collect();

    let functions: BTreeSet<String> = entries(tf.local("functions"))
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        functions, binaries,
        "local.functions must name every stage binary"
    );
    let accounts = tf.resource("google_service_account", "function");
    assert_eq!(attr_text(accounts, "for_each"), "local.functions");

    let deployed: BTreeSet<String> = deployments(&tf).into_iter().map(|d| d.binary).collect();
    assert_eq!(
        deployed, binaries,
        "every stage binary, and only those, is deployed"
    );

    let service = tf.resource("google_cloud_run_v2_service", "stage");
    assert_eq!(attr_text(service, "for_each"), "local.services");
    let template = only_block(service, "template");
    assert_eq!(
        attr_text(template, "service_account"),
        "google_service_account.function[each.value.binary].email"
    );
    let job = tf.resource("google_cloud_run_v2_job", "stage");
    assert_eq!(attr_text(job, "for_each"), "local.jobs");
    let template = only_block(only_block(job, "template"), "template");
    assert_eq!(
        attr_text(template, "service_account"),
        "google_service_account.function[each.value.binary].email"
    );

    // Cloud Build makes the image of every deployed binary.
    let cloudbuild = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../cloudbuild.yaml"),
    )
    .unwrap();
    for binary in &binaries {
        assert!(
            cloudbuild.contains(&format!("--build-arg=STAGE={binary},")),
            "cloudbuild.yaml builds no image of {binary}"
        );
    }
}

#[test]
fn every_deployed_command_line_is_accepted_by_its_binary() {
    let tf = Terraform::load();
    for d in deployments(&tf) {
        // clap parses every argument before it answers --help, so an unknown
        // subcommand or flag fails here.
        let output = Command::new(tests::harness::binary(&d.binary))
            .args(&d.args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: `{} {}` is refused: {}",
            d.name,
            d.binary,
            d.args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn every_variable_a_binary_reads_is_set_by_terraform_and_no_other() {
    let tf = Terraform::load();
    let mut problems = Vec::new();
    for d in deployments(&tf) {
        let reads = env_of(&d.binary);
        for name in &reads {
            let exempt = LOCAL_ONLY.contains(&name.as_str())
                || OPTIONAL.iter().any(|(optional, _)| optional == name);
            if !exempt && !d.env.contains(name) {
                problems.push(format!(
                    "{}: {} reads {name}, terraform does not set it",
                    d.name, d.binary
                ));
            }
        }
        for name in &d.env {
            if LOCAL_ONLY.contains(&name.as_str()) {
                problems.push(format!(
                    "{}: terraform sets {name}, which is for tests and local runs",
                    d.name
                ));
            } else if !reads.contains(name) {
                problems.push(format!(
                    "{}: terraform sets {name}, which {} does not read",
                    d.name, d.binary
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn nothing_is_granted_to_the_public() {
    let tf = Terraform::load();
    let mut expressions = Vec::new();
    for block in &tf.blocks {
        all_expressions(block.body(), &mut expressions);
    }
    assert!(
        expressions.len() > 100,
        "the walk found too little to be trusted"
    );
    for expr in &expressions {
        assert!(
            !expr.contains("allUsers") && !expr.contains("allAuthenticatedUsers"),
            "public member in {expr}"
        );
    }
    // Cloud Run checks IAM on every service; nothing turns that off.
    for (name, service) in tf.resources("google_cloud_run_v2_service") {
        assert!(
            attr(service, "invoker_iam_disabled").is_none(),
            "{name} disables the invoker check"
        );
    }
}

#[test]
fn every_push_subscription_is_authenticated_retried_and_dead_lettered() {
    let tf = Terraform::load();
    let mut push = 0;
    for (name, subscription) in tf.resources("google_pubsub_subscription") {
        let Some(config) = blocks(subscription, "push_config").first().copied() else {
            continue;
        };
        push += 1;
        assert!(
            attr_text(config, "push_endpoint").starts_with("google_cloud_run_v2_service.stage["),
            "{name} pushes somewhere else than a stage service"
        );
        let oidc = only_block(config, "oidc_token");
        assert_eq!(
            attr_text(oidc, "service_account_email"),
            "google_service_account.push.email",
            "{name}"
        );
        let retry = only_block(subscription, "retry_policy");
        assert!(
            attr(retry, "minimum_backoff").is_some(),
            "{name}: no minimum backoff"
        );
        assert!(
            attr(retry, "maximum_backoff").is_some(),
            "{name}: no maximum backoff"
        );
        let dead_letter = only_block(subscription, "dead_letter_policy");
        assert_eq!(
            attr_text(dead_letter, "dead_letter_topic"),
            "google_pubsub_topic.topic[\"dead_letter\"].id",
            "{name}"
        );
        assert!(
            attr(dead_letter, "max_delivery_attempts").is_some(),
            "{name}"
        );
        assert_eq!(
            attr_text(only_block(subscription, "expiration_policy"), "ttl"),
            "\"\""
        );
    }
    assert!(push > 0, "no push subscription found");

    // One push subscription per service, each to a service that exists.
    let services: BTreeSet<String> = entries(tf.local("services"))
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let pushed: BTreeSet<String> = entries(tf.local("push_subscriptions"))
        .into_iter()
        .map(|(_, s)| string(field(s, "service")))
        .collect();
    assert_eq!(pushed, services, "every service has a push subscription");
}

#[test]
fn topics_and_the_dead_letter_subscription_are_named_as_in_the_code() {
    let tf = Terraform::load();
    let declared: BTreeSet<String> = entries(tf.local("topics"))
        .into_iter()
        .map(|(_, name)| {
            let text = name.to_string();
            text.trim_matches('"')
                .strip_prefix("${var.prefix}")
                .unwrap_or_else(|| panic!("topic {text} does not start with the prefix"))
                .to_string()
        })
        .collect();
    let topics = shared::bus::Topics::new("");
    let mut expected: BTreeSet<String> = topics.all().into_iter().collect();
    expected.insert("asmr-gcs-events".into());
    expected.insert("asmr-dead-letter".into());
    assert_eq!(declared, expected);

    let dead_letter = tf.resource("google_pubsub_subscription", "dead_letter");
    assert_eq!(
        attr_text(dead_letter, "name"),
        "\"${var.prefix}asmr-dead-letter-janitor\""
    );
}

fn order_name(dir: Dir) -> &'static str {
    match dir {
        Dir::Asc => "ASCENDING",
        Dir::Desc => "DESCENDING",
    }
}

#[test]
fn every_index_the_store_needs_is_declared_and_every_collection_has_ttl() {
    let tf = Terraform::load();
    type Shape = (String, Vec<(String, String)>);
    let declared: BTreeSet<Shape> = entries(tf.local("firestore_indexes"))
        .into_iter()
        .map(|(_, index)| {
            let fields = match field(index, "fields") {
                Expression::Array(fields) => fields
                    .iter()
                    .map(|f| (string(field(f, "path")), string(field(f, "order"))))
                    .collect(),
                other => panic!("fields must be a list, found {other}"),
            };
            (string(field(index, "collection")), fields)
        })
        .collect();
    let needed: BTreeSet<Shape> = INDEXES
        .iter()
        .map(|index| {
            (
                index.collection.name().to_string(),
                index
                    .fields
                    .iter()
                    .map(|f| (f.path.to_string(), order_name(f.dir).to_string()))
                    .collect(),
            )
        })
        .collect();
    let missing: Vec<&Shape> = needed.difference(&declared).collect();
    let extra: Vec<&Shape> = declared.difference(&needed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "terraform/firestore.tf and shared::store::indexes::INDEXES differ\nmissing in terraform: {missing:#?}\nnot needed by the store: {extra:#?}"
    );
    let index = tf.resource("google_firestore_index", "query");
    assert_eq!(attr_text(index, "for_each"), "local.firestore_indexes");

    let ttl = tf.resource("google_firestore_field", "expire_at");
    assert_eq!(attr_text(ttl, "for_each"), "local.ttl_collections");
    assert_eq!(attr_text(ttl, "field"), "\"expire_at\"");
    only_block(ttl, "ttl_config");
    let ttl_collections = match tf.local("ttl_collections") {
        Expression::FuncCall(call) if call.name.name.as_str() == "toset" => strings(&call.args[0]),
        other => panic!("ttl_collections must be toset([...]), found {other}"),
    };
    let ttl_collections: BTreeSet<String> = ttl_collections.into_iter().collect();
    let expiring: BTreeSet<String> = Collection::ALL
        .iter()
        .filter(|c| c.timestamp_fields().contains(&"expire_at"))
        .map(|c| c.name().to_string())
        .collect();
    assert_eq!(
        ttl_collections, expiring,
        "every collection whose records carry expire_at has TTL"
    );
}
