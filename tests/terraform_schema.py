#!/usr/bin/env python3
"""Checks the terraform in a directory against the providers' own schemas.

    terraform_schema.py [--self-test] DIR

checks DIR (terraform/); with --self-test, then also plants mistakes in
copies of DIR and fails unless each one is caught.

The schemas come from the providers' generated CDK bindings on PyPI
(cdktn-provider-google, -google-beta, -random, -time), which tests/run installs at
pinned versions: each wheel holds a jsii assembly (JSON) that describes every
resource and data source of one provider version, its arguments, which of
them are optional, and its nested blocks; the docs of each property carry the
registry anchor with its snake_case name. Every resource, data and provider
block is checked, recursively through nested and dynamic blocks: unknown
types, unknown or misplaced arguments and blocks, a block written as an
argument or the other way round, two blocks where one is allowed, missing
required arguments and blocks. The versions pinned in required_providers
must be the versions the assemblies describe, so the check is of what
`terraform init` installs.

The .tf files are parsed with python-hcl2. Exit status 1 and one line per
problem when something is wrong.
"""

import gzip
import importlib.util
import io
import json
import pathlib
import re
import shutil
import sys
import tarfile
import tempfile

# The provider local names used in required_providers, and their bindings.
BINDINGS = {
    "google": "cdktn_provider_google",
    "google-beta": "cdktn_provider_google_beta",
    "random": "cdktn_provider_random",
    "time": "cdktn_provider_time",
}
# Arguments and blocks terraform itself gives every resource or data block.
META_ARGUMENTS = {"count", "for_each", "depends_on", "provider", "lifecycle", "provisioner", "connection"}
LINK = re.compile(r"\{@link (https://registry\.terraform\.io/providers/hashicorp/([a-z-]+)/([0-9.]+)/docs\S*) ([a-z0-9_-]+)\}")
ANCHOR = re.compile(r"#([a-z0-9_]+) [A-Za-z0-9]+#")


class Schema:
    """One provider version: its resources, data sources and provider block."""

    def __init__(self, local_name):
        self.local_name = local_name
        assembly = load_assembly(BINDINGS[local_name])
        self.types = assembly["types"]
        self.structs = {}
        self.version = None
        self.resources, self.data, self.provider = {}, {}, None
        for type_ in self.types.values():
            if type_["kind"] != "class":
                continue
            match = LINK.search(type_.get("docs", {}).get("summary", ""))
            if not match:
                continue
            url, _, version, name = match.groups()
            config = next(
                (p["type"]["fqn"] for p in type_.get("initializer", {}).get("parameters", []) if p["name"] == "config"),
                None,
            )
            if config is None:
                continue
            self.version = version
            if "/docs/resources/" in url:
                self.resources[name] = config
            elif "/docs/data-sources/" in url:
                self.data[name] = config
            elif url.endswith("/docs"):
                self.provider = config
        if not self.resources or self.version is None:
            sys.exit(f"terraform_schema: the {BINDINGS[local_name]} assembly describes no resource")

    def struct(self, fqn):
        """{snake_name: (required, block)} of a config struct, inherited properties included;
        block is None for an argument, else (struct fqn, at most one)."""
        if fqn not in self.structs:
            self.structs[fqn] = self.read_struct(fqn)
        return self.structs[fqn]

    def read_struct(self, fqn):
        properties = {}
        type_ = self.types[fqn]
        for parent in type_.get("interfaces", []):
            if parent in self.types:
                properties.update(self.struct(parent))
        for prop in type_.get("properties", []):
            docs = prop.get("docs", {})
            anchor = ANCHOR.search(docs.get("remarks", "") + " " + docs.get("summary", ""))
            name = anchor.group(1) if anchor else re.sub(r"(?<!^)([A-Z])", r"_\1", prop["name"]).lower()
            properties[name] = (not prop.get("optional", False), self.block_of(prop["type"]))
        return properties

    def block_of(self, type_):
        """(struct fqn, single) when a property is a nested block."""
        if "union" in type_:
            for option in type_["union"]["types"]:
                found = self.block_of(option)
                if found:
                    return found
            return None
        if "collection" in type_ and type_["collection"]["kind"] == "array":
            inner = type_["collection"]["elementtype"]
            if "fqn" in inner and self.types.get(inner["fqn"], {}).get("datatype"):
                return (inner["fqn"], False)
            return None
        if "fqn" in type_ and self.types.get(type_["fqn"], {}).get("datatype"):
            return (type_["fqn"], True)
        return None


