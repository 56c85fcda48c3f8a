"""Checks the API's OpenAPI document (api/openapi.json).

1. The document is a valid Swagger 2.0 document, as openapi-spec-validator
   reads the specification.
2. Every example in it (a definition's `example`, a response's `examples`)
   is valid against the schema it illustrates, resolved with the document's
   own definitions (JSON Schema draft 4, which Swagger 2.0 schemas extend).

Run by tests/run with the pinned tools of tests/requirements/api.txt:

    python tests/openapi_check.py api/openapi.json
"""

import json
import sys

import jsonschema
from openapi_spec_validator import validate


def swagger_to_json_schema(schema):
    """A Swagger 2.0 schema as plain JSON Schema: `x-nullable` becomes a
    null alternative; the other `x-` keys mean nothing to a validator."""
    if isinstance(schema, list):
        return [swagger_to_json_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: swagger_to_json_schema(v) for k, v in schema.items() if not k.startswith("x-")}
    if schema.get("x-nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def examples(document):
    """Every (where, schema, example) of the document."""
    for name, schema in document.get("definitions", {}).items():
        if "example" in schema:
            yield f"definitions/{name}", schema, schema["example"]
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            for status, response in operation.get("responses", {}).items():
                for media, example in response.get("examples", {}).items():
                    if "schema" in response:
                        yield f"{method.upper()} {path} {status} {media}", response["schema"], example


def main(path):
    with open(path, encoding="utf-8") as file:
        document = json.load(file)
    validate(document)
    if document.get("swagger") != "2.0":
        sys.exit(f"{path}: not a Swagger 2.0 document")
    definitions = swagger_to_json_schema(document.get("definitions", {}))
    checked = 0
    failures = []
    for where, schema, example in examples(document):
        resolved = dict(swagger_to_json_schema(schema), definitions=definitions)
        validator = jsonschema.Draft4Validator(resolved)
        errors = sorted(validator.iter_errors(example), key=lambda e: list(e.path))
        for error in errors:
            failures.append(f"{where}: {'/'.join(map(str, error.path)) or '(root)'}: {error.message}")
        checked += 1
    if failures:
        sys.exit("examples that do not match their schema:\n  " + "\n  ".join(failures))
    operations = sum(len(ops) for ops in document["paths"].values())
    print(f"{path}: valid Swagger 2.0; {operations} operations; {checked} examples match their schemas")


if __name__ == "__main__":
    main(sys.argv[1])
