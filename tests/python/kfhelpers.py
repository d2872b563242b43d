"""Helpers shared by the Python suites: the project's Avro contracts composed
the way the registry holds them, sample values built from a schema, and the
topic catalog."""

from __future__ import annotations

import copy
import json
import tomllib
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, Optional

REPO = Path(__file__).resolve().parents[2]
AVRO_DIR = REPO / "schemas" / "avro"
TOPICS_TOML = REPO / "infra" / "topics.toml"
NAMESPACE = "keyflow.events"
SHARED = {"keyflow.events.EventMetadata": "EventMetadata.avsc"}


def event_names() -> list:
    """Short names of every event contract (every .avsc but the shared types)."""
    shared_files = set(SHARED.values())
    return sorted(p.stem for p in AVRO_DIR.glob("*.avsc") if p.name not in shared_files)


def composed_schema(short_name: str) -> dict:
    """The event schema with each shared named type inlined at its first use
    (a self-contained schema, as registered by `devstack up`)."""
    shared = {n: json.loads((AVRO_DIR / f).read_text()) for n, f in SHARED.items()}
    root = json.loads((AVRO_DIR / f"{short_name}.avsc").read_text())
    defined = set()

    def inline(node):
        if isinstance(node, str):
            if node in shared and node not in defined:
                defined.add(node)
                return inline(copy.deepcopy(shared[node]))
            return node
        if isinstance(node, list):
            return [inline(n) for n in node]
        if isinstance(node, dict):
            out = dict(node)
            for key in ("type", "items", "values"):
                if key in out:
                    out[key] = inline(out[key])
            if isinstance(out.get("fields"), list):
                out["fields"] = [inline(f) for f in out["fields"]]
            return out
        return node

    return inline(root)


def composed_text(short_name: str, indent: Optional[int] = None) -> str:
    return json.dumps(composed_schema(short_name), indent=indent)


def topic_catalog() -> Dict[str, Any]:
    return tomllib.loads(TOPICS_TOML.read_text())


def topic_of_record(short_name: str) -> str:
    for fam in topic_catalog()["family"]:
        for t in fam["topics"]:
            if short_name in t["events"]:
                return t["name"]
    raise KeyError(short_name)


def expected_topics(partitions: int) -> Dict[str, int]:
    """Every topic `devstack up --partitions N` creates, with its partition count."""
    cat = topic_catalog()
    out = {}
    for fam in cat["family"]:
        for t in fam["topics"]:
            out[t["name"]] = partitions
    dlq = cat.get("internal", {}).get("dlq_partitions", 1)
    for worker in cat["workers"]:
        out[f"{worker}-state"] = partitions
        out[f"{worker}.dlq"] = dlq
    return out


def subject_for(topic: str, short_name: str) -> str:
    """TopicRecordNameStrategy subject."""
    return f"{topic}-{NAMESPACE}.{short_name}"


# --------------------------------------------------------------------------
# sample values

_PRIMS = {
    "null": None,
    "boolean": True,
    "int": 7,
    "long": 42,
    "float": 1.5,
    "double": 2.25,
    "string": "s",
    "bytes": b"b",
}


def _fullname(name: str, ns: Optional[str]) -> str:
    return name if "." in name or not ns else f"{ns}.{name}"


def sample_value(schema: Any, named: Optional[dict] = None, ns: Optional[str] = None) -> Any:
    """A value valid for ``schema`` (parsed JSON). Logical types get Python
    values fastavro writes: datetime for timestamp-millis, str for uuid,
    Decimal for decimal, date for date."""
    named = {} if named is None else named
    if isinstance(schema, str):
        if schema in _PRIMS:
            return _PRIMS[schema]
        target = named.get(_fullname(schema, ns)) or named.get(schema)
        if target is None:
            raise KeyError(f"unknown named type {schema}")
        return sample_value(target, named, ns)
    if isinstance(schema, list):
        return None if "null" in schema else sample_value(schema[0], named, ns)
    t = schema["type"]
    lt = schema.get("logicalType")
    if t == "record":
        full = _fullname(schema["name"], schema.get("namespace", ns))
        named[full] = schema
        inner_ns = full.rsplit(".", 1)[0] if "." in full else None
        return {f["name"]: sample_value(f["type"], named, inner_ns) for f in schema["fields"]}
    if t == "enum":
        named[_fullname(schema["name"], schema.get("namespace", ns))] = schema
        return schema["symbols"][0]
    if t == "fixed":
        named[_fullname(schema["name"], schema.get("namespace", ns))] = schema
        return b"\0" * schema["size"]
    if t == "array":
        return [sample_value(schema["items"], named, ns)]
    if t == "map":
        return {"k": sample_value(schema["values"], named, ns)}
    if lt == "timestamp-millis":
        now = datetime.now(timezone.utc)
        return now.replace(microsecond=(now.microsecond // 1000) * 1000)
    if lt == "uuid":
        return str(uuid.uuid4())
    if lt == "decimal":
        return Decimal(123).scaleb(-schema.get("scale", 0))
    if lt == "date":
        return date.today()
    return sample_value(t, named, ns)


def order_placed_value(order_id: str, customer_id: str) -> dict:
    """An OrderPlaced value built from the schema, with realistic ids."""
    v = sample_value(composed_schema("OrderPlaced"))
    v["order_id"] = order_id
    v["customer_id"] = customer_id
    v["currency"] = "EUR"
    v["items"] = [{"sku": "SKU-1", "quantity": 2, "unit_price_minor": 1250}]
    v["total_minor"] = 2500
    md = v["metadata"]
    md["event_id"] = str(uuid.uuid4())
    md["event_type"] = "OrderPlaced"
    md["source"] = "pytest"
    md["idempotency_key"] = f"pytest:{order_id}"
    md["correlation_id"] = order_id
    md["causation_id"] = None
    return v