def load_assembly(package):
    """The jsii assembly inside an installed binding, without importing it
    (importing starts the jsii runtime, which needs Node.js)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"terraform_schema: {package} is not installed (tests/run installs it)")
    root = pathlib.Path(list(spec.submodule_search_locations)[0])
    bundles = sorted(root.glob("_jsii/*.jsii.tgz"))
    if len(bundles) != 1:
        sys.exit(f"terraform_schema: expected one jsii bundle in {root / '_jsii'}, found {len(bundles)}")
    with tarfile.open(bundles[0]) as bundle:
        member = bundle.extractfile("package/.jsii")
        assembly = json.load(member)
    # Large assemblies are stored compressed, with a redirect to the file.
    if assembly.get("schema") == "jsii/file-redirect":
        with tarfile.open(bundles[0]) as bundle:
            raw = bundle.extractfile("package/" + assembly["filename"]).read()
        if assembly.get("compression") == "gzip":
            raw = gzip.GzipFile(fileobj=io.BytesIO(raw)).read()
        assembly = json.loads(raw)
    return assembly


# --- the terraform side ------------------------------------------------------


def unquote(label):
    return label[1:-1] if len(label) >= 2 and label[0] == '"' and label[-1] == '"' else label


def is_block_list(value):
    return isinstance(value, list) and value and all(isinstance(v, dict) and v.get("__is_block__") for v in value)


def parse(directory):
    import hcl2

    files = sorted(pathlib.Path(directory).glob("*.tf"))
    if not files:
        sys.exit(f"terraform_schema: no .tf file in {directory}")
    parsed = []
    for path in files:
        with open(path) as handle:
            parsed.append((path.name, hcl2.load(handle)))
    return parsed


def fields(body):
    """The arguments and blocks of a body: {name: value}, keys as written."""
    return {key: value for key, value in body.items() if not key.startswith("__")}


def check_body(schema, fqn, body, where, problems, meta=False):
    known = schema.struct(fqn)
    given = set()
    for key, value in fields(body).items():
        if key == "dynamic":
            for dynamic in value:
                for label, spec in fields(dynamic).items():
                    name = unquote(label)
                    given.add(name)
                    check_dynamic(schema, known, name, spec, f"{where}.dynamic.{name}", problems)
            continue
        if meta and key in META_ARGUMENTS:
            continue
        given.add(key)
        if key not in known:
            kind = "block" if is_block_list(value) else "argument"
            problems.append(f"{where}: unknown {kind} {key}")
            continue
        _, block = known[key]
        if block is None:
            if is_block_list(value):
                problems.append(f"{where}: {key} is an argument, written as a block")
            continue
        if not is_block_list(value):
            problems.append(f"{where}: {key} is a block, written as an argument")
            continue
        nested, single = block
        if single and len(value) > 1:
            problems.append(f"{where}: {key} is allowed once, found {len(value)} blocks")
        for i, inner in enumerate(value):
            check_body(schema, nested, inner, f"{where}.{key}" + (f"[{i}]" if len(value) > 1 else ""), problems)
    for name, (required, _) in known.items():
        if required and name not in given:
            problems.append(f"{where}: required {name} is missing")


def check_dynamic(schema, known, name, spec, where, problems):
    if name not in known:
        problems.append(f"{where}: unknown block {name}")
        return
    _, block = known[name]
    if block is None:
        problems.append(f"{where}: {name} is an argument, not a block")
        return
    extra = set(fields(spec)) - {"for_each", "iterator", "labels", "content"}
    if extra or "for_each" not in spec:
        problems.append(f"{where}: a dynamic block takes for_each, iterator, labels and content (found {sorted(fields(spec))})")
    content = spec.get("content")
    if not is_block_list(content) or len(content) != 1:
        problems.append(f"{where}: needs exactly one content block")
        return
    check_body(schema, block[0], content[0], f"{where}.content", problems)


def provider_of(type_name, body):
    explicit = body.get("provider")
    if explicit:
        return explicit.strip("${}").split(".")[0]
    return type_name.split("_")[0]


def check(directory, schemas):
    problems = []
    for filename, document in parse(directory):
        for block in document.get("terraform", []):
            for required in block.get("required_providers", []):
                for local_name, spec in fields(required).items():
                    schema = schemas.get(local_name)
                    if schema is None:
                        problems.append(f"{filename}: provider {local_name} has no schema to check against")
                    elif unquote(str(spec.get("version", ""))) != schema.version:
                        problems.append(
                            f"{filename}: {local_name} is pinned to {spec.get('version')}, the schema checked is {schema.version}: pin exactly the version checked"
                        )
        for kind, table in (("resource", "resources"), ("data", "data")):
            for entry in document.get(kind, []):
                for type_label, named in fields(entry).items():
                    type_name = unquote(type_label)
                    for name_label, body in fields(named).items():
                        where = f"{filename}: {'data.' if kind == 'data' else ''}{type_name}.{unquote(name_label)}"
                        schema = schemas.get(provider_of(type_name, body))
                        if schema is None:
                            problems.append(f"{where}: no schema for provider {provider_of(type_name, body)}")
                            continue
                        fqn = getattr(schema, table).get(type_name)
                        if fqn is None:
                            problems.append(f"{where}: {schema.local_name} {schema.version} has no {kind} type {type_name}")
                            continue
                        check_body(schema, fqn, body, where, problems, meta=True)
        for entry in document.get("provider", []):
            for label, body in fields(entry).items():
                schema = schemas.get(unquote(label))
                if schema is None:
                    problems.append(f"{filename}: no schema for provider {unquote(label)}")
                else:
                    check_body(schema, schema.provider, body, f"{filename}: provider {unquote(label)}", problems, meta=True)
    return problems


# --- self-test ---------------------------------------------------------------

# A mistake planted in a copy of the directory: (file, text, replacement,
# what the report must say).
PLANTED = [
    ("run.tf", "max_instance_request_concurrency =", "max_concurrency =", "unknown argument max_concurrency"),
    ("run.tf", "    execution_environment            =", "    cpu_idle = true\n    execution_environment =", "unknown argument cpu_idle"),
    ("pubsub.tf", '  payload_format     = "JSON_API_V1"\n', "", "required payload_format is missing"),
    ("run.tf", "          mount_options = local", "          mount_option = local", "dynamic.volumes.content.gcs: unknown argument mount_option"),
    ('pubsub.tf', 'resource "google_pubsub_topic" "topic"', 'resource "google_pubsub_topics" "topic"', "has no resource type google_pubsub_topics"),
    ("run.tf", "          value = env.value", "          val = env.value", "dynamic.env.content: unknown argument val"),
    ("run.tf", "    scaling {", "    scaling = {}\n    scalingx {", "scaling is a block, written as an argument"),
    ("storage.tf", "  versioning {\n    enabled = true\n  }", "  versioning {\n    enabled = true\n  }\n  versioning {\n    enabled = true\n  }", "versioning is allowed once"),
    ("versions.tf", '      version = "7.46.1"', '      version = "~> 7.0"', "pin exactly the version checked"),
]


def self_test(directory, schemas):
    failures = []
    for filename, text, replacement, expected in PLANTED:
        with tempfile.TemporaryDirectory() as scratch:
            copy = pathlib.Path(scratch) / "terraform"
            shutil.copytree(directory, copy, ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
            path = copy / filename
            source = path.read_text()
            if text not in source:
                failures.append(f"cannot plant {expected!r}: {text!r} is not in {filename} any more")
                continue
            path.write_text(source.replace(text, replacement, 1))
            problems = check(copy, schemas)
            if not any(expected in p for p in problems):
                failures.append(f"planted {expected!r} in {filename}, not caught; the report was: {problems}")
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)
    print(f"terraform_schema: each of {len(PLANTED)} planted mistakes was caught")


def main(argv):
    args = argv[1:]
    test = bool(args) and args[0] == "--self-test"
    if test:
        args = args[1:]
    if len(args) != 1:
        sys.exit(__doc__)
    schemas = {name: Schema(name) for name in BINDINGS}
    problems = check(args[0], schemas)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(1)
    versions = ", ".join(f"{name} {s.version}" for name, s in schemas.items())
    print(f"terraform_schema: {args[0]} matches the provider schemas ({versions})")
    if test:
        self_test(args[0], schemas)


if __name__ == "__main__":
    main(sys.argv)
