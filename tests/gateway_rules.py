#!/usr/bin/env python3
"""Checks the API Gateway config against the rules Google documents for one.

    gateway_rules.py [--self-test] [REPO]

renders the gateway's config as terraform/gateway.tf does (api/openapi.json,
the operations and top level merged with the extensions in api/gateway.json,
and the values terraform fills in at apply time: the backend's address, JWT
audience and deadline, the quota's value, the JWT's security definition),
once without and once with api_gateway.jwt, and checks each. With
--self-test it then plants each kind of mistake in a copy and fails unless
every one is caught. Exit status 1 and one line per problem when something
is wrong. Standard library only.

The rules, and where each comes from:

 1. The config is Swagger (OpenAPI) 2.0, the format the 2.0 extensions below
    belong to. https://cloud.google.com/api-gateway/docs/openapi-overview
 2. A path parameter is a whole path segment (`/items/{id}`, never
    `/items/x_{id}`); a last segment may end in a custom verb after the
    parameter (`/v1/jobs/{id}:approve`), the `Verb` of Google's HTTP path
    template. https://cloud.google.com/api-gateway/docs/openapi-limitations
    ("URL Path Templating"), and google/api/http.proto in
    github.com/googleapis/googleapis (the template grammar)
 3. Every operation has an operationId, unique in the document (the gateway
    names its methods by it). https://swagger.io/specification/v2/
    ("operationId") and https://cloud.google.com/api-gateway/docs/openapi-overview
 4. No `$ref` outside the document.
    https://cloud.google.com/api-gateway/docs/openapi-limitations ("External
    Type References")
 5. No port in `host`. https://cloud.google.com/api-gateway/docs/openapi-limitations
    ("Custom Port in Host Address")
 6. `x-google-allow` is absent or `configured`, so that a route the document
    does not name stops at the gateway.
    https://cloud.google.com/api-gateway/docs/oasv2-extensions ("x-google-allow")
 7. Every operation has an `x-google-backend` with an https `address`
    without a path, `path_translation` APPEND_PATH_TO_ADDRESS (CONSTANT_ADDRESS
    would send every call to the address itself, with the path's parameters
    as a query), a `jwt_audience`, and a `deadline` longer than intake's own
    time limit of a request (the default, 15 s, would cut intake short: a
    batch, or a store that retries, takes longer).
    https://cloud.google.com/api-gateway/docs/oasv2-extensions ("x-google-backend")
 8. Quotas: each metric of `x-google-management.metrics` has a name, INT64
    and DELTA; each limit names a metric of the document, the unit
    `1/min/{project}` (per minute and per consumer project is the only kind
    there is) and a positive whole STANDARD value; every operation's
    `x-google-quota.metricCosts` names defined metrics with positive whole
    costs, and every operation has one (the ceiling covers every call).
    https://cloud.google.com/endpoints/docs/openapi/quotas-configure (the
    extensions, which API Gateway shares:
    https://cloud.google.com/api-gateway/docs/oasv2-extensions)
 9. Security: every requirement names a definition of the document; an API
    key requirement is never an alternative to another scheme, the empty
    requirement `{}` (optional security) only to an API key, and two OAuth2
    schemes are never required together; an OAuth2 (JWT) definition has
    `x-google-issuer`, an https `x-google-jwks_uri` and `x-google-audiences`.
    https://cloud.google.com/api-gateway/docs/openapi-limitations ("Multiple
    Security Requirements") and
    https://cloud.google.com/api-gateway/docs/oasv2-extensions
    ("securityDefinitions")
10. A tenant's key never goes where the gateway looks for a Google API key:
    an operation that names no API key definition has its API key read from
    the query parameters `key` and `api_key` and the header `x-api-key` (the
    tenants' header) and sent to Service Control with its quota check and
    report, which would refuse it as an invalid Google API key and log it.
    So without JWTs every operation names an API key definition located
    elsewhere (made optional with `{}`); with JWTs (which cannot be combined
    with an optional key) callers send no x-api-key through the gateway, as
    the README says. Google's proxy, ESPv2:
    github.com/GoogleCloudPlatform/esp-v2,
    src/envoy/http/service_control/config_parser.cc (the default places of
    an API key) and handler_impl.cc (the key of every quota check)
"""

import copy
import json
import pathlib
import re
import sys

