"""The TypeScript SDK's wire types (sdk/typescript/src/types.ts) against the daemon's own
OpenAPI document, made in-process by ``create_app(...).openapi()``: every schema the SDK
models has the same field names, optionality, nullability, primitive types and enum
values. A field added to or removed from a daemon model fails here until types.ts
follows; so does a new schema nobody mapped.

types.ts is read with a few regular expressions: it is hand-written in one plain style
(one field per line, ``name?: type;``), which this test also keeps it in."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hypersdk.daemon.app import create_app
from hypersdk.daemon.config import DaemonConfig

TYPES_TS = Path(__file__).parents[2] / "sdk" / "typescript" / "src" / "types.ts"

# OpenAPI schema -> the TypeScript interface that models it (responses).
RESPONSES = {
    "AnalyzeResponse": "IncrementalAnalysis",
    "CbtChangeResponse": "CBTToggleResponse",
    "CbtStatusResponse": "CBTStatus",
    "Disk": "DiskInfo",
    "ErrorBody": "ErrorInfo",
    "ErrorResponse": "ErrorResponse",
    "Generation": "Generation",
    "GenerationAudit": "GenerationAudit",
    "GenerationDisk": "GenerationDisk",
    "GenerationList": "GenerationList",
    "Health": "HealthResponse",
    "Job": "Job",
    "JobList": "JobList",
    "LastExport": "LastExport",
    "LastExportDisk": "LastExportDisk",
    "ServeSession": "ServeSession",
    "ServeSessionList": "ServeSessionList",
    "PolicyInfo": "Policy",
    "PolicyList": "PolicyList",
    "PolicyRun": "PolicyRun",
    "PolicyRunExport": "PolicyRunExport",
    "PolicyRunList": "PolicyRunList",
    "PolicyVm": "PolicyVm",
    "RetentionRules": "RetentionRules",
    "RepositoryStats": "RepositoryStats",
}
# Request bodies: the options interface (camelCase fields) and the fields the client
# takes as method arguments instead.
REQUESTS = {
    "ExportCreate": ("ExportOptions", {"vm_path"}),
    "RestoreCreate": ("RestoreOptions", set()),
    "VerifyCreate": ("VerifyOptions", set()),
    "GcCreate": ("GcOptions", set()),
    "ServeSessionCreate": ("ServeSessionOptions", set()),
    "PolicyCreate": ("PolicyOptions", set()),  # snake_case: the policies file's fields
}
# Bodies the client builds from its arguments alone (client.ts): their fields are pinned,
# so a new one fails here until the SDK's method takes it.
ARGUMENTS_ONLY = {
    "VmRequest": {"vm_path"},  # enableCBT(vmPath), disableCBT(vmPath)
    "VmOutputRequest": {"vm_path", "output"},  # getCBTStatus / analyze (vmPath, output?)
}

# Enumerations the daemon names as schema components: types.ts has a type alias of the same
# name with the same literals; fields that use them are compared by their literals.
ENUMS = {"JobKind", "JobState", "PolicyRunState"}

Atom = str | tuple[str, Any]


@dataclass
class Field:
    optional: bool
    atoms: frozenset[Atom]


def _parse_ts() -> tuple[dict[str, dict[str, Field]], dict[str, str]]:
    text = TYPES_TS.read_text()
    aliases = dict(re.findall(r"^export type (\w+)(?:<[^>]*>)? = ([^;]+);$", text, re.M))
    interfaces: dict[str, dict[str, Field]] = {}
    for name, body in re.findall(
        r"^export interface (\w+)(?:<[^>]*>)? \{\n(.*?)^\}", text, re.M | re.S
    ):
        fields = {}
        for fname, opt, kind in re.findall(r"^  (\w+)(\?)?: (.+);$", body, re.M):
            fields[fname] = Field(bool(opt), _ts_atoms(kind, aliases))
        interfaces[name] = fields
    return interfaces, aliases


def _ts_atoms(kind: str, aliases: dict[str, str]) -> frozenset[Atom]:
    atoms: set[Atom] = set()
    for part in (p.strip() for p in kind.split("|")):
        if m := re.fullmatch(r"Array<(.+)>|(\w+)\[\]", part):
            inner = _ts_atoms(m.group(1) or m.group(2), aliases)
            atoms.add(("array", inner))
        elif m := re.fullmatch(r"'([^']*)'", part):
            atoms.add(("literal", m.group(1)))
        elif part in ("string", "number", "boolean", "null"):
            atoms.add(part)
        elif part in aliases and not part.endswith("Result"):
            atoms |= _ts_atoms(aliases[part], aliases)
        elif re.fullmatch(r"[A-Z]|JobResult|\w+Result", part):
            atoms.add("object")  # a job's result: a free-form object in the schema
        else:
            atoms.add(("ref", re.sub(r"<.*>$", "", part)))
    return frozenset(atoms)


def _oa_atoms(schema: dict[str, Any], names: dict[str, str]) -> frozenset[Atom]:
    if "anyOf" in schema:
        return frozenset().union(*(_oa_atoms(s, names) for s in schema["anyOf"]))
    if "allOf" in schema and len(schema["allOf"]) == 1:
        return _oa_atoms(schema["allOf"][0], names)
    if "$ref" in schema:
        target = schema["$ref"].rsplit("/", 1)[1]
        return frozenset({("ref", names.get(target, f"<unmapped {target}>"))})
    if "enum" in schema:
        return frozenset(("literal", v) for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        return frozenset({("array", _oa_atoms(schema["items"], names))})
    simple = {"string": "string", "integer": "number", "number": "number", "boolean": "boolean"}
    if kind in simple or kind in ("null", "object"):
        return frozenset({simple.get(kind, kind)})
    raise AssertionError(f"a schema this test does not know: {schema}")


def _same_type(oa: frozenset[Atom], ts: frozenset[Atom]) -> bool:
    if "string" in oa and "string" not in ts:
        # a plain string in the schema may be a closed union of literals in TypeScript
        ts = frozenset(a for a in ts if not (isinstance(a, tuple) and a[0] == "literal"))
        ts |= {"string"}
    return oa == ts


def _snake(name: str) -> str:
    return re.sub(r"([A-Z])", r"_\1", name).lower()


@pytest.fixture(scope="module")
def schemas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    state = tmp_path_factory.mktemp("openapi") / "state"
    app = create_app(DaemonConfig(state_dir=state), token="t" * 32)
    doc: dict[str, Any] = app.openapi()
    schemas: dict[str, Any] = doc["components"]["schemas"]
    return {name: _inline_enums(schema, schemas) for name, schema in schemas.items()}


def _inline_enums(node: Any, schemas: dict[str, Any]) -> Any:
    """Replace each ``$ref`` to an enumeration component by the enumeration itself."""
    if isinstance(node, dict):
        ref = node.get("$ref", "")
        target = ref.rsplit("/", 1)[-1]
        if ref and "enum" in schemas.get(target, {}):
            return schemas[target]
        return {k: _inline_enums(v, schemas) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_enums(v, schemas) for v in node]
    return node


def test_enumerations_match_the_aliases(schemas: dict[str, Any]) -> None:
    _, aliases = _parse_ts()
    for name in ENUMS:
        literals = _ts_atoms(aliases[name], aliases)
        assert literals == {("literal", v) for v in schemas[name]["enum"]}, name


def test_every_schema_is_modelled_or_pinned(schemas: dict[str, Any]) -> None:
    known = set(RESPONSES) | set(REQUESTS) | set(ARGUMENTS_ONLY) | ENUMS
    assert set(schemas) - known == set(), "a new daemon schema: model it in types.ts"
    assert known - set(schemas) == set(), "a daemon schema is gone: update types.ts"
    for name, fields in ARGUMENTS_ONLY.items():
        assert set(schemas[name]["properties"]) == fields, name


@pytest.mark.parametrize("schema_name", sorted(RESPONSES))
def test_response_types_match_the_schema(schemas: dict[str, Any], schema_name: str) -> None:
    interfaces, _ = _parse_ts()
    ts = interfaces[RESPONSES[schema_name]]
    schema = schemas[schema_name]
    props: dict[str, Any] = schema["properties"]
    required = set(schema.get("required", []))
    assert set(ts) == set(props), f"{RESPONSES[schema_name]} vs {schema_name}"
    problems = []
    for name, prop in props.items():
        want = _oa_atoms(prop, RESPONSES)
        if ts[name].optional != (name not in required):
            problems.append(f"{name}: optional in one, required in the other")
        if not _same_type(want, ts[name].atoms):
            problems.append(f"{name}: schema {sorted(map(str, want))}, "
                            f"types.ts {sorted(map(str, ts[name].atoms))}")  # fmt: skip
    assert not problems, f"{RESPONSES[schema_name]} vs {schema_name}: {problems}"


@pytest.mark.parametrize("schema_name", sorted(REQUESTS))
def test_request_options_match_the_schema(schemas: dict[str, Any], schema_name: str) -> None:
    interfaces, _ = _parse_ts()
    options, arguments = REQUESTS[schema_name]
    ts = {_snake(k): v for k, v in interfaces[options].items()}
    schema = schemas[schema_name]
    props: dict[str, Any] = schema["properties"]
    required = set(schema.get("required", []))
    assert set(ts) | arguments == set(props), f"{options} vs {schema_name}"
    problems = []
    for name, field in ts.items():
        want = _oa_atoms(props[name], RESPONSES)
        if field.optional != (name not in required):
            problems.append(f"{name}: optional in one, required in the other")
        if field.optional:
            want = want - {"null"}  # leaving a field out is how the SDK sends "none"
        if not _same_type(want, field.atoms):
            problems.append(f"{name}: schema {sorted(map(str, want))}, "
                            f"types.ts {sorted(map(str, field.atoms))}")  # fmt: skip
    assert not problems, f"{options} vs {schema_name}: {problems}"


def test_the_reader_of_types_ts_sees_every_field() -> None:
    """Guards the regular expressions: a field they skipped would go unchecked."""
    interfaces, aliases = _parse_ts()
    text = TYPES_TS.read_text()
    declared = len(re.findall(r"^  \w+\??: ", text, re.M))
    assert declared == sum(len(f) for f in interfaces.values())
    assert len(interfaces) == len(re.findall(r"^export interface ", text, re.M))
    assert _ts_atoms("ExportMode | null", aliases) == {
        ("literal", "full"),
        ("literal", "incremental"),
        "null",
    }
