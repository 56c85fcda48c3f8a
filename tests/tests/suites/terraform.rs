//! The terraform in `terraform/`, `terraform/deploy` and `cloudbuild.yaml`
//! checked against the code, without reaching Google: every stage binary is
//! deployed from the one image under its own service account, nothing is
//! granted to the public, every push subscription is authenticated, retried,
//! dead-lettered and waits longer than its service, every variable a binary
//! reads from the environment is set for it (read from the binary's own
//! `--help`), the topics are the code's, every Firestore index the store's
//! queries need (`shared::store::indexes`) is declared, every resource waits
//! for the API it needs, each deployment keeps its own state and settings,
//! and every log-based metric counts exactly the lines the binaries print
//! for its event (`log_lines` runs them, `filter` reads Logging filters).
//! The live page's service is behind Identity-Aware Proxy, and intake's API
//! service is not.
//!
//! The files are parsed with hcl-rs, and expressions evaluated with it where
//! a value is needed; `tests/run` builds the binaries first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod filter;
mod log_lines;

use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::{Block, Body, Expression, ObjectKey, Value};
use shared::store::backend::{Collection, Dir};
use shared::store::indexes::INDEXES;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Every deployable binary (the `asmr` CLI is not deployed).
const STAGE_BINARIES: [&str; 7] = [
    "intake",
    "image-generator",
    "video-generator",
    "video-poller",
    "downloader",
    "janitor",
    "notifier",
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

/// Modes of a binary that read only the settings their own `--help` lists
/// (with the binary's store options, and its port), not the rest of the
/// binary's: `intake ui` serves the live page alone.
const OWN_SETTINGS_MODES: [(&str, &str); 1] = [("intake", "ui")];

/// Variables a binary reads that terraform may leave unset, with why the
/// binary's default is right in the cloud.
const OPTIONAL: [(&str, &str); 4] = [
    (
        "PUSH_IDENTITY",
        "read by every binary that can serve; the Cloud Run jobs serve no pushes, and every service sets it (push_routes_take_only_the_push_accounts_signed_tokens_of_their_audience)",
    ),
    (
        "PUSH_AUDIENCE",
        "as PUSH_IDENTITY; with Eventarc the downloader takes any audience of its two accounts' tokens",
    ),
    (
        "GOOGLE_CERTS_URL",
        "the default is Google's own endpoint of the keys that sign its ID tokens",
    ),
    (
        "IAP_KEYS_URL",
        "the default is Google's own endpoint of the keys that sign Identity-Aware Proxy's assertions",
    ),
];

/// Every top-level block of terraform/*.tf, and the merged `locals`.
struct Terraform {
    blocks: Vec<Block>,
    locals: BTreeMap<String, Expression>,
}

/// The repository root.
fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A file of the repository, as text.
fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("reading {path}: {e}"))
}

impl Terraform {
    fn load() -> Self {
        Self::load_from(&repo().join("terraform"))
    }