# Stand-ins for what terraform knows only at apply time.
ADDRESS = "https://intake-abc123-uc.a.run.app"
AUDIENCE = "my-project/asmr-intake"
REQUESTS_PER_MINUTE = 6000
JWT = {
    "issuer": "https://accounts.google.com",
    "jwks_uri": "https://www.googleapis.com/oauth2/v3/certs",
    "audiences": ["my-project-consumers"],
}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch"}
# Where ESPv2 reads an API key of an operation that names no API key
# definition (rule 10).
DEFAULT_KEY_PLACES = {("query", "key"), ("query", "api_key"), ("header", "x-api-key")}
SEGMENT = re.compile(r"^(?:[A-Za-z0-9._~!$&'()*+,;=@-]+|\{[A-Za-z_][A-Za-z0-9_.]*\})$")
VERB = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")


def intake_times(repo):
    """Intake's own time limit of a request and Cloud Run's, in seconds, as
    terraform/run.tf sets them."""
    text = (repo / "terraform/run.tf").read_text()
    block = re.search(r"\n    intake = \{(.*?)\n    \}", text, re.S)
    if not block:
        sys.exit("gateway_rules: terraform/run.tf has no intake service block")
    number = lambda name: int(re.search(rf"\n\s*{name}\s*=\s*(\d+)", block.group(1)).group(1))
    return number("handler_timeout_s"), number("timeout_s")


def operations(document):
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if method in METHODS:
                yield path, method, operation


def render(document, overlay, deadline, jwt):
    """The gateway's config, as terraform/gateway.tf builds it."""
    config = copy.deepcopy(document)
    backend = dict(overlay["operation"]["x-google-backend"], address=ADDRESS, jwt_audience=AUDIENCE, deadline=deadline)
    security = [{"google_id_token": []}] if jwt else overlay["operation"]["security"]
    for _, _, operation in operations(config):
        operation["x-google-backend"] = copy.deepcopy(backend)
        operation["x-google-quota"] = copy.deepcopy(overlay["operation"]["x-google-quota"])
        operation["security"] = copy.deepcopy(security)
    definitions = copy.deepcopy(overlay["document"]["securityDefinitions"])
    if jwt:
        definitions["google_id_token"] = {
            "type": "oauth2",
            "authorizationUrl": "",
            "flow": "implicit",
            "x-google-issuer": jwt["issuer"],
            "x-google-jwks_uri": jwt["jwks_uri"],
            "x-google-audiences": ",".join(jwt["audiences"]),
        }
    config["securityDefinitions"] = definitions
    management = copy.deepcopy(overlay["document"]["x-google-management"])
    for limit in management["quota"]["limits"]:
        limit["values"] = {"STANDARD": REQUESTS_PER_MINUTE}
    config["x-google-management"] = management
    return config


def refs(value):
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "$ref" and isinstance(inner, str):
                yield inner
            else:
                yield from refs(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from refs(inner)


def is_whole(value):
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check(config, handler_timeout, jwt):
    """The broken rules of `config`, one line each."""
    problems = []
    say = problems.append
    if config.get("swagger") != "2.0":
        say("rule 1: the config is not Swagger 2.0")
    if ":" in str(config.get("host", "")):
        say(f"rule 5: host {config['host']!r} names a port")
    if config.get("x-google-allow", "configured") != "configured":
        say("rule 6: x-google-allow lets routes the document does not name through")
    for ref in refs(config):
        if not ref.startswith("#/"):
            say(f"rule 4: $ref {ref!r} points outside the document")

    metrics = config.get("x-google-management", {}).get("metrics", [])
    metric_names = {m.get("name") for m in metrics}
    for metric in metrics:
        if not metric.get("name") or metric.get("valueType") != "INT64" or metric.get("metricKind") != "DELTA":
            say(f"rule 8: metric {metric.get('name')!r} is not a named INT64 DELTA metric")
    for limit in config.get("x-google-management", {}).get("quota", {}).get("limits", []):
        name = limit.get("name")
        if limit.get("metric") not in metric_names:
            say(f"rule 8: limit {name!r} counts metric {limit.get('metric')!r}, which is not defined")
        if limit.get("unit") != "1/min/{project}":
            say(f"rule 8: limit {name!r} has unit {limit.get('unit')!r}, not 1/min/{{project}}")
        if not is_whole(limit.get("values", {}).get("STANDARD")):
            say(f"rule 8: limit {name!r} has no positive whole STANDARD value")

    definitions = config.get("securityDefinitions", {})
    for name, definition in definitions.items():
        if definition.get("type") == "oauth2":
            if not definition.get("x-google-issuer") or not definition.get("x-google-audiences"):
                say(f"rule 9: JWT definition {name!r} lacks x-google-issuer or x-google-audiences")
            if not str(definition.get("x-google-jwks_uri", "")).startswith("https://"):
                say(f"rule 9: JWT definition {name!r} has no https x-google-jwks_uri")

    seen_ids = {}
    for path, method, operation in operations(config):
        where = f"{method.upper()} {path}"
        segments = path.strip("/").split("/")
        last = segments[-1]
        if ":" in last:
            last, verb = last.split(":", 1)
            if not VERB.match(verb) or not last:
                say(f"rule 2: {where}: {verb!r} is not a custom verb")
        for segment in segments[:-1] + [last]:
            if not SEGMENT.match(segment):
                say(f"rule 2: {where}: segment {segment!r} is not a literal or a whole parameter")
        operation_id = operation.get("operationId")
        if not operation_id:
            say(f"rule 3: {where} has no operationId")
        elif operation_id in seen_ids:
            say(f"rule 3: {where} and {seen_ids[operation_id]} share operationId {operation_id!r}")
        else:
            seen_ids[operation_id] = where

        backend = operation.get("x-google-backend")
        if not isinstance(backend, dict):
            say(f"rule 7: {where} has no x-google-backend")
        else:
            address = str(backend.get("address", ""))
            if not re.match(r"^https://[^/]+$", address):
                say(f"rule 7: {where}: backend address {address!r} is not an https address without a path")
            if backend.get("path_translation") != "APPEND_PATH_TO_ADDRESS":
                say(f"rule 7: {where}: path_translation is not APPEND_PATH_TO_ADDRESS")
            if not backend.get("jwt_audience"):
                say(f"rule 7: {where}: the backend has no jwt_audience")
            deadline = backend.get("deadline")
            if not isinstance(deadline, (int, float)) or isinstance(deadline, bool):
                say(f"rule 7: {where}: no deadline, so the gateway gives up after 15 s")
            elif deadline <= handler_timeout:
                say(f"rule 7: {where}: deadline {deadline} s is not longer than intake's {handler_timeout} s")

        costs = operation.get("x-google-quota", {}).get("metricCosts")
        if not costs:
            say(f"rule 8: {where} counts against no quota")
        for metric, cost in (costs or {}).items():
            if metric not in metric_names or not is_whole(cost):
                say(f"rule 8: {where}: cost {cost!r} of {metric!r} is not a positive whole cost of a defined metric")

        requirements = operation.get("security", config.get("security", []))
        kinds = []
        for requirement in requirements:
            names = list(requirement)
            for name in names:
                if name not in definitions:
                    say(f"rule 9: {where}: security names {name!r}, which is not defined")
            kinds.append({definitions.get(name, {}).get("type") for name in names})
        alternatives = [k for k in kinds if k]
        if len(alternatives) > 1 and any("apiKey" in k for k in alternatives):
            say(f"rule 9: {where}: an API key is one of several alternative requirements")
        if any(not k for k in kinds) and any("oauth2" in k for k in kinds):
            say(f"rule 9: {where}: an empty (optional) requirement beside an OAuth2 one")
        if any(sum(1 for name in requirement if definitions.get(name, {}).get("type") == "oauth2") > 1 for requirement in requirements):
            say(f"rule 9: {where}: two OAuth2 schemes required together")

        key_places = {
            (definitions[name].get("in"), str(definitions[name].get("name", "")).lower())
            for requirement in requirements
            for name in requirement
            if definitions.get(name, {}).get("type") == "apiKey"
        }
        if jwt:
            continue
        if not key_places:
            say(f"rule 10: {where} names no API key definition, so the gateway reads x-api-key (the tenants' key) as a Google API key")
        elif key_places & DEFAULT_KEY_PLACES:
            say(f"rule 10: {where}: the API key is read from {sorted(key_places & DEFAULT_KEY_PLACES)}, where tenants' keys may be")
    return problems


def load(repo):
    document = json.loads((repo / "api/openapi.json").read_text())
    overlay = json.loads((repo / "api/gateway.json").read_text())
    return document, overlay


def check_repo(repo, document=None, overlay=None):
    """Every problem of both renders (without and with JWTs)."""
    loaded = load(repo)
    document = loaded[0] if document is None else document
    overlay = loaded[1] if overlay is None else overlay
    handler_timeout, deadline = intake_times(repo)
    problems = []
    for jwt in (None, JWT):
        mode = "with JWTs" if jwt else "with keys"
        config = render(document, overlay, deadline, jwt)
        problems += [f"{mode}: {p}" for p in check(config, handler_timeout, jwt)]
    return problems


# Each planted mistake: what it breaks, and how to make it in (document, overlay).
def plants():
    def op(document, method, path):
        return document["paths"][path][method]

    def first_path(document):
        return next(p for p in document["paths"] if "{" in p and ":" not in p)

    def partial_segment(d, o):
        path = first_path(d)
        d["paths"][path.replace("{", "x_{")] = d["paths"].pop(path)

    def bad_verb(d, o):
        path = next(p for p in d["paths"] if ":" in p)
        d["paths"][path.replace(":", ":1")] = d["paths"].pop(path)

    def duplicate_id(d, o):
        ids = [operation for _, _, operation in operations(d)]
        ids[1]["operationId"] = ids[0]["operationId"]

    def external_ref(d, o):
        next(iter(d["definitions"].values()))["$ref"] = "https://example.com/schema.json"

    def host_port(d, o):
        d["host"] = "api.example.com:8443"

    def allow_all(d, o):
        d["x-google-allow"] = "all"

    def swagger_3(d, o):
        d["swagger"] = "3.0"

    def constant_address(d, o):
        o["operation"]["x-google-backend"]["path_translation"] = "CONSTANT_ADDRESS"

    def day_quota(d, o):
        o["document"]["x-google-management"]["quota"]["limits"][0]["unit"] = "1/d/{project}"

    def unknown_metric(d, o):
        o["operation"]["x-google-quota"]["metricCosts"] = {"other-requests": 1}

    def gauge_metric(d, o):
        o["document"]["x-google-management"]["metrics"][0]["metricKind"] = "GAUGE"

    def tenant_header_as_google_key(d, o):
        o["document"]["securityDefinitions"]["google_api_key"]["name"] = "x-api-key"

    def no_key_definition(d, o):
        o["operation"]["security"] = [{}]

    def undefined_scheme(d, o):
        o["operation"]["security"] = [{"nobody": []}, {}]

    def key_or_jwt(d, o):
        o["document"]["securityDefinitions"]["jwt"] = {
            "type": "oauth2",
            "flow": "implicit",
            "authorizationUrl": "",
            "x-google-issuer": "https://accounts.google.com",
            "x-google-jwks_uri": "https://www.googleapis.com/oauth2/v3/certs",
            "x-google-audiences": "a",
        }
        o["operation"]["security"] = [{"google_api_key": []}, {"jwt": []}]

    def jwt_without_issuer(d, o):
        o["document"]["securityDefinitions"]["jwt"] = {"type": "oauth2", "flow": "implicit", "authorizationUrl": ""}

    return [
        ("rule 2", partial_segment),
        ("rule 2", bad_verb),
        ("rule 3", duplicate_id),
        ("rule 4", external_ref),
        ("rule 5", host_port),
        ("rule 6", allow_all),
        ("rule 1", swagger_3),
        ("rule 7", constant_address),
        ("rule 8", day_quota),
        ("rule 8", unknown_metric),
        ("rule 8", gauge_metric),
        ("rule 10", tenant_header_as_google_key),
        ("rule 10", no_key_definition),
        ("rule 9", undefined_scheme),
        ("rule 9", key_or_jwt),
        ("rule 9", jwt_without_issuer),
    ]


def self_test(repo):
    """Fails unless every planted mistake is caught, and the render misses
    no deadline and no operation."""
    document, overlay = load(repo)
    handler_timeout, deadline = intake_times(repo)
    missed = []
    for rule, plant in plants():
        d, o = copy.deepcopy(document), copy.deepcopy(overlay)
        plant(d, o)
        found = check_repo(repo, d, o)
        if not any(f"{rule}:" in p for p in found):
            missed.append(f"{plant.__name__} ({rule})")
    # Rule 7 against the deadline itself, and against its absence.
    config = render(document, overlay, handler_timeout, None)
    if not any("rule 7" in p for p in check(config, handler_timeout, None)):
        missed.append("a deadline no longer than intake's (rule 7)")
    config = render(document, overlay, deadline, None)
    del next(operations(config))[2]["x-google-backend"]["deadline"]
    if not any("rule 7" in p for p in check(config, handler_timeout, None)):
        missed.append("an operation without a deadline (rule 7)")
    return missed


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    repo = pathlib.Path(args[0] if args else ".")
    problems = check_repo(repo)
    for problem in problems:
        print(f"gateway_rules: {problem}")
    if problems:
        return 1
    document, _ = load(repo)
    count = sum(1 for _ in operations(document))
    print(f"gateway_rules: the gateway config of {count} operations keeps Google's rules (with keys and with JWTs)")
    if "--self-test" in argv:
        missed = self_test(repo)
        for name in missed:
            print(f"gateway_rules: self-test: the planted {name} was not caught")
        if missed:
            return 1
        print(f"gateway_rules: each of {len(plants()) + 2} planted mistakes was caught")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