    fn load_from(dir: &Path) -> Self {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
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
        // The live page's service (live.tf), described the same way.
        .chain([("live".to_string(), tf.local("live"))])
        .map(|(name, stage)| Deployment {
            binary: string(field(stage, "binary")),
            args: strings(field(stage, "args")),
            env: tf.keys(field(stage, "env")),
            name,
        })
        .collect()
}

impl Deployment {
    /// The variables this deployment's binary reads in its mode.
    fn reads(&self) -> BTreeSet<String> {
        let own = self.args.first().filter(|mode| {
            OWN_SETTINGS_MODES
                .iter()
                .any(|(binary, m)| *binary == self.binary && m == mode)
        });
        env_of(&self.binary, own.map(String::as_str))
    }
}

/// The variables `binary` (in `mode`, when that reads only its own) reads,
/// from its `--help` (`[env: NAME=...]`, or `[env: NAME]` for a hidden
/// value).
fn env_of(binary: &str, mode: Option<&str>) -> BTreeSet<String> {
    let output = Command::new(tests::harness::binary(binary))
        .args(mode)
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

    // The release image holds every deployed binary, and each stage runs its
    // own from it.
    let dockerfile = read("Dockerfile");
    let stages: BTreeSet<String> = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("ARG STAGES="))
        .expect("the Dockerfile lists the stages it builds (ARG STAGES=...)")
        .trim_matches('"')
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert_eq!(stages, binaries, "the Dockerfile builds every stage binary");
    for (kind, container) in [
        (
            "service",
            only_block(only_block(service, "template"), "containers"),
        ),
        (
            "job",
            only_block(
                only_block(only_block(job, "template"), "template"),
                "containers",
            ),
        ),
    ] {
        assert_eq!(attr_text(container, "image"), "local.image", "{kind}");
        assert_eq!(
            strings_or_templates(attr(container, "command").unwrap()),
            ["/usr/local/bin/${each.value.binary}"],
            "{kind}"
        );
    }
    let cloudbuild = read("cloudbuild.yaml");
    assert_eq!(
        cloudbuild
            .matches("--tag=${_REGISTRY}/asmr:${_TAG}")
            .count(),
        1,
        "cloudbuild.yaml builds and pushes the one image once"
    );
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
        let reads = d.reads();
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
        // The stage's URI, then the path of the subscription's endpoint.
        let endpoint = attr_text(config, "push_endpoint");
        assert!(
            endpoint.starts_with("\"${google_cloud_run_v2_service.stage[each.value.service].uri}"),
            "{name} pushes somewhere else than a stage service: {endpoint}"
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

// --- evaluating terraform expressions ---------------------------------------

fn join(args: FuncArgs) -> Result<Value, String> {
    let separator = args[0].as_str().unwrap_or_default();
    let parts: Vec<String> = args[1]
        .as_array()
        .ok_or("join takes a list")?
        .iter()
        .map(|v| v.as_str().map(str::to_string).ok_or("join takes strings"))
        .collect::<Result<_, _>>()?;
    Ok(Value::String(parts.join(separator)))
}

fn keys(args: FuncArgs) -> Result<Value, String> {
    let object = args[0].as_object().ok_or("keys takes an object")?;
    Ok(Value::Array(
        object.keys().map(|k| Value::String(k.clone())).collect(),
    ))
}

/// What a log-based metric's filter needs: `var.prefix`, the names of the
/// services and jobs, `join` and `keys`, and the locals built from them.
fn eval_context(tf: &Terraform, prefix: &str) -> Context<'static> {
    let names = |local: &str| -> Value {
        Value::Object(
            entries(tf.local(local))
                .into_iter()
                .map(|(k, _)| (k, Value::Null))
                .collect(),
        )
    };
    let mut ctx = Context::new();
    ctx.declare_func(
        "join",
        FuncDef::builder()
            .param(ParamType::String)
            .param(ParamType::array_of(ParamType::String))
            .build(join),
    );
    ctx.declare_func("keys", FuncDef::builder().param(ParamType::Any).build(keys));
    ctx.declare_var("var", hcl::value!({ prefix = (prefix) }));
    let mut local = hcl::Map::new();
    local.insert("services".to_string(), names("services"));
    local.insert("jobs".to_string(), names("jobs"));
    ctx.declare_var("local", Value::Object(local.clone()));
    for name in ["log_scope", "event_metrics"] {
        let value = tf
            .local(name)
            .evaluate(&ctx)
            .unwrap_or_else(|e| panic!("evaluating local.{name}: {e}"));
        local.insert(name.to_string(), value);
        ctx.declare_var("local", Value::Object(local.clone()));
    }
    ctx
}

fn eval_string(body: &Body, name: &str, ctx: &Context) -> Option<String> {
    attr(body, name).map(|expr| match expr.evaluate(ctx) {
        Ok(Value::String(s)) => s,
        other => panic!("{name} = {expr} is not a string: {other:?}"),
    })
}

/// A log-based metric as deployed with `prefix`.
struct LogMetric {
    /// Its name without the prefix (`asmr/jobs_failed`).
    name: String,
    filter: String,
    label_extractors: BTreeMap<String, String>,
    value_extractor: Option<String>,
}

fn log_metrics(tf: &Terraform, prefix: &str) -> Vec<LogMetric> {
    let base = eval_context(tf, prefix);
    let mut metrics = Vec::new();
    for body in tf.resources("google_logging_metric").into_values() {
        let instances: Vec<Option<(String, Value)>> = match attr(body, "for_each") {
            None => vec![None],
            Some(each) => match each.evaluate(&base).unwrap() {
                Value::Object(map) => map.into_iter().map(Some).collect(),
                other => panic!("for_each of a metric is not a map: {other:?}"),
            },
        };
        for instance in instances {
            let mut ctx = eval_context(tf, prefix);
            if let Some((key, value)) = instance {
                ctx.declare_var("each", hcl::value!({ key = (key), value = (value) }));
            }
            let name = eval_string(body, "name", &ctx).unwrap();
            let label_extractors = match attr(body, "label_extractors").map(|e| e.evaluate(&ctx)) {
                None => BTreeMap::new(),
                Some(Ok(Value::Object(map))) => map
                    .into_iter()
                    .map(|(k, v)| (k, v.as_str().unwrap().to_string()))
                    .collect(),
                Some(other) => panic!("label_extractors of {name}: {other:?}"),
            };
            metrics.push(LogMetric {
                name: name
                    .strip_prefix(prefix)
                    .unwrap_or_else(|| panic!("metric {name} does not start with the prefix"))
                    .to_string(),
                filter: eval_string(body, "filter", &ctx).unwrap(),
                label_extractors,
                value_extractor: eval_string(body, "value_extractor", &ctx),
            });
        }
    }
    metrics
}

// --- item: log-based metrics count exactly their event ------------------------

/// Every log-based metric, the event its lines carry and, for job
/// transitions, the status they go to.
const LOG_METRICS: [(&str, &str, Option<&str>); 12] = [
    ("asmr/jobs_completed", "job_transition", Some("completed")),
    ("asmr/jobs_failed", "job_transition", Some("failed")),
    ("asmr/jobs_delivered", "job_transition", Some("delivered")),
    ("asmr/model_rate_limited", "model_rate_limited", None),
    ("asmr/downloads_failed", "download_failed", None),
    ("asmr/dead_letters", "janitor.dead_letter", None),
    ("asmr/job_events_deferred", "job_event.deferred", None),
    ("asmr/budget_exhausted", "budget_exhausted", None),
    ("asmr/requests_rejected", "request.rejected", None),
    ("asmr/pushes_poisoned", "push_poison", None),
    ("asmr/bytes_delivered", "download_completed", None),
    ("asmr/cost_spent", "cost_settled", None),
];

/// A captured line as Cloud Logging stores it, from the service or job
/// `prefix` + stage: the monitored resource Cloud Run gives it, the
/// severity, and the rest of the JSON as jsonPayload.
fn log_entry(tf: &Terraform, line: &log_lines::Line, prefix: &str) -> serde_json::Value {
    let is_service = entries(tf.local("services"))
        .iter()
        .any(|(name, _)| *name == line.stage);
    let is_job = entries(tf.local("jobs"))
        .iter()
        .any(|(name, _)| *name == line.stage);
    assert!(
        is_service || is_job,
        "{} is not a deployed stage",
        line.stage
    );
    let name = format!("{prefix}{}", line.stage);
    let resource = if is_service {
        serde_json::json!({"type": "cloud_run_revision", "labels": {
            "service_name": name, "revision_name": format!("{name}-00001-abc"),
            "configuration_name": name, "location": "us-central1", "project_id": "p"}})
    } else {
        serde_json::json!({"type": "cloud_run_job", "labels": {
            "job_name": name, "location": "us-central1", "project_id": "p"}})
    };
    let mut payload = line.json.as_object().unwrap().clone();
    let severity = payload.remove("severity").unwrap_or_default();
    payload.retain(|k, _| k != "time" && !k.starts_with("logging.googleapis.com/"));
    serde_json::json!({"resource": resource, "severity": severity, "jsonPayload": payload})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_metric_counts_exactly_the_lines_the_binaries_print_for_its_event() {
    let tf = Terraform::load();
    let lines = log_lines::capture().await;
    let ours = "dev-";
    let metrics = log_metrics(&tf, ours);
    let declared: BTreeSet<&str> = metrics.iter().map(|m| m.name.as_str()).collect();
    let expected: BTreeSet<&str> = LOG_METRICS.iter().map(|(name, ..)| *name).collect();
    assert_eq!(
        declared, expected,
        "terraform's log-based metrics and this table differ"
    );

    let stages: BTreeSet<&str> = lines.iter().map(|l| l.stage.as_str()).collect();
    for (name, event, to) in LOG_METRICS {
        let metric = metrics.iter().find(|m| m.name == name).unwrap();
        let filter = filter::parse(&metric.filter);
        let of_event = |line: &log_lines::Line| {
            line.json["event"] == event && to.is_none_or(|to| line.json["to"] == to)
        };
        let counted: Vec<&log_lines::Line> = lines
            .iter()
            .filter(|l| filter.matches(&log_entry(&tf, l, ours)))
            .collect();
        let wanted: Vec<&log_lines::Line> = lines.iter().filter(|l| of_event(l)).collect();
        assert!(
            !wanted.is_empty(),
            "{name}: no stage printed an {event} line (stages run: {stages:?}); was the event renamed?"
        );
        let show = |ls: &[&log_lines::Line]| {
            ls.iter()
                .map(|l| format!("{}: {}", l.stage, l.json))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert!(
            counted.len() == wanted.len() && counted.iter().all(|l| of_event(l)),
            "{name} counts other lines than its {event} lines\nfilter: {}\ncounted:\n{}\nwanted:\n{}",
            metric.filter,
            show(&counted),
            show(&wanted)
        );
        // Another deployment in the same project (no prefix, or another
        // one) prints the same lines under its own names: never counted.
        for theirs in ["", "qa-"] {
            assert!(
                !lines
                    .iter()
                    .any(|l| filter.matches(&log_entry(&tf, l, theirs))),
                "{name} counts the lines of the deployment with prefix {theirs:?}"
            );
        }
        // What the metric extracts is in every line it counts.
        for (label, extractor) in &metric.label_extractors {
            let field = extractor
                .strip_prefix("EXTRACT(jsonPayload.")
                .and_then(|f| f.strip_suffix(')'))
                .unwrap_or_else(|| panic!("{name}: label {label} is not EXTRACT(jsonPayload.X)"));
            for line in &counted {
                assert!(
                    line.json[field].as_str().is_some_and(|v| !v.is_empty()),
                    "{name}: label {label} reads jsonPayload.{field}, missing in {}",
                    line.json
                );
            }
        }
        if let Some(extractor) = &metric.value_extractor {
            for line in &counted {
                let value = match extractor.as_str() {
                    "EXTRACT(jsonPayload.bytes)" => line.json["bytes"].as_f64(),
                    r#"REGEXP_EXTRACT(jsonPayload.spent, "([0-9]+\\.[0-9]+)")"# => {
                        line.json["spent"]
                            .as_str()
                            .and_then(|s| s.trim_start_matches('$').parse().ok())
                    }
                    other => panic!("{name}: this test does not know the extractor {other}"),
                };
                assert!(
                    value.is_some(),
                    "{name}: {extractor} finds no number in {}",
                    line.json
                );
            }
        }
    }
    // Job transitions are counted from both kinds of Cloud Run resource:
    // services (intake, the downloader) and jobs (the drains, the poller).
    let transitions: Vec<filter::Filter> = metrics
        .iter()
        .filter(|m| m.filter.contains("job_transition"))
        .map(|m| filter::parse(&m.filter))
        .collect();
    for kind in ["cloud_run_revision", "cloud_run_job"] {
        assert!(
            lines.iter().any(|l| {
                let entry = log_entry(&tf, l, ours);
                entry["resource"]["type"] == kind && transitions.iter().any(|f| f.matches(&entry))
            }),
            "no job transition counted from a {kind}"
        );
    }
}

#[test]
fn the_alert_and_the_charts_add_services_and_jobs() {
    let tf = Terraform::load();
    let alert = tf.resource("google_monitoring_alert_policy", "failure_rate");
    let condition = only_block(
        only_block(alert, "conditions"),
        "condition_prometheus_query_language",
    );
    assert_eq!(attr_text(condition, "query"), "local.failure_ratio_query");
    // Created with its metrics, before they have data
    // (hashicorp/terraform-provider-google#11102).
    assert_eq!(attr_text(condition, "disable_metric_validation"), "true");
    for local in ["failure_ratio_query", "usd_spent_query"] {
        let text = tf.local(local).to_string();
        for kind in ["cloud_run_revision", "cloud_run_job"] {
            assert!(
                text.contains(&format!("monitored_resource=\\\"{kind}\\\"")),
                "local.{local} does not read {kind}: {text}"
            );
        }
    }
    let charts = tf.local("chart_query").to_string();
    assert!(charts.contains("cloud_run_revision") && charts.contains("cloud_run_job"));
    // The dashboard's tenant picker narrows the counters with a tenant
    // label, and only those (a matcher on a missing label matches nothing).
    assert_eq!(
        charts.matches("local.tenant_matcher").count(),
        2,
        "{charts}"
    );
    let matcher = tf.local("tenant_matcher").to_string();
    assert!(
        matcher.contains("\"tenant\"") && matcher.contains("$${tenant}"),
        "{matcher}"
    );
    let dashboard = tf.resource("google_monitoring_dashboard", "asmr");
    let json = attr_text(dashboard, "dashboard_json");
    assert!(
        json.contains("dashboardFilters") && json.contains("templateVariable = \"tenant\""),
        "{json}"
    );
}

// --- item: every resource waits for the API it needs ---------------------------

/// Every resource and data type terraform/ uses, and the API it needs
/// ("": the enablement and the waits themselves).
const API_OF: [(&str, &str); 39] = [
    ("google_project_service", ""),
    ("time_sleep", ""),
    ("time_static", ""),
    ("random_bytes", ""),
    (
        "google_project_service_identity",
        "serviceusage.googleapis.com",
    ),
    ("google_service_account", "iam.googleapis.com"),
    ("google_service_account_iam_member", "iam.googleapis.com"),
    ("google_project_iam_custom_role", "iam.googleapis.com"),
    (
        "google_project_iam_member",
        "cloudresourcemanager.googleapis.com",
    ),
    ("google_project", "cloudresourcemanager.googleapis.com"),
    (
        "google_project_iam_audit_config",
        "cloudresourcemanager.googleapis.com",
    ),
    ("google_pubsub_topic", "pubsub.googleapis.com"),
    ("google_pubsub_subscription", "pubsub.googleapis.com"),
    ("google_pubsub_topic_iam_member", "pubsub.googleapis.com"),
    (
        "google_pubsub_subscription_iam_member",
        "pubsub.googleapis.com",
    ),
    ("google_storage_bucket", "storage.googleapis.com"),
    ("google_storage_bucket_iam_member", "storage.googleapis.com"),
    ("google_storage_notification", "storage.googleapis.com"),
    (
        "google_storage_project_service_account",
        "storage.googleapis.com",
    ),
    ("google_cloud_run_v2_service", "run.googleapis.com"),
    ("google_cloud_run_v2_job", "run.googleapis.com"),
    (
        "google_cloud_run_v2_service_iam_member",
        "run.googleapis.com",
    ),
    ("google_cloud_run_v2_job_iam_member", "run.googleapis.com"),
    (
        "google_iap_web_cloud_run_service_iam_member",
        "iap.googleapis.com",
    ),
    (
        "google_cloud_scheduler_job",
        "cloudscheduler.googleapis.com",
    ),
    ("google_firestore_database", "firestore.googleapis.com"),
    ("google_firestore_index", "firestore.googleapis.com"),
    ("google_firestore_document", "firestore.googleapis.com"),
    ("google_firestore_field", "firestore.googleapis.com"),
    ("google_logging_metric", "logging.googleapis.com"),
    ("google_monitoring_dashboard", "monitoring.googleapis.com"),
    (
        "google_monitoring_notification_channel",
        "monitoring.googleapis.com",
    ),
    (
        "google_monitoring_alert_policy",
        "monitoring.googleapis.com",
    ),
    ("google_eventarc_trigger", "eventarc.googleapis.com"),
    ("google_api_gateway_api", "apigateway.googleapis.com"),
    ("google_api_gateway_api_config", "apigateway.googleapis.com"),
    ("google_api_gateway_gateway", "apigateway.googleapis.com"),
    (
        "google_secret_manager_secret",
        "secretmanager.googleapis.com",
    ),
    (
        "google_secret_manager_secret_version",
        "secretmanager.googleapis.com",
    ),
];

/// APIs the README's first step turns on, since terraform needs them to
/// turn on the others; every other API is terraform's (local.apis).
const PREREQUISITE_APIS: [&str; 1] = ["serviceusage.googleapis.com"];

/// The services whose agents terraform creates, and what calls them.
const AGENT_APIS: [&str; 4] = [
    "pubsub.googleapis.com",
    "aiplatform.googleapis.com",
    "eventarc.googleapis.com",
    "iap.googleapis.com",
];

/// Resources that must also wait for a grant Google checks when they are
/// created (the service agents'), and the wait.
const WAITS_FOR: [(&str, &str); 2] = [
    (
        "google_storage_notification.output_finalized",
        "time_sleep.agent_grants",
    ),
    (
        "google_eventarc_trigger.output_finalized",
        "time_sleep.agent_grants",
    ),
];

/// `resource TYPE NAME` as `TYPE.NAME`, `data TYPE NAME` as `data.TYPE.NAME`.
fn address(block: &Block) -> Option<String> {
    match block.identifier() {
        "resource" => Some(format!("{}.{}", label(block, 0), label(block, 1))),
        "data" => Some(format!("data.{}.{}", label(block, 0), label(block, 1))),
        _ => None,
    }
}

/// Which resources each resource refers to (depends_on included), through
/// the locals it reads.
fn references(tf: &Terraform) -> BTreeMap<String, BTreeSet<String>> {
    let addresses: Vec<String> = tf.blocks.iter().filter_map(address).collect();
    let mentions = |text: &str| -> BTreeSet<String> {
        addresses
            .iter()
            .filter(|a| {
                text.match_indices(a.as_str()).any(|(at, _)| {
                    let after = text[at + a.len()..].chars().next();
                    let before = text[..at].chars().last();
                    !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
                        && !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.')
                })
            })
            .cloned()
            .collect()
    };
    let expand = |text: String| -> String {
        let mut text = text;
        let mut seen = BTreeSet::new();
        loop {
            let more: Vec<String> = tf
                .locals
                .keys()
                .filter(|k| !seen.contains(*k) && text.contains(&format!("local.{k}")))
                .cloned()
                .collect();
            if more.is_empty() {
                return text;
            }
            for k in more {
                text.push(' ');
                text.push_str(&tf.local(&k).to_string());
                seen.insert(k);
            }
        }
    };
    tf.blocks
        .iter()
        .filter_map(|b| {
            let mut texts = Vec::new();
            all_expressions(b.body(), &mut texts);
            Some((address(b)?, mentions(&expand(texts.join(" ")))))
        })
        .collect()
}

fn depends(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, on: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(node) = todo.pop() {
        for next in graph.get(&node).into_iter().flatten() {
            if next == on {
                return true;
            }
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn every_resource_waits_for_the_api_it_needs_so_one_apply_works_on_a_fresh_project() {
    let tf = Terraform::load();
    let apis: BTreeSet<String> = match tf.local("apis") {
        Expression::FuncCall(call) if call.name.name.as_str() == "toset" => {
            strings(&call.args[0]).into_iter().collect()
        }
        other => panic!("local.apis must be toset([...]), found {other}"),
    };
    for api in API_OF.iter().map(|(_, api)| *api).chain(AGENT_APIS) {
        assert!(
            api.is_empty() || apis.contains(api) || PREREQUISITE_APIS.contains(&api),
            "{api} is needed but not in local.apis"
        );
    }
    let agents: BTreeSet<String> = tf
        .resources("google_project_service_identity")
        .values()
        .map(|b| string(attr(b, "service").unwrap()))
        .collect();
    assert_eq!(agents, AGENT_APIS.iter().map(|a| a.to_string()).collect());
    let graph = references(&tf);
    let mut problems = Vec::new();
    for node in graph.keys() {
        let kind = node.trim_start_matches("data.").split('.').next().unwrap();
        if !API_OF.iter().any(|(k, _)| *k == kind) {
            problems.push(format!(
                "{node}: {kind} is not in API_OF; say which API it needs"
            ));
            continue;
        }
        if API_OF.iter().any(|(k, api)| *k == kind && api.is_empty()) {
            continue;
        }
        if !depends(&graph, node, "time_sleep.apis") {
            problems.push(format!(
                "{node} does not wait for the APIs (time_sleep.apis)"
            ));
        }
    }
    assert!(
        depends(&graph, "time_sleep.apis", "google_project_service.api"),
        "time_sleep.apis must wait for the enablement"
    );
    for (node, wait) in WAITS_FOR {
        if !depends(&graph, node, wait) {
            problems.push(format!("{node} does not wait for {wait}"));
        }
    }
    // The Eventarc agent's role is among the grants the trigger waits for
    // (hashicorp/terraform-provider-google#25294).
    let agent_wait = tf.resource("time_sleep", "agent_grants");
    let triggers = attr_text(agent_wait, "triggers");
    for grant in [
        "google_project_iam_member.eventarc_agent",
        "google_project_iam_member.storage_publisher",
        "google_pubsub_topic_iam_member.storage_gcs_events",
    ] {
        if !triggers.contains(grant) {
            problems.push(format!("time_sleep.agent_grants does not wait for {grant}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// --- items: one state and one settings file per deployment -----------------------

/// `terraform/deploy` with fake `gcloud` and `terraform` on PATH: the
/// bucket is a directory, every terraform call is written to a log.
struct Deploy {
    dir: tempfile::TempDir,
}

impl Deploy {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let script = |name: &str, body: &str| {
            let path = bin.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        script(
            "gcloud",
            r#"[ "$1 $2" = "storage cp" ] || exit 2
for a; do last=$a; done
src=$4; [ "$3" = "--quiet" ] || src=$3
cp "$FAKE_GCS/${src#gs://}" "$last""#,
        );
        script(
            "terraform",
            r#"echo "terraform $*" >> "$FAKE_LOG"
for a; do case $a in -var-file=*) cat "${a#-var-file=}" >> "$FAKE_LOG";; esac; done"#,
        );
        Self { dir }
    }

    fn settings(&self, bucket: &str, state: &str, text: &str) {
        let path = self.dir.path().join("gcs").join(bucket).join(state);
        std::fs::create_dir_all(&path).unwrap();
        std::fs::write(path.join("terraform.tfvars"), text).unwrap();
    }

    /// Runs it; its exit status, stderr and the terraform calls.
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let log = self.dir.path().join("log");
        let _ = std::fs::remove_file(&log);
        let output = Command::new(repo().join("terraform/deploy"))
            .args(args)
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.dir.path().join("bin").display()),
            )
            .env("FAKE_GCS", self.dir.path().join("gcs"))
            .env("FAKE_LOG", &log)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
            std::fs::read_to_string(&log).unwrap_or_default(),
        )
    }
}

#[test]
fn each_deployment_keeps_its_own_state_beside_its_own_settings() {
    let deploy = Deploy::new();
    deploy.settings("p-tfstate", "asmr/default", "dry_run = true\n");
    deploy.settings("p-tfstate", "asmr/dev-", "dry_run = false\n");
    let (ok, err, default) = deploy.run(&["--project", "p", "--tag", "abc", "--auto-approve"]);
    assert!(ok, "{err}");
    let (ok, err, dev) = deploy.run(&["--project", "p", "--tag", "abc", "--prefix", "dev-"]);
    assert!(ok, "{err}");
    assert!(
        default.contains("-backend-config=prefix=asmr/default"),
        "{default}"
    );
    assert!(default.contains("dry_run = true"), "{default}");
    assert!(dev.contains("-backend-config=prefix=asmr/dev-"), "{dev}");
    assert!(
        dev.contains("dry_run = false") && dev.contains("-var=prefix=dev-"),
        "{dev}"
    );
    for log in [&default, &dev] {
        assert!(log.contains("-backend-config=bucket=p-tfstate"), "{log}");
    }

    // No fixed state path in the backend, and no other way in.
    let tf = Terraform::load();
    let terraform = tf
        .blocks
        .iter()
        .find(|b| b.identifier() == "terraform")
        .unwrap();
    let backend = only_block(terraform.body(), "backend");
    assert!(
        backend.attributes().next().is_none(),
        "the gcs backend sets {}: the state path is chosen per deployment by terraform/deploy",
        backend
            .attributes()
            .map(|a| a.key.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for file in ["README.md", "cloudbuild.yaml"] {
        let text = read(file);
        assert!(
            text.contains("terraform/deploy"),
            "{file} does not deploy with terraform/deploy"
        );
        for direct in ["terraform init", "terraform apply", "terraform -chdir"] {
            assert!(!text.contains(direct), "{file} runs `{direct}` itself");
        }
    }
}

#[test]
fn a_release_applies_the_deployment_settings_file_and_refuses_without_it() {
    let deploy = Deploy::new();
    // No settings file: nothing runs.
    let (ok, err, calls) = deploy.run(&["--project", "p", "--tag", "abc", "--auto-approve"]);
    assert!(
        !ok && err.contains("no settings file at gs://p-tfstate/asmr/default/terraform.tfvars"),
        "{err}"
    );
    assert!(calls.is_empty(), "terraform ran without settings: {calls}");

    // The file is the only source of settings: the command line adds only
    // what identifies the release.
    deploy.settings("p-tfstate", "asmr/default", "budget_usd_per_day = 20\n");
    let (ok, err, calls) = deploy.run(&[
        "--project",
        "p",
        "--tag",
        "abc",
        "--registry",
        "r/asmr",
        "--auto-approve",
    ]);
    assert!(ok, "{err}");
    let apply = calls
        .lines()
        .find(|l| l.contains(" apply "))
        .expect("an apply");
    let vars: Vec<&str> = apply
        .split_whitespace()
        .filter(|w| w.starts_with("-var="))
        .collect();
    assert_eq!(
        vars,
        [
            "-var=project=p",
            "-var=prefix=",
            "-var=image_tag=abc",
            "-var=image_registry=r/asmr"
        ]
    );
    assert!(apply.contains("-var-file=") && calls.contains("budget_usd_per_day = 20"));

    // A file that sets what the command line sets is refused.
    deploy.settings("p-tfstate", "asmr/default", "prefix = \"x\"\n");
    let (ok, err, calls) = deploy.run(&["--project", "p", "--tag", "abc"]);
    assert!(!ok && err.contains("remove them from the file"), "{err}");
    assert!(calls.is_empty());

    // Cloud Build applies through it, with no settings of its own.
    let cloudbuild = read("cloudbuild.yaml");
    let apply = &cloudbuild[cloudbuild.find("- id: apply").expect("an apply step")..];
    assert!(apply.contains("terraform/deploy --auto-approve"));
    for forbidden in ["-var", "_TF_ARGS", "-var-file"] {
        assert!(
            !apply.contains(forbidden),
            "the apply step passes {forbidden}"
        );
    }
}

// --- item: the release identity ----------------------------------------------------

#[test]
fn the_build_runs_as_its_own_account_which_may_grant_only_what_terraform_grants() {
    let cloudbuild = read("cloudbuild.yaml");
    assert!(cloudbuild.contains(
        "serviceAccount: projects/$PROJECT_ID/serviceAccounts/asmr-build@$PROJECT_ID.iam.gserviceaccount.com"
    ));
    let tf = Terraform::load();
    let variable = tf
        .blocks
        .iter()
        .find(|b| b.identifier() == "variable" && label(b, 0) == "build_service_account")
        .unwrap();
    assert_eq!(attr_text(variable.body(), "default"), "\"asmr-build\"");

    // The project roles terraform grants, and the README's condition on the
    // build account's projectIamAdmin: the same set.
    // The custom role of the model callers is named in the README as the
    // default deployment (no prefix) names it.
    let vertex_caller = tf.local("vertex_caller").to_string();
    assert_eq!(
        vertex_caller,
        "\"projects/${var.project}/roles/${local.vertex_caller_id}\""
    );
    assert!(
        tf.local("vertex_caller_id")
            .to_string()
            .ends_with("}asmrVertexCaller\"")
    );
    let mut granted: BTreeSet<String> = entries(tf.local("functions"))
        .into_iter()
        .flat_map(|(_, f)| match field(f, "project_roles") {
            Expression::Array(items) => items
                .iter()
                .map(|role| match role.to_string().as_str() {
                    "local.vertex_caller" => "projects/$PROJECT/roles/asmrVertexCaller".to_string(),
                    _ => string(role),
                })
                .collect::<Vec<_>>(),
            other => panic!("project_roles is not a list: {other}"),
        })
        .collect();
    for body in tf.resources("google_project_iam_member").into_values() {
        if let Some(Expression::String(role)) = attr(body, "role") {
            granted.insert(role.clone());
        }
    }
    let readme = read("README.md");
    let list = readme
        .split("modifiedGrantsByRole', []).hasOnly([")
        .nth(1)
        .and_then(|rest| rest.split("])").next())
        .expect("the README's condition on the build account's projectIamAdmin");
    let allowed: BTreeSet<String> = list
        .split(',')
        .map(|r| r.trim().trim_matches('\'').to_string())
        .collect();
    assert_eq!(
        allowed, granted,
        "README's grantable roles and terraform's project grants differ"
    );
}

// --- item: the archive volume --------------------------------------------------------

#[test]
fn the_mounted_archive_belongs_to_the_image_user_and_partials_expire() {
    let tf = Terraform::load();
    let user = read("Dockerfile")
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("a USER in the Dockerfile")
        .to_string();
    let uid = tf.local("image_uid").to_string();
    assert_eq!(
        user,
        format!("{uid}:{uid}"),
        "terraform's image_uid is not the image's user"
    );
    let options = strings_or_templates(tf.local("archive_mount_options"));
    for wanted in ["uid=${local.image_uid}", "gid=${local.image_uid}"] {
        assert!(
            options.iter().any(|o| o == wanted),
            "mount_options lack {wanted}: {options:?}"
        );
    }
    let mut texts = Vec::new();
    for kind in ["google_cloud_run_v2_service", "google_cloud_run_v2_job"] {
        all_expressions(tf.resource(kind, "stage"), &mut texts);
    }
    assert_eq!(
        texts
            .iter()
            .filter(|t| *t == "local.archive_mount_options")
            .count(),
        2,
        "the service and the job mount the archive with the same options"
    );
    assert_eq!(
        string(tf.local("partial_suffix")),
        shared::domain::paths::PARTIAL_SUFFIX,
        "the archive's lifecycle rules name another suffix than the downloader's"
    );
}

fn strings_or_templates(expr: &Expression) -> Vec<String> {
    match expr {
        Expression::Array(items) => items
            .iter()
            .map(|i| match i {
                Expression::String(s) => s.clone(),
                other => other.to_string().trim_matches('"').to_string(),
            })
            .collect(),
        other => panic!("expected a list, found {other}"),
    }
}

// --- item: push deadlines leave a margin over the services' own ---------------------

/// Each service's own time limit on a request: the constant in its source.
const HANDLER_TIMEOUTS: [(&str, &str, &str); 4] = [
    ("intake", "shared/src/intake/service.rs", "REQUEST_TIMEOUT"),
    (
        "image-generator",
        "shared/src/generate/service.rs",
        "PUSH_TIMEOUT",
    ),
    (
        "video-generator",
        "shared/src/generate/service.rs",
        "PUSH_TIMEOUT",
    ),
    (
        "downloader",
        "shared/src/deliver/service.rs",
        "PUSH_TIMEOUT",
    ),
];

/// The least time Cloud Run and Pub/Sub wait beyond a service's own limit.
const MARGIN_S: u64 = 10;

fn seconds(expr: &Expression) -> u64 {
    match expr {
        Expression::Number(n) => n.as_u64().unwrap(),
        other => panic!("expected a number, found {other}"),
    }
}

#[test]
fn every_push_waits_longer_than_its_service_takes() {
    let tf = Terraform::load();
    let services = entries(tf.local("services"));
    for (service, file, constant) in HANDLER_TIMEOUTS {
        let source = read(file);
        let declared = format!("const {constant}: Duration = Duration::from_secs(");
        let own: u64 = source
            .split(&declared)
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .unwrap_or_else(|| panic!("{file} no longer declares {declared}...)"))
            .parse()
            .unwrap();
        let (_, stage) = services
            .iter()
            .find(|(name, _)| name == service)
            .unwrap_or_else(|| panic!("{service} is not deployed"));
        let handler = seconds(field(stage, "handler_timeout_s"));
        let timeout = seconds(field(stage, "timeout_s"));
        assert_eq!(
            handler, own,
            "{service}: handler_timeout_s is not {file}'s {constant}"
        );
        assert!(
            timeout >= own + MARGIN_S && timeout <= 600,
            "{service}: Cloud Run's timeout and the ack deadline ({timeout} s) must leave {MARGIN_S} s over {constant} ({own} s) and stay within Pub/Sub's 600 s"
        );
    }
    let push = tf.resource("google_pubsub_subscription", "push");
    assert_eq!(
        attr_text(push, "ack_deadline_seconds"),
        "min(600, local.services[each.value.service].timeout_s)"
    );
}

/// The expression `env` (object literals, `merge(...)`, both branches of a
/// conditional) gives `name`, as source text; `None` when it sets none.
fn env_value(tf: &Terraform, env: &Expression, name: &str) -> Option<String> {
    match env {
        Expression::Object(_) => entries(env)
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.to_string()),
        Expression::Parenthesis(inner) => env_value(tf, inner, name),
        Expression::Conditional(c) => {
            env_value(tf, &c.true_expr, name).or_else(|| env_value(tf, &c.false_expr, name))
        }
        Expression::FuncCall(call) if call.name.name.as_str() == "merge" => call
            .args
            .iter()
            .rev()
            .find_map(|arg| env_value(tf, arg, name)),
        Expression::Traversal(t) => match (&t.expr, t.operators.as_slice()) {
            (Expression::Variable(v), [hcl::TraversalOperator::GetAttr(local)])
                if v.as_str() == "local" =>
            {
                env_value(tf, tf.local(local.as_str()), name)
            }
            _ => None,
        },
        _ => None,
    }
}

#[test]
fn push_routes_take_only_the_push_accounts_signed_tokens_of_their_audience() {
    let tf = Terraform::load();
    let services: BTreeSet<String> = entries(tf.local("services"))
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    // A custom audience for each service, which the service accepts.
    let audiences = tf.local("push_audiences").to_string();
    for name in &services {
        assert!(
            audiences.contains(&format!("\"{name}\"")),
            "{name}: {audiences}"
        );
    }
    let run = tf.resource("google_cloud_run_v2_service", "stage");
    let custom: String = attr_text(run, "custom_audiences")
        .split_whitespace()
        .collect();
    assert_eq!(custom, "[local.push_audiences[each.key]]");
    // Every push carries the push account's token for its service's
    // audience...
    let push = tf.resource("google_pubsub_subscription", "push");
    let oidc = only_block(only_block(push, "push_config"), "oidc_token");
    assert_eq!(
        attr_text(oidc, "service_account_email"),
        "google_service_account.push.email"
    );
    assert_eq!(
        attr_text(oidc, "audience"),
        "local.push_audiences[each.value.service]"
    );
    // ...and every service takes that account's (and, for the downloader,
    // Eventarc's) tokens of exactly that audience.
    for (name, stage) in entries(tf.local("services")) {
        let env = field(stage, "env");
        let identity = env_value(&tf, env, "PUSH_IDENTITY")
            .unwrap_or_else(|| panic!("{name} does not set PUSH_IDENTITY"));
        let identity = match identity.as_str() {
            "local.pushers" => tf.local("pushers").to_string(),
            other => other.to_string(),
        };
        assert!(
            identity.contains("google_service_account.push.email"),
            "{name}: {identity}"
        );
        let audience = env_value(&tf, env, "PUSH_AUDIENCE")
            .unwrap_or_else(|| panic!("{name} does not set PUSH_AUDIENCE"));
        assert_eq!(
            audience,
            format!("local.push_audiences[\"{name}\"]"),
            "{name}"
        );
    }
    let pushers = tf.local("pushers").to_string();
    assert!(
        pushers.contains("google_service_account.eventarc"),
        "{pushers}"
    );
}

#[test]
fn paid_mode_is_never_uncapped() {
    let tf = Terraform::load();
    let run = tf.resource("google_cloud_run_v2_service", "stage");
    let precondition = only_block(only_block(run, "lifecycle"), "precondition");
    assert_eq!(
        attr_text(precondition, "condition"),
        "var.dry_run || var.budget_usd_per_day != null"
    );
    assert!(attr_text(precondition, "error_message").contains("set budget_usd_per_day"));
}

#[test]
fn the_model_callers_hold_only_what_they_call() {
    let tf = Terraform::load();
    let role = tf.resource("google_project_iam_custom_role", "vertex_caller");
    let permissions: String = attr_text(role, "permissions").split_whitespace().collect();
    assert_eq!(permissions, "[\"aiplatform.endpoints.predict\"]");
    for (name, function) in entries(tf.local("functions")) {
        let roles = field(function, "project_roles").to_string();
        let calls_models =
            ["image-generator", "video-generator", "video-poller"].contains(&name.as_str());
        assert_eq!(
            roles.contains("local.vertex_caller"),
            calls_models,
            "{name}: {roles}"
        );
    }
    for file in std::fs::read_dir(repo().join("terraform")).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_some_and(|e| e == "tf") {
            let text = std::fs::read_to_string(&path).unwrap();
            let grants = text
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .any(|l| l.contains("roles/aiplatform.user"));
            assert!(!grants, "{} grants roles/aiplatform.user", path.display());
        }
    }
}

#[test]
fn object_reads_and_writes_are_in_the_audit_logs() {
    let tf = Terraform::load();
    let audit = tf.resource("google_project_iam_audit_config", "storage");
    assert_eq!(attr_text(audit, "service"), "\"storage.googleapis.com\"");
    let types: BTreeSet<String> = blocks(audit, "audit_log_config")
        .into_iter()
        .map(|b| attr_text(b, "log_type"))
        .collect();
    for wanted in ["\"DATA_READ\"", "\"DATA_WRITE\""] {
        assert!(types.contains(wanted), "{types:?}");
    }
    // A skipped check names what makes up for it, and that exists.
    let storage = read("terraform/storage.tf");
    for line in storage
        .lines()
        .filter(|l| l.contains("checkov:skip=CKV_GCP_62"))
    {
        assert!(line.contains("storage_audit_logs"), "{line}");
    }
}

/// Step 3 of the README's fresh-project commands: the build accounts and
/// their grants.
fn readme_step3() -> String {
    read("README.md")
        .split("# 3. The accounts Cloud Build runs as")
        .nth(1)
        .and_then(|rest| rest.split("# 4.").next())
        .expect("the README's step 3")
        .to_string()
}

#[test]
fn the_release_identity_administers_only_the_deployments_own_accounts() {
    let tf = Terraform::load();
    for (name, role) in [
        ("release_act_as", "roles/iam.serviceAccountUser"),
        ("release_admin", "roles/iam.serviceAccountAdmin"),
    ] {
        let grant = tf.resource("google_service_account_iam_member", name);
        assert_eq!(attr_text(grant, "role"), format!("\"{role}\""), "{name}");
        assert!(
            attr_text(grant, "for_each").contains("local.runtime_accounts"),
            "{name} is granted on the deployment's own accounts"
        );
    }
    // The README's first steps grant no account administration on the
    // project.
    let step3 = readme_step3();
    for role in [
        "roles/iam.serviceAccountAdmin",
        "roles/iam.serviceAccountUser",
        "roles/owner",
        "roles/editor",
    ] {
        assert!(!step3.contains(role), "step 3 grants {role} on the project");
    }
}

#[test]
fn the_tests_run_with_no_permission_and_check_what_they_download() {
    let test = read("cloudbuild.test.yaml");
    assert!(test.contains(
        "serviceAccount: projects/$PROJECT_ID/serviceAccounts/asmr-test@$PROJECT_ID.iam.gserviceaccount.com"
    ));
    assert!(
        test.contains("tests/run"),
        "the test build runs the test command"
    );
    let piped_to_shell = |text: &str| {
        text.split('|')
            .skip(1)
            .any(|after| matches!(after.split_whitespace().next(), Some("sh" | "bash")))
    };
    assert!(!piped_to_shell(&test), "an installer piped into a shell");
    assert!(
        test.contains("sha256sum --check"),
        "the terraform archive is checked"
    );
    assert!(test.contains("tags: [asmr-tested, \"commit-${_TAG}\"]"));
    // The release runs no test command of its own and builds only a
    // tested commit.
    let release = read("cloudbuild.yaml");
    assert!(
        !release.contains("tests/run"),
        "the release runs the tests as itself"
    );
    assert!(!piped_to_shell(&release));
    assert!(release.contains("tags=asmr-tested AND tags=commit-${_TAG}"));
    let image = &release[release.find("- id: image").expect("an image step")..];
    assert!(
        image.contains("waitFor: [tested,"),
        "the image waits for the test build"
    );
    // The README creates the test account with nothing but its logs and
    // its sources.
    let step3 = readme_step3();
    let test_grants: Vec<&str> = step3
        .split("--member=serviceAccount:$TEST")
        .skip(1)
        .collect();
    assert_eq!(test_grants.len(), 1);
    assert!(
        test_grants[0]
            .trim_start()
            .starts_with("\\\n  --role=roles/logging.logWriter")
    );
}

#[test]
fn the_image_builds_from_pinned_bases_and_sends_no_settings_or_secrets() {
    let dockerfile = read("Dockerfile");
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    for from in &froms {
        let image = from.split_whitespace().nth(1).unwrap();
        let external = !froms.iter().any(|f| f.ends_with(&format!("AS {image}")));
        if external {
            let digest = image.split_once("@sha256:").map(|(_, d)| d).unwrap_or("");
            assert!(
                digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
                "{from}: a base image pinned by digest"
            );
        }
    }
    let ignored: BTreeSet<&str> = read(".dockerignore")
        .leak()
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .collect();
    for wanted in [
        "*.tfvars",
        ".env",
        "**/application_default_credentials.json",
        "**/*credentials*.json",
    ] {
        assert!(ignored.contains(wanted), ".dockerignore lacks {wanted}");
    }
}

// --- item: the live page is behind Identity-Aware Proxy, intake's API is not -------

#[test]
fn the_live_page_is_behind_identity_aware_proxy_and_intakes_api_is_not() {
    let tf = Terraform::load();
    let spec = tf.local("live");
    assert_eq!(string(field(spec, "binary")), "intake");
    assert_eq!(strings(field(spec, "args")), ["ui"]);

    // The intake binary of the one image, in its page-only mode, as
    // intake's account; IAP on.
    let live = tf.resource("google_cloud_run_v2_service", "live");
    assert_eq!(attr_text(live, "iap_enabled"), "true");
    assert_eq!(attr_text(live, "name"), "local.live_service_name");
    let template = only_block(live, "template");
    assert_eq!(
        attr_text(template, "service_account"),
        "google_service_account.function[local.live.binary].email"
    );
    let container = only_block(template, "containers");
    assert_eq!(attr_text(container, "image"), "local.image");
    assert_eq!(
        strings_or_templates(attr(container, "command").unwrap()),
        ["/usr/local/bin/${local.live.binary}"]
    );
    assert_eq!(attr_text(container, "args"), "local.live.args");

    // A page's stream lasts as long as Cloud Run lets a request last (the
    // browser then reconnects); CPU is allocated while a request is open.
    assert_eq!(seconds(field(spec, "timeout_s")), 3600);
    assert_eq!(
        attr_text(template, "timeout"),
        "\"${local.live.timeout_s}s\""
    );
    let resources = only_block(container, "resources");
    assert_eq!(attr_text(resources, "cpu_idle"), "true");

    // The service checks IAP's assertion itself, of its own audience: the
    // project's number, the region and this service's name.
    assert_eq!(
        env_value(&tf, field(spec, "env"), "IAP_AUDIENCE").as_deref(),
        Some("local.live_iap_audience")
    );
    let audience: String = tf
        .local("live_iap_audience")
        .to_string()
        .split_whitespace()
        .collect();
    assert!(
        audience.contains(
            "\"/projects/${data.google_project.live[0].number}/locations/${var.region}/services/${local.live_service_name}\""
        ),
        "{audience}"
    );

    // Only IAP's agent may invoke it; people are let in by IAP.
    let invokers: Vec<String> = tf
        .resources("google_cloud_run_v2_service_iam_member")
        .into_values()
        .filter(|grant| attr_text(grant, "name").contains("google_cloud_run_v2_service.live"))
        .map(|grant| attr_text(grant, "member"))
        .collect();
    assert_eq!(invokers.len(), 1, "{invokers:?}");
    assert!(
        invokers[0].contains("google_project_service_identity.iap[0].email"),
        "{invokers:?}"
    );
    let viewers = tf.resource("google_iap_web_cloud_run_service_iam_member", "live_viewer");
    assert_eq!(
        attr_text(viewers, "role"),
        "\"roles/iap.httpsResourceAccessor\""
    );
    assert_eq!(
        attr_text(viewers, "for_each"),
        "toset(var.live_page_viewers)"
    );

    // Intake's API service, which Pub/Sub pushes to and API Gateway calls,
    // runs the API mode without IAP: IAP would refuse both.
    let (_, intake) = entries(tf.local("services"))
        .into_iter()
        .find(|(name, _)| name == "intake")
        .expect("intake is a service");
    assert_eq!(string(field(intake, "binary")), "intake");
    assert!(strings(field(intake, "args")).is_empty());
    for (name, service) in tf.resources("google_cloud_run_v2_service") {
        if name != "live" {
            assert!(
                attr(service, "iap_enabled").is_none(),
                "google_cloud_run_v2_service.{name} turns IAP on"
            );
        }
    }
}

// --- what `asmr doctor` expects ----------------------------------------------

/// `replace(text, from, to)`, as terraform's.
fn replace(args: FuncArgs) -> Result<Value, String> {
    let text = |i: usize| {
        args[i]
            .as_str()
            .map(str::to_string)
            .ok_or("replace takes strings")
    };
    Ok(Value::String(text(0)?.replace(&text(1)?, &text(2)?)))
}

/// Evaluates a name template of terraform with `var.project` `p`,
/// `var.prefix` `dev-`, `each.key` and `each.value`.
fn name_of(expr: &Expression, key: &str, value: Value) -> String {
    let mut ctx = Context::new();
    ctx.declare_func(
        "replace",
        FuncDef::builder()
            .param(ParamType::String)
            .param(ParamType::String)
            .param(ParamType::String)
            .build(replace),
    );
    ctx.declare_var("var", hcl::value!({ project = "p", prefix = "dev-" }));
    ctx.declare_var("each", hcl::value!({ key = (key), value = (value) }));
    match expr.evaluate(&ctx) {
        Ok(Value::String(s)) => s,
        other => panic!("{expr} is not a name: {other:?}"),
    }
}

/// The default of a variable of variables.tf.
fn variable_default(tf: &Terraform, name: &str) -> Value {
    let block = tf
        .blocks
        .iter()
        .find(|b| b.identifier() == "variable" && label(b, 0) == name)
        .unwrap_or_else(|| panic!("no variable {name}"));
    attr(block.body(), "default")
        .unwrap_or_else(|| panic!("variable {name} has no default"))
        .evaluate(&Context::new())
        .unwrap()
}

#[test]
fn what_the_doctor_expects_is_what_terraform_deploys() {
    use shared::doctor::expected::{
        APIS, FUNCTIONS, NOTIFIED_FOLDERS, Names, PUSH_SUBSCRIPTIONS, ProjectRole, SCHEDULER_JOBS,
        Topic,
    };
    let tf = Terraform::load();
    let names = Names {
        project: "p".into(),
        prefix: "dev-".into(),
        database: "(default)".into(),
    };

    // The APIs.
    let apis = match tf.local("apis") {
        Expression::FuncCall(call) if call.name.name.as_str() == "toset" => strings(&call.args[0]),
        other => panic!("apis must be toset([...]), found {other}"),
    };
    assert_eq!(
        apis.iter().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(APIS),
        "terraform/apis.tf and shared::doctor::expected::APIS"
    );

    // The functions' accounts and their project roles.
    let account = attr(
        tf.resource("google_service_account", "function"),
        "account_id",
    )
    .unwrap();
    let declared: Vec<(String, Vec<ProjectRole>)> = entries(tf.local("functions"))
        .into_iter()
        .map(|(function, f)| {
            let roles = match field(f, "project_roles") {
                Expression::Array(roles) => roles
                    .iter()
                    .map(|role| match role.to_string().as_str() {
                        "\"roles/datastore.user\"" => ProjectRole::DatastoreUser,
                        "local.vertex_caller" => ProjectRole::VertexCaller,
                        other => panic!("{function}: a role the doctor does not know: {other}"),
                    })
                    .collect(),
                other => panic!("project_roles must be a list, found {other}"),
            };
            assert_eq!(
                format!(
                    "{}@p.iam.gserviceaccount.com",
                    name_of(account, &function, Value::Null)
                ),
                names.account(&function)
            );
            (function, roles)
        })
        .collect();
    let expected: Vec<(String, Vec<ProjectRole>)> = FUNCTIONS
        .iter()
        .map(|(f, roles)| (f.to_string(), roles.to_vec()))
        .collect();
    assert_eq!(
        declared.iter().cloned().collect::<BTreeMap<_, _>>(),
        expected.into_iter().collect::<BTreeMap<_, _>>(),
        "local.functions and shared::doctor::expected::FUNCTIONS"
    );
    let caller_role = format!(
        "projects/p/roles/{}",
        name_of(tf.local("vertex_caller_id"), "", Value::Null)
    );
    assert_eq!(caller_role, names.role(ProjectRole::VertexCaller));
    let push = attr(tf.resource("google_service_account", "push"), "account_id").unwrap();
    assert_eq!(
        format!(
            "{}@p.iam.gserviceaccount.com",
            name_of(push, "", Value::Null)
        ),
        names.account("push")
    );
    let condition = field(
        field(tf.local("database_condition"), "roles/datastore.user"),
        "title",
    );
    assert!(
        names
            .database_condition()
            .ends_with(&format!(",title={}", name_of(condition, "", Value::Null))),
        "{}",
        names.database_condition()
    );

    // The topics.
    let topics: BTreeMap<String, String> = entries(tf.local("topics"))
        .into_iter()
        .map(|(key, name)| (key, name_of(name, "", Value::Null)))
        .collect();
    let expected: BTreeMap<String, String> = Topic::ALL
        .iter()
        .map(|t| (t.key().to_string(), t.name(&names.topics())))
        .collect();
    assert_eq!(topics, expected);

    // The push subscriptions: name, topic, service, path, filter, and
    // whether the default settings deploy them.
    let mut defaults = hcl::Map::new();
    for variable in ["auto_promote", "storage_events"] {
        defaults.insert(variable.to_string(), variable_default(&tf, variable));
    }
    let mut ctx = Context::new();
    ctx.declare_var("var", Value::Object(defaults));
    let subscription_name =
        attr(tf.resource("google_pubsub_subscription", "push"), "name").unwrap();
    let declared = entries(tf.local("push_subscriptions"));
    assert_eq!(declared.len(), PUSH_SUBSCRIPTIONS.len());
    for subscription in PUSH_SUBSCRIPTIONS {
        let (_, s) = declared
            .iter()
            .find(|(key, _)| key == subscription.key)
            .unwrap_or_else(|| panic!("terraform has no push subscription {}", subscription.key));
        let service = string(field(s, "service"));
        assert_eq!(service, subscription.service);
        assert_eq!(string(field(s, "topic")), subscription.topic.key());
        assert_eq!(string(field(s, "path")), subscription.path);
        let filter = match field(s, "filter") {
            Expression::Null => None,
            other => Some(string(other)),
        };
        assert_eq!(
            filter.as_deref(),
            subscription.filter,
            "{}",
            subscription.key
        );
        let deployed = field(s, "enabled").evaluate(&ctx).unwrap() == Value::Bool(true);
        assert_eq!(
            subscription.only_with.is_none(),
            deployed,
            "{}: only_with says whether the default settings leave it out",
            subscription.key
        );
        let name = name_of(
            subscription_name,
            subscription.key,
            hcl::value!({ service = (service.clone()) }),
        );
        assert_eq!(name, names.subscription(&subscription));
    }

    // The scheduler jobs, and which the default schedules turn on.
    let schedules_type: String = attr(
        tf.blocks
            .iter()
            .find(|b| b.identifier() == "variable" && label(b, 0) == "schedules")
            .unwrap()
            .body(),
        "type",
    )
    .unwrap()
    .to_string()
    .split_whitespace()
    .collect();
    let jobs = match tf.local("schedules") {
        Expression::ForExpr(f) => entries(&f.collection_expr)
            .into_iter()
            .map(|(job, cron)| {
                let setting = cron
                    .to_string()
                    .trim_start_matches("var.schedules.")
                    .to_string();
                (
                    job,
                    schedules_type.contains(&format!("{setting}=optional(string,\"")),
                )
            })
            .collect::<Vec<_>>(),
        other => panic!("schedules must be a for expression, found {other}"),
    };
    let sweep = tf.resource("google_cloud_scheduler_job", "webhook_sweep");
    let mut declared: Vec<(String, bool)> = jobs;
    declared.push((
        "webhook-sweep".into(),
        schedules_type.contains("webhook_sweep=optional(string,\""),
    ));
    let expected: Vec<(String, bool)> = SCHEDULER_JOBS
        .iter()
        .map(|(j, d)| (j.to_string(), *d))
        .collect();
    assert_eq!(
        declared, expected,
        "terraform/scheduler.tf and SCHEDULER_JOBS"
    );
    let run = attr(tf.resource("google_cloud_scheduler_job", "run"), "name").unwrap();
    assert_eq!(
        name_of(run, "janitor", Value::Null),
        names.scheduler_job("janitor")
    );
    assert_eq!(
        name_of(attr(sweep, "name").unwrap(), "", Value::Null),
        names.scheduler_job("webhook-sweep")
    );

    // The services pushed to, and the audiences of their tokens.
    let service = attr(tf.resource("google_cloud_run_v2_service", "stage"), "name").unwrap();
    assert_eq!(
        name_of(service, "intake", Value::Null),
        names.service("intake")
    );
    let audiences = tf.local("push_audiences").to_string();
    assert!(
        audiences.contains("\"${var.project}/${var.prefix}asmr-${name}\""),
        "{audiences}"
    );
    assert_eq!(names.audience("intake"), "p/dev-asmr-intake");

    // The output bucket and its notifications.
    let bucket = attr(tf.resource("google_storage_bucket", "output"), "name").unwrap();
    assert_eq!(name_of(bucket, "", Value::Null), names.output_bucket());
    let notification = tf.resource("google_storage_notification", "output_finalized");
    assert_eq!(
        attr_text(notification, "topic"),
        "google_pubsub_topic.topic[\"gcs_events\"].id"
    );
    assert_eq!(
        strings(attr(notification, "event_types").unwrap()),
        ["OBJECT_FINALIZE"]
    );
    let for_each: String = attr_text(notification, "for_each")
        .split_whitespace()
        .collect();
    let folders: Vec<String> = NOTIFIED_FOLDERS
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect();
    assert!(
        for_each.contains(&format!("toset([{}])", folders.join(","))),
        "{for_each}"
    );
}
