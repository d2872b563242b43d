"""The keyflow schema registry against Confluent's own Python client.

Happy paths go through ``confluent_kafka.schema_registry.SchemaRegistryClient``
(and the Avro serde built on it); exact status codes, error codes and content
types are checked with ``requests``. Each test gets a fresh registry process
with its own data dir (see conftest.py).
"""

from __future__ import annotations

import io
import json
import select
import signal
import socket
from urllib.parse import urlparse

import fastavro
import pytest
from confluent_kafka.schema_registry import (
    RegisteredSchema,
    Schema,
    SchemaReference,
    SchemaRegistryError,
    topic_record_subject_name_strategy,
)
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

import kfhelpers

V1_JSON = "application/vnd.schemaregistry.v1+json"
ACCEPTED_CONTENT_TYPES = [V1_JSON, "application/vnd.schemaregistry+json", "application/json"]
LEVELS = ["NONE", "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE"]


# --------------------------------------------------------------------------
# helpers


def rec(*fields, name="R", ns="t", **extra) -> str:
    """A record schema as compact JSON text."""
    return json.dumps({"type": "record", "name": name, "namespace": ns, "fields": list(fields), **extra})


def fld(name, type_, **kw) -> dict:
    return {"name": name, "type": type_, **kw}


def avro(text: str, refs=None) -> Schema:
    return Schema(text, "AVRO", refs or [])


def sr_error(fn, status: int, code: int) -> SchemaRegistryError:
    """Runs fn, expects a SchemaRegistryError with this HTTP status and error code."""
    with pytest.raises(SchemaRegistryError) as ei:
        fn()
    e = ei.value
    assert (e.http_status_code, e.error_code) == (status, code), f"expected {status}/{code}, got {e!r}"
    return e


def assert_error(resp, status: int, code: int):
    """The response is Confluent's JSON error with this status and error_code."""
    where = f"{resp.request.method} {resp.request.path_url}"
    assert resp.status_code == status, f"{where}: expected HTTP {status}, got {resp.status_code}: {resp.text[:500]}"
    try:
        body = resp.json()
    except ValueError:
        pytest.fail(f"{where}: error body is not JSON: {resp.text[:500]!r}")
    assert isinstance(body, dict) and set(body) >= {"error_code", "message"}, f"{where}: {body}"
    assert body["error_code"] == code, f"{where}: expected error_code {code}, got {body}"
    assert isinstance(body["message"], str) and body["message"], f"{where}: empty message: {body}"
    return body


def post_json(registry, path, body, content_type=V1_JSON, **kw):
    return registry.http("POST", path, data=json.dumps(body), headers={"Content-Type": content_type}, **kw)


def put_json(registry, path, body, content_type=V1_JSON):
    return registry.http("PUT", path, data=json.dumps(body), headers={"Content-Type": content_type})


def lookup_version(registry, subject, text, refs=None) -> dict:
    """POST /subjects/{s} (lookup) through requests: {subject, version, id, schema}."""
    body = {"schema": text}
    if refs:
        body["references"] = refs
    r = post_json(registry, f"/subjects/{subject}", body)
    assert r.status_code == 200, r.text
    return r.json()


def register(client, subject, text, refs=None) -> int:
    return client.register_schema(subject, avro(text, refs))


# --------------------------------------------------------------------------
# registering: ids and versions


def test_register_returns_id_and_schema_by_id_returns_text_as_registered(registry):
    text = '{\n  "type": "record",\n  "name": "R", "namespace": "t",\n  "doc": "kept as sent",\n  "fields": [ {"name": "a", "type": "string"} ]\n}'
    c = registry.client()
    sid = register(c, "s-value", text)
    assert isinstance(sid, int) and sid >= 1
    fresh = registry.client()
    assert fresh.get_schema(sid).schema_str == text
    rs = fresh.get_latest_version("s-value")
    assert isinstance(rs, RegisteredSchema)
    assert (rs.subject, rs.version, rs.schema_id, rs.schema.schema_str) == ("s-value", 1, sid, text)
    assert rs.schema.schema_type == "AVRO"
    assert registry.http("GET", f"/schemas/ids/{sid}/schema").text == text
    assert registry.http("GET", "/subjects/s-value/versions/1/schema").text == text
    assert registry.http("GET", f"/schemas/ids/{sid}").json()["schema"] == text
    assert registry.http("GET", "/subjects/s-value/versions/1").json()["schema"] == text


def test_register_same_schema_again_returns_same_id_and_version_whitespace_aside(registry):
    c = registry.client()
    compact = rec(fld("a", "string"))
    spaced = json.dumps(json.loads(compact), indent=4)
    sid = register(c, "s", compact)
    assert register(registry.client(), "s", compact) == sid
    assert register(registry.client(), "s", spaced) == sid
    assert registry.client().get_versions("s") == [1]
    assert lookup_version(registry, "s", spaced)["version"] == 1
    # the text first registered is what is returned
    assert registry.client().get_version("s", 1).schema.schema_str == compact


def test_schema_differing_in_a_default_is_a_new_schema(registry):
    c = registry.client()
    a = register(c, "s", rec(fld("a", "string"), fld("b", "int", default=0)))
    b = register(c, "s", rec(fld("a", "string"), fld("b", "int", default=1)))
    assert a != b
    assert registry.client().get_versions("s") == [1, 2]


def test_new_schema_gets_new_id_and_next_version(registry):
    c = registry.client()
    id1 = register(c, "s", rec(fld("a", "string")))
    id2 = register(c, "s", rec(fld("a", "string"), fld("b", "int", default=0)))
    assert id2 != id1
    c2 = registry.client()
    assert c2.get_versions("s") == [1, 2]
    assert c2.get_version("s", 1).schema_id == id1
    assert c2.get_version("s", 2).schema_id == id2
    assert c2.get_latest_version("s").version == 2


def test_schema_known_under_another_subject_keeps_its_global_id(registry):
    c = registry.client()
    text = rec(fld("a", "string"))
    id_a = register(c, "zeta-value", text)
    register(c, "zeta-value", rec(fld("a", "string"), fld("x", "int", default=0)))
    id_b = register(registry.client(), "alpha-value", json.dumps(json.loads(text), indent=2))
    assert id_b == id_a
    c2 = registry.client()
    assert c2.get_version("alpha-value", 1).schema_id == id_a
    assert c2.get_subjects_by_schema_id(id_a) == ["alpha-value", "zeta-value"]
    versions = c2.get_schema_versions(id_a)
    assert [(v.subject, v.version) for v in versions] == [("alpha-value", 1), ("zeta-value", 1)]


def test_version_numbers_count_soft_deleted_versions(registry):
    c = registry.client()
    v1 = rec(fld("a", "string"))
    v2 = rec(fld("a", "string"), fld("b", "int", default=0))
    v3 = rec(fld("a", "string"), fld("c", "int", default=0))
    register(c, "s", v1)
    id2 = register(c, "s", v2)
    assert c.delete_version("s", 2) == 2
    id3 = register(registry.client(), "s", v3)
    assert lookup_version(registry, "s", v3)["version"] == 3
    # the soft-deleted schema registered again keeps its id and gets a new version
    assert register(registry.client(), "s", v2) == id2
    assert lookup_version(registry, "s", v2)["version"] == 4
    assert registry.client().get_versions("s") == [1, 3, 4]
    assert id3 != id2


def test_version_numbers_count_permanently_deleted_versions(registry):
    c = registry.client()
    register(c, "s", rec(fld("a", "string")))
    register(c, "s", rec(fld("a", "string"), fld("b", "int", default=0)))
    c.delete_version("s", 2)
    assert c.delete_version("s", 2, permanent=True) == 2
    register(registry.client(), "s", rec(fld("a", "string"), fld("c", "int", default=0)))
    assert registry.client().get_versions("s") == [1, 3]


# --------------------------------------------------------------------------
# lookup, versions, schemas, lists


def test_lookup_schema_returns_subject_version_and_id(registry):
    c = registry.client()
    v1 = rec(fld("a", "string"))
    v2 = rec(fld("a", "string"), fld("b", "int", default=0))
    register(c, "s", v1)
    id2 = register(c, "s", v2)
    found = registry.client().lookup_schema("s", avro(json.dumps(json.loads(v2), indent=3)))
    assert (found.subject, found.version, found.schema_id) == ("s", 2, id2)


def test_lookup_of_unregistered_schema_is_40403_and_of_unknown_subject_40401(registry):
    c = registry.client()
    register(c, "s", rec(fld("a", "string")))
    other = rec(fld("zzz", "long"))
    sr_error(lambda: registry.client().lookup_schema("s", avro(other)), 404, 40403)
    sr_error(lambda: registry.client().lookup_schema("nope", avro(other)), 404, 40401)
    assert_error(post_json(registry, "/subjects/s", {"schema": other}), 404, 40403)
    assert_error(post_json(registry, "/subjects/nope", {"schema": other}), 404, 40401)


def test_version_selectors_latest_and_minus_one(registry):
    c = registry.client()
    register(c, "s", rec(fld("a", "string")))
    id2 = register(c, "s", rec(fld("a", "string"), fld("b", "int", default=0)))
    for sel in ("latest", "-1", "2"):
        body = registry.http("GET", f"/subjects/s/versions/{sel}").json()
        assert (body["subject"], body["version"], body["id"]) == ("s", 2, id2), sel
        assert registry.http("GET", f"/subjects/s/versions/{sel}/schema").text == c.get_schema(id2).schema_str
    assert registry.client().get_version("s", "latest").version == 2
    assert registry.client().get_version("s", 1).version == 1


def test_get_subjects_is_sorted(registry):
    c = registry.client()
    names = ["zeta-value", "alpha-value", "Mid-value", "orders-keyflow.events.OrderPlaced", "beta-2", "beta-10"]
    for i, n in enumerate(names):
        register(c, n, rec(fld(f"f{i}", "string")))
    assert registry.client().get_subjects() == sorted(names)
    assert registry.http("GET", "/subjects").json() == sorted(names)


def test_versions_and_schema_usages_are_sorted(registry):
    c = registry.client()
    c.set_compatibility(level="NONE")
    shared = rec(fld("a", "string"))
    for s in ["c-value", "a-value", "b-value"]:
        register(c, s, rec(fld("pre", "string")))
        register(c, s, shared)
    sid = registry.client().lookup_schema("a-value", avro(shared)).schema_id
    assert registry.client().get_versions("b-value") == [1, 2]
    assert registry.http("GET", f"/schemas/ids/{sid}/subjects").json() == ["a-value", "b-value", "c-value"]
    assert registry.http("GET", f"/schemas/ids/{sid}/versions").json() == [
        {"subject": "a-value", "version": 2},
        {"subject": "b-value", "version": 2},
        {"subject": "c-value", "version": 2},
    ]


def test_get_schema_types_lists_avro(registry):
    assert "AVRO" in registry.client().get_schema_types()
    r = registry.http("GET", "/schemas/types")
    assert r.status_code == 200 and "AVRO" in r.json()


# --------------------------------------------------------------------------
# deletes


def test_soft_delete_subject_hides_it_and_permanent_delete_removes_it(registry):
    c = registry.client()
    id1 = register(c, "s", rec(fld("a", "string")))
    register(c, "s", rec(fld("a", "string"), fld("b", "int", default=0)))
    register(c, "keep", rec(fld("k", "string")))

    assert c.delete_subject("s") == [1, 2]
    c2 = registry.client()
    assert c2.get_subjects() == ["keep"]
    assert c2.get_subjects(deleted=True) == ["keep", "s"]
    sr_error(lambda: c2.get_versions("s"), 404, 40401)
    assert c2.get_versions("s", deleted=True) == [1, 2]
    sr_error(lambda: c2.get_latest_version("s"), 404, 40401)
    assert c2.get_version("s", 1, deleted=True).schema_id == id1
    # a consumer still reading old records must be able to resolve the id
    assert c2.get_schema(id1).schema_str == rec(fld("a", "string"))

    assert registry.client().delete_subject("s", permanent=True) == [1, 2]
    c3 = registry.client()
    assert c3.get_subjects(deleted=True) == ["keep"]
    sr_error(lambda: c3.get_versions("s", deleted=True), 404, 40401)
    assert_error(registry.http("GET", f"/schemas/ids/{id1}"), 404, 40403)


def test_permanent_delete_needs_a_soft_delete_first(registry):
    c = registry.client()
    register(c, "s", rec(fld("a", "string")))
    assert_error(registry.http("DELETE", "/subjects/s?permanent=true"), 404, 40405)
    assert_error(registry.http("DELETE", "/subjects/s/versions/1?permanent=true"), 404, 40407)
    assert registry.client().get_versions("s") == [1]


def test_delete_version_soft_then_permanent(registry):
    c = registry.client()
    v1 = rec(fld("a", "string"))
    v2 = rec(fld("a", "string"), fld("b", "int", default=0))
    id1 = register(c, "s", v1)
    register(c, "s", v2)
    assert c.delete_version("s", 1) == 1
    c2 = registry.client()
    assert c2.get_versions("s") == [2]
    assert c2.get_versions("s", deleted=True) == [1, 2]
    assert_error(registry.http("GET", "/subjects/s/versions/1"), 404, 40402)
    assert registry.http("GET", "/subjects/s/versions/1?deleted=true").json()["id"] == id1
    assert c2.delete_version("s", 1, permanent=True) == 1
    assert registry.client().get_versions("s", deleted=True) == [2]
    assert_error(registry.http("GET", "/subjects/s/versions/1?deleted=true"), 404, 40402)


def test_deleting_the_latest_version_makes_the_previous_one_latest(registry):
    c = registry.client()
    id1 = register(c, "s", rec(fld("a", "string")))
    register(c, "s", rec(fld("a", "string"), fld("b", "int", default=0)))
    c.delete_version("s", 2)
    latest = registry.client().get_latest_version("s")
    assert (latest.version, latest.schema_id) == (1, id1)


def test_deleted_versions_are_not_checked_for_compatibility(registry):
    c = registry.client()
    register(c, "s", rec(fld("a", "string")))
    c.delete_subject("s")
    # BACKWARD (the default) would reject this against the deleted version
    register(registry.client(), "s", rec(fld("a", "int")))
    assert registry.client().get_versions("s") == [2]


# --------------------------------------------------------------------------
# compatibility configuration


def test_default_global_level_is_backward(registry):
    assert registry.client().get_compatibility() == "BACKWARD"
    r = registry.http("GET", "/config")
    assert r.status_code == 200 and r.json() == {"compatibilityLevel": "BACKWARD"}


@pytest.mark.parametrize("level", LEVELS)
def test_global_and_subject_level_roundtrip(registry, level):
    c = registry.client()
    assert c.set_compatibility(level=level) == {"compatibility": level}
    assert registry.client().get_compatibility() == level
    assert c.set_compatibility("s-value", level) == {"compatibility": level}
    assert registry.client().get_compatibility("s-value") == level


def test_subject_config_without_its_own_level_is_40408_unless_default_to_global(registry):
    c = registry.client()
    c.set_compatibility(level="FULL")
    register(c, "s", rec(fld("a", "string")))
    sr_error(lambda: registry.client().get_compatibility("s"), 404, 40408)
    assert_error(registry.http("GET", "/config/s"), 404, 40408)
    r = registry.http("GET", "/config/s?defaultToGlobal=true")
    assert r.status_code == 200 and r.json()["compatibilityLevel"] == "FULL"
    c.set_compatibility("s", "NONE")
    assert registry.http("GET", "/config/s").json()["compatibilityLevel"] == "NONE"


def test_subject_level_overrides_global_level(registry):
    c = registry.client()
    c.set_compatibility(level="BACKWARD")
    for s in ("loose", "strict"):
        register(c, s, rec(fld("a", "string")))
    c.set_compatibility("loose", "NONE")
    breaking = rec(fld("a", "string"), fld("b", "int"))
    register(c, "loose", breaking)
    sr_error(lambda: c.register_schema("strict", avro(breaking)), 409, 409)


def test_global_level_applies_to_subjects_without_their_own(registry):
    c = registry.client()
    register(c, "s", rec(fld("a", "string")))
    breaking = rec(fld("a", "string"), fld("b", "int"))
    sr_error(lambda: c.register_schema("s", avro(breaking)), 409, 409)
    c.set_compatibility(level="FORWARD")
    register(c, "s", breaking)  # old readers ignore the new field
    assert registry.client().get_versions("s") == [1, 2]


@pytest.mark.parametrize("path", ["/config", "/config/s"])
def test_invalid_compatibility_level_is_42203(registry, path):
    assert_error(put_json(registry, path, {"compatibility": "SIDEWAYS"}), 422, 42203)
    assert registry.client().get_compatibility() == "BACKWARD"


# --------------------------------------------------------------------------
# compatibility rules (Avro schema resolution)


def evolution(registry, level, history, candidate, *, compatible):
    """Registers ``history`` (under NONE), sets the subject's ``level``, then
    asks (test_compatibility*) and tries to register ``candidate``."""
    c = registry.client()
    subject = "evolving-value"
    c.set_compatibility(subject, "NONE")
    for text in history:
        register(c, subject, text)
    c.set_compatibility(subject, level)
    asker = registry.client()
    if not level.endswith("_TRANSITIVE"):
        assert asker.test_compatibility(subject, avro(candidate), "latest") is compatible, "vs latest"
        assert asker.test_compatibility(subject, avro(candidate), len(history)) is compatible, "vs version"
    assert asker.test_compatibility_all_versions(subject, avro(candidate)) is compatible, "vs all versions"
    if compatible:
        register(registry.client(), subject, candidate)
        assert registry.client().get_versions(subject) == list(range(1, len(history) + 2))
        return None
    e = sr_error(lambda: registry.client().register_schema(subject, avro(candidate)), 409, 409)
    assert registry.client().get_versions(subject) == list(range(1, len(history) + 1))
    return e


# records


def test_backward_accepts_new_field_with_default(registry):
    evolution(registry, "BACKWARD", [rec(fld("a", "string"))],
              rec(fld("a", "string"), fld("loyalty_tier", "int", default=0)), compatible=True)


def test_backward_rejects_new_field_without_default(registry):
    evolution(registry, "BACKWARD", [rec(fld("a", "string"))],
              rec(fld("a", "string"), fld("loyalty_tier", "int")), compatible=False)


def test_backward_accepts_removed_field(registry):
    evolution(registry, "BACKWARD", [rec(fld("a", "string"), fld("legacy_code", "string"))],
              rec(fld("a", "string")), compatible=True)


def test_forward_accepts_new_field_without_default(registry):
    evolution(registry, "FORWARD", [rec(fld("a", "string"))],
              rec(fld("a", "string"), fld("loyalty_tier", "int")), compatible=True)


def test_forward_rejects_removed_field_without_default(registry):
    evolution(registry, "FORWARD", [rec(fld("a", "string"), fld("legacy_code", "string"))],
              rec(fld("a", "string")), compatible=False)


def test_forward_accepts_removed_field_that_had_a_default(registry):
    evolution(registry, "FORWARD", [rec(fld("a", "string"), fld("legacy_code", "string", default=""))],
              rec(fld("a", "string")), compatible=True)


def test_full_accepts_new_field_with_default(registry):
    evolution(registry, "FULL", [rec(fld("a", "string"))],
              rec(fld("a", "string"), fld("loyalty_tier", "int", default=0)), compatible=True)


def test_full_rejects_new_field_without_default(registry):
    evolution(registry, "FULL", [rec(fld("a", "string"))],
              rec(fld("a", "string"), fld("loyalty_tier", "int")), compatible=False)


def test_none_accepts_incompatible_type_change(registry):
    evolution(registry, "NONE", [rec(fld("amount", "string"))], rec(fld("amount", "int")), compatible=True)


def test_backward_rejects_field_type_change_string_to_int(registry):
    evolution(registry, "BACKWARD", [rec(fld("amount", "string"))], rec(fld("amount", "int")),
              compatible=False)


def test_backward_accepts_int_promoted_to_long(registry):
    evolution(registry, "BACKWARD", [rec(fld("n", "int"))], rec(fld("n", "long")), compatible=True)


def test_backward_rejects_long_narrowed_to_int(registry):
    evolution(registry, "BACKWARD", [rec(fld("quantity", "long"))], rec(fld("quantity", "int")),
              compatible=False)


# logical types

TS_MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
UUID = {"type": "string", "logicalType": "uuid"}
DECIMAL = {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}


def test_full_accepts_timestamp_millis_on_a_plain_long(registry):
    evolution(registry, "FULL", [rec(fld("occurred_at", "long"))], rec(fld("occurred_at", TS_MILLIS)),
              compatible=True)


def test_full_accepts_plain_long_replacing_timestamp_millis(registry):
    evolution(registry, "FULL", [rec(fld("occurred_at", TS_MILLIS))], rec(fld("occurred_at", "long")),
              compatible=True)


def test_backward_accepts_new_timestamp_millis_field_with_default(registry):
    evolution(registry, "BACKWARD", [rec(fld("a", "string"))],
              rec(fld("a", "string"), fld("occurred_at", TS_MILLIS, default=0)), compatible=True)


def test_backward_accepts_int_promoted_to_timestamp_millis(registry):
    evolution(registry, "BACKWARD", [rec(fld("occurred_at", "int"))], rec(fld("occurred_at", TS_MILLIS)),
              compatible=True)


def test_backward_rejects_timestamp_millis_changed_to_string(registry):
    evolution(registry, "BACKWARD", [rec(fld("occurred_at", TS_MILLIS))], rec(fld("occurred_at", "string")),
              compatible=False)


def test_backward_rejects_timestamp_millis_narrowed_to_int(registry):
    evolution(registry, "BACKWARD", [rec(fld("occurred_at", TS_MILLIS))], rec(fld("occurred_at", "int")),
              compatible=False)


def test_full_accepts_uuid_logical_type_on_a_string(registry):
    evolution(registry, "FULL", [rec(fld("event_id", "string"))], rec(fld("event_id", UUID)), compatible=True)


def test_backward_rejects_uuid_changed_to_long(registry):
    evolution(registry, "BACKWARD", [rec(fld("event_id", UUID))], rec(fld("event_id", "long")),
              compatible=False)


def test_full_accepts_decimal_logical_type_on_bytes(registry):
    evolution(registry, "FULL", [rec(fld("amount", "bytes"))], rec(fld("amount", DECIMAL)), compatible=True)


def test_backward_accepts_new_decimal_field_with_default(registry):
    evolution(registry, "BACKWARD", [rec(fld("a", "string"))],
              rec(fld("a", "string"), fld("amount", DECIMAL, default="\u0000")), compatible=True)


def test_backward_rejects_decimal_changed_to_long(registry):
    evolution(registry, "BACKWARD", [rec(fld("amount", DECIMAL))], rec(fld("amount", "long")),
              compatible=False)


# named types referenced by name

ADDRESS = {"type": "record", "name": "Address", "fields": [fld("city", "string")]}
ADDRESS_ZONE = {"type": "record", "name": "Address", "fields": [fld("city", "string"), fld("zone", "string")]}
ADDRESS_ZONE_DEFAULT = {
    "type": "record", "name": "Address", "fields": [fld("city", "string"), fld("zone", "string", default="")],
}


def test_named_type_referenced_by_name_in_the_same_schema_is_valid(registry):
    text = rec(fld("billing", ADDRESS), fld("shipping", "t.Address"), fld("alt", ["null", "Address"], default=None))
    register(registry.client(), "s", text)


def test_backward_rejects_change_inside_a_named_type_used_twice(registry):
    evolution(registry, "BACKWARD", [rec(fld("billing", ADDRESS), fld("shipping", "t.Address"))],
              rec(fld("billing", ADDRESS_ZONE), fld("shipping", "t.Address")), compatible=False)


def test_backward_accepts_change_inside_a_named_type_with_default(registry):
    evolution(registry, "BACKWARD", [rec(fld("billing", ADDRESS), fld("shipping", "t.Address"))],
              rec(fld("billing", ADDRESS_ZONE_DEFAULT), fld("shipping", "t.Address")), compatible=True)


META_V1 = rec(fld("event_id", "string"), name="Meta")
META_V2 = rec(fld("event_id", "string"), fld("tenant", "string"), name="Meta")
META_V3 = rec(fld("event_id", "string"), fld("tenant", "string", default=""), name="Meta")
EVENT_WITH_META = rec(fld("meta", "t.Meta"), fld("order_id", "string"), name="Event")


def _meta_ref(version):
    return [SchemaReference("t.Meta", "meta-value", version)]


def test_schema_references_resolve_named_types_from_other_subjects(registry):
    c = registry.client()
    c.set_compatibility("meta-value", "NONE")
    register(c, "meta-value", META_V1)
    sid = register(c, "event-value", EVENT_WITH_META, _meta_ref(1))
    got = registry.client().get_version("event-value", 1)
    assert got.schema_id == sid
    assert [(r.name, r.subject, r.version) for r in got.schema.references] == [("t.Meta", "meta-value", 1)]
    by_id = registry.http("GET", f"/schemas/ids/{sid}").json()
    assert by_id["references"] == [{"name": "t.Meta", "subject": "meta-value", "version": 1}]
    assert registry.client().lookup_schema("event-value", avro(EVENT_WITH_META, _meta_ref(1))).schema_id == sid
    # same text, other reference: another schema
    register(c, "meta-value", META_V3)
    assert register(registry.client(), "event-value", EVENT_WITH_META, _meta_ref(2)) != sid


def test_backward_rejects_reference_upgrade_that_breaks_the_nested_record(registry):
    c = registry.client()
    c.set_compatibility("meta-value", "NONE")
    for m in (META_V1, META_V2, META_V3):
        register(c, "meta-value", m)
    register(c, "event-value", EVENT_WITH_META, _meta_ref(1))
    asker = registry.client()
    assert asker.test_compatibility("event-value", avro(EVENT_WITH_META, _meta_ref(2))) is False
    e = sr_error(lambda: c.register_schema("event-value", avro(EVENT_WITH_META, _meta_ref(2))), 409, 409)
    assert "tenant" in e.error_message, e.error_message
    assert asker.test_compatibility("event-value", avro(EVENT_WITH_META, _meta_ref(3))) is True
    register(c, "event-value", EVENT_WITH_META, _meta_ref(3))
    assert registry.client().get_versions("event-value") == [1, 2]


def test_unresolved_named_type_is_an_invalid_schema(registry):
    body = {"schema": EVENT_WITH_META}
    assert_error(post_json(registry, "/subjects/event-value/versions", body), 422, 42201)
    body["references"] = [{"name": "t.Meta", "subject": "missing-value", "version": 1}]
    assert_error(post_json(registry, "/subjects/event-value/versions", body), 422, 42201)


# enums

def enum(symbols, **kw):
    return {"type": "enum", "name": "Tier", "symbols": symbols, **kw}


def test_backward_accepts_enum_symbol_added(registry):
    evolution(registry, "BACKWARD", [rec(fld("tier", enum(["BRONZE", "SILVER"])))],
              rec(fld("tier", enum(["BRONZE", "SILVER", "GOLD"]))), compatible=True)


def test_backward_rejects_enum_symbol_removed_without_default(registry):
    evolution(registry, "BACKWARD", [rec(fld("tier", enum(["BRONZE", "SILVER", "PLATINUM"])))],
              rec(fld("tier", enum(["BRONZE", "SILVER"]))), compatible=False)


def test_backward_accepts_enum_symbol_removed_when_reader_has_default(registry):
    evolution(registry, "BACKWARD", [rec(fld("tier", enum(["BRONZE", "SILVER", "PLATINUM"])))],
              rec(fld("tier", enum(["BRONZE", "SILVER"], default="BRONZE"))), compatible=True)


def test_forward_rejects_enum_symbol_added_when_old_reader_has_no_default(registry):
    evolution(registry, "FORWARD", [rec(fld("tier", enum(["BRONZE", "SILVER"])))],
              rec(fld("tier", enum(["BRONZE", "SILVER", "GOLD"]))), compatible=False)


def test_forward_accepts_enum_symbol_added_when_old_reader_has_default(registry):
    evolution(registry, "FORWARD", [rec(fld("tier", enum(["BRONZE", "SILVER"], default="BRONZE")))],
              rec(fld("tier", enum(["BRONZE", "SILVER", "GOLD"], default="BRONZE"))), compatible=True)


def test_full_accepts_enum_symbol_added_when_both_have_defaults(registry):
    evolution(registry, "FULL", [rec(fld("tier", enum(["BRONZE", "SILVER"], default="BRONZE")))],
              rec(fld("tier", enum(["BRONZE", "SILVER", "GOLD"], default="BRONZE"))), compatible=True)


# unions

def test_backward_accepts_union_widened(registry):
    evolution(registry, "BACKWARD", [rec(fld("contact", ["null", "string"], default=None))],
              rec(fld("contact", ["null", "string", "long"], default=None)), compatible=True)


def test_backward_rejects_union_narrowed(registry):
    evolution(registry, "BACKWARD", [rec(fld("contact", ["null", "string", "long"], default=None))],
              rec(fld("contact", ["null", "string"], default=None)), compatible=False)


def test_forward_rejects_union_widened(registry):
    evolution(registry, "FORWARD", [rec(fld("contact", ["null", "string"], default=None))],
              rec(fld("contact", ["null", "string", "long"], default=None)), compatible=False)


def test_full_rejects_union_widened(registry):
    evolution(registry, "FULL", [rec(fld("contact", ["null", "string"], default=None))],
              rec(fld("contact", ["null", "string", "long"], default=None)), compatible=False)


def test_backward_accepts_plain_type_widened_to_a_union(registry):
    evolution(registry, "BACKWARD", [rec(fld("contact", "string"))],
              rec(fld("contact", ["null", "string"], default=None)), compatible=True)


def test_backward_rejects_union_narrowed_to_a_plain_type(registry):
    evolution(registry, "BACKWARD", [rec(fld("contact", ["null", "string"], default=None))],
              rec(fld("contact", "string")), compatible=False)


def test_backward_accepts_union_branch_promoted_int_to_long(registry):
    evolution(registry, "BACKWARD", [rec(fld("points", ["null", "int"], default=None))],
              rec(fld("points", ["null", "long"], default=None)), compatible=True)


# transitive levels
#   B1 {status_code: string}, B2 {} ; candidate {status_code: int = 0}
#   readable from B2 data (default), not from B1 data (string vs int).
B1 = rec(fld("id", "string"), fld("status_code", "string"))
B2 = rec(fld("id", "string"))
B3 = rec(fld("id", "string"), fld("status_code", "int", default=0))


def test_backward_checks_only_the_latest_version(registry):
    evolution(registry, "BACKWARD", [B1, B2], B3, compatible=True)


def test_backward_transitive_rejects_change_incompatible_with_an_older_version(registry):
    evolution(registry, "BACKWARD_TRANSITIVE", [B1, B2], B3, compatible=False)


#   F1 {legacy: int}, F2 {legacy: int = 0}; candidate drops legacy:
#   F2 readers use the default, F1 readers cannot.
F1 = rec(fld("id", "string"), fld("legacy", "int"))
F2 = rec(fld("id", "string"), fld("legacy", "int", default=0))
F3 = rec(fld("id", "string"))


def test_forward_checks_only_the_latest_version(registry):
    evolution(registry, "FORWARD", [F1, F2], F3, compatible=True)


def test_forward_transitive_rejects_change_incompatible_with_an_older_version(registry):
    evolution(registry, "FORWARD_TRANSITIVE", [F1, F2], F3, compatible=False)


#   U1 {legacy: string}, U2 {legacy: string = "x"}; candidate {extra: int = 1}
U1 = rec(fld("legacy", "string"))
U2 = rec(fld("legacy", "string", default="x"))
U3 = rec(fld("extra", "int", default=1))


def test_full_checks_only_the_latest_version(registry):
    evolution(registry, "FULL", [U1, U2], U3, compatible=True)


def test_full_transitive_rejects_change_incompatible_with_an_older_version(registry):
    evolution(registry, "FULL_TRANSITIVE", [U1, U2], U3, compatible=False)


# what a 409 says: the field / symbol / branch that broke, not just "incompatible"
MESSAGE_CASES = {
    "new-field-without-default": ("BACKWARD", [rec(fld("a", "string"))],
                                  rec(fld("a", "string"), fld("loyalty_tier", "int")), ["loyalty_tier"]),
    "removed-field-forward": ("FORWARD", [rec(fld("a", "string"), fld("legacy_code", "string"))],
                              rec(fld("a", "string")), ["legacy_code"]),
    "type-change": ("BACKWARD", [rec(fld("amount", "string"))], rec(fld("amount", "int")), ["amount"]),
    "timestamp-millis-to-string": ("BACKWARD", [rec(fld("occurred_at", TS_MILLIS))],
                                   rec(fld("occurred_at", "string")), ["occurred_at"]),
    "field-inside-named-type": ("BACKWARD", [rec(fld("billing", ADDRESS), fld("shipping", "t.Address"))],
                                rec(fld("billing", ADDRESS_ZONE), fld("shipping", "t.Address")), ["zone"]),
    "enum-symbol-removed": ("BACKWARD", [rec(fld("tier", enum(["BRONZE", "SILVER", "PLATINUM"])))],
                            rec(fld("tier", enum(["BRONZE", "SILVER"]))), ["PLATINUM"]),
    "enum-symbol-added-forward": ("FORWARD", [rec(fld("tier", enum(["BRONZE", "SILVER"])))],
                                  rec(fld("tier", enum(["BRONZE", "SILVER", "GOLD"]))), ["GOLD"]),
    "union-narrowed": ("BACKWARD", [rec(fld("contact", ["null", "string", "long"], default=None))],
                       rec(fld("contact", ["null", "string"], default=None)), ["contact"]),
    "union-widened-forward": ("FORWARD", [rec(fld("contact", ["null", "string"], default=None))],
                              rec(fld("contact", ["null", "string", "long"], default=None)), ["contact"]),
    "union-narrowed-to-plain-type": ("BACKWARD", [rec(fld("contact", ["null", "string"], default=None))],
                                     rec(fld("contact", "string")), ["contact"]),
    "backward-transitive": ("BACKWARD_TRANSITIVE", [B1, B2], B3, ["status_code"]),
    "forward-transitive": ("FORWARD_TRANSITIVE", [F1, F2], F3, ["legacy"]),
}


@pytest.mark.parametrize("case", list(MESSAGE_CASES))
def test_409_message_names_what_broke(registry, case):
    level, history, candidate, names = MESSAGE_CASES[case]
    c = registry.client()
    c.set_compatibility("s", "NONE")
    for text in history:
        register(c, "s", text)
    c.set_compatibility("s", level)
    r = post_json(registry, "/subjects/s/versions", {"schema": candidate})
    body = assert_error(r, 409, 409)
    missing = [n for n in names if n not in body["message"]]
    assert not missing, f"the 409 message should name {missing}: {body['message']!r}"


def test_compatibility_check_against_a_specific_version(registry):
    c = registry.client()
    c.set_compatibility("s", "NONE")
    for text in (B1, B2):
        register(c, "s", text)
    c.set_compatibility("s", "BACKWARD")
    assert c.test_compatibility("s", avro(B3), 2) is True
    assert c.test_compatibility("s", avro(B3), 1) is False


def test_verbose_compatibility_check_explains_what_broke(registry):
    c = registry.client()
    register(c, "s", rec(fld("a", "string")))
    body = {"schema": rec(fld("a", "string"), fld("loyalty_tier", "int"))}
    r = post_json(registry, "/compatibility/subjects/s/versions/latest?verbose=true", body)
    assert r.status_code == 200, r.text
    assert r.json()["is_compatible"] is False
    assert any("loyalty_tier" in m for m in r.json()["messages"]), r.json()
    r = post_json(registry, "/compatibility/subjects/s/versions", body)
    assert r.status_code == 200 and r.json()["is_compatible"] is False


# --------------------------------------------------------------------------
# errors, content types, limits (exact codes with requests)


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/subjects/nope/versions"),
        ("GET", "/subjects/nope/versions/1"),
        ("GET", "/subjects/nope/versions/latest"),
        ("GET", "/subjects/nope/versions/1/schema"),
        ("DELETE", "/subjects/nope"),
        ("DELETE", "/subjects/nope/versions/1"),
    ],
)
def test_unknown_subject_is_40401(registry, method, path):
    register(registry.client(), "s", rec(fld("a", "string")))
    assert_error(registry.http(method, path), 404, 40401)


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/subjects/s/versions/99"),
        ("GET", "/subjects/s/versions/99/schema"),
        ("DELETE", "/subjects/s/versions/99"),
    ],
)
def test_unknown_version_is_40402(registry, method, path):
    register(registry.client(), "s", rec(fld("a", "string")))
    assert_error(registry.http(method, path), 404, 40402)


def test_compatibility_check_against_unknown_version_is_40402(registry):
    register(registry.client(), "s", rec(fld("a", "string")))
    r = post_json(registry, "/compatibility/subjects/s/versions/99", {"schema": rec(fld("a", "string"))})
    assert_error(r, 404, 40402)
    sr_error(lambda: registry.client().get_version("s", 99), 404, 40402)


@pytest.mark.parametrize("suffix", ["", "/schema", "/subjects", "/versions"])
def test_unknown_schema_id_is_40403(registry, suffix):
    register(registry.client(), "s", rec(fld("a", "string")))
    assert_error(registry.http("GET", f"/schemas/ids/9999{suffix}"), 404, 40403)


def test_unknown_schema_id_via_client_is_40403(registry):
    sr_error(lambda: registry.client().get_schema(424242), 404, 40403)


INVALID_SCHEMAS = {
    "not-json": "{not json",
    "record-without-name": json.dumps({"type": "record", "fields": [fld("a", "string")]}),
    "unknown-type": rec(fld("a", "t.Nope")),
    "bad-primitive": json.dumps({"type": "strng"}),
    "default-of-wrong-type": rec(fld("a", "int", default="not an int")),
    "enum-default-not-a-symbol": rec(fld("tier", enum(["A", "B"], default="Z"))),
    "duplicate-field": rec(fld("a", "string"), fld("a", "int")),
}


@pytest.mark.parametrize("case", sorted(INVALID_SCHEMAS))
def test_invalid_schema_is_42201_on_register(registry, case):
    r = post_json(registry, "/subjects/s/versions", {"schema": INVALID_SCHEMAS[case]})
    assert_error(r, 422, 42201)
    assert registry.client().get_subjects() == []


@pytest.mark.parametrize(
    "path", ["/subjects/s", "/compatibility/subjects/s/versions/latest", "/compatibility/subjects/s/versions"]
)
def test_invalid_schema_is_42201_on_lookup_and_compatibility_check(registry, path):
    register(registry.client(), "s", rec(fld("a", "string")))
    assert_error(post_json(registry, path, {"schema": INVALID_SCHEMAS["unknown-type"]}), 422, 42201)


def test_invalid_schema_via_client_is_42201(registry):
    sr_error(lambda: registry.client().register_schema("s", avro(INVALID_SCHEMAS["record-without-name"])), 422, 42201)


@pytest.mark.parametrize("version", ["0", "abc", "-2", "2147483648", "1.5"])
@pytest.mark.parametrize(
    "method,template",
    [
        ("GET", "/subjects/s/versions/{}"),
        ("GET", "/subjects/s/versions/{}/schema"),
        ("DELETE", "/subjects/s/versions/{}"),
        ("POST", "/compatibility/subjects/s/versions/{}"),
    ],
)
def test_invalid_version_is_42202(registry, method, template, version):
    register(registry.client(), "s", rec(fld("a", "string")))
    path = template.format(version)
    if method == "POST":
        r = post_json(registry, path, {"schema": rec(fld("a", "string"))})
    else:
        r = registry.http(method, path)
    assert_error(r, 422, 42202)


@pytest.mark.parametrize("method,path", [("GET", "/nope"), ("GET", "/subjects/s/versions/1/nope/deeper"), ("POST", "/nope")])
def test_unknown_route_is_404_json(registry, method, path):
    assert_error(registry.http(method, path), 404, 404)


@pytest.mark.parametrize(
    "method,path", [("DELETE", "/schemas/types"), ("PUT", "/subjects"), ("POST", "/schemas/ids/1"), ("PATCH", "/config")]
)
def test_wrong_method_is_405_json(registry, method, path):
    assert_error(registry.http(method, path), 405, 405)


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415_json(registry, content_type):
    body = {"schema": rec(fld("a", "string"))}
    assert_error(post_json(registry, "/subjects/s/versions", body, content_type=content_type), 415, 415)
    assert_error(put_json(registry, "/config", {"compatibility": "FULL"}, content_type=content_type), 415, 415)
    assert registry.client().get_subjects() == []


def test_malformed_json_body_is_a_json_error(registry):
    r = registry.http("POST", "/subjects/s/versions", data="{nope", headers={"Content-Type": V1_JSON})
    assert 400 <= r.status_code < 500, r.text
    body = r.json()
    assert isinstance(body.get("error_code"), int) and body.get("message"), body


@pytest.mark.parametrize("content_type", ACCEPTED_CONTENT_TYPES)
def test_accepted_content_types(registry, content_type):
    text = rec(fld("a", "string"))
    r = post_json(registry, "/subjects/s/versions", {"schema": text}, content_type=content_type)
    assert r.status_code == 200, r.text
    sid = r.json()["id"]
    r = post_json(registry, "/subjects/s", {"schema": text}, content_type=content_type)
    assert r.status_code == 200 and r.json()["id"] == sid, r.text
    r = post_json(registry, "/compatibility/subjects/s/versions/latest", {"schema": text}, content_type=content_type)
    assert r.status_code == 200 and r.json()["is_compatible"] is True, r.text
    r = put_json(registry, "/config/s", {"compatibility": "FULL"}, content_type=content_type)
    assert r.status_code == 200, r.text
    r = put_json(registry, "/config", {"compatibility": "FORWARD"}, content_type=content_type)
    assert r.status_code == 200, r.text


def test_content_type_with_charset_parameter_is_accepted(registry):
    r = post_json(registry, "/subjects/s/versions", {"schema": rec(fld("a", "string"))},
                  content_type="application/vnd.schemaregistry.v1+json; charset=utf-8")
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/subjects", "/config", "/schemas/types", "/subjects/s/versions/1", "/nope"])
def test_responses_are_json_with_a_registry_content_type(registry, path):
    register(registry.client(), "s", rec(fld("a", "string")))
    r = registry.http("GET", path)
    ct = r.headers.get("Content-Type", "").split(";")[0].strip()
    assert ct in ACCEPTED_CONTENT_TYPES, f"GET {path}: Content-Type {ct!r}"
    r.json()


def _raw_post(url: str, path: str, body_len: int, chunked: bool, timeout: float = 60):
    """POSTs a JSON body of ``body_len`` bytes without holding it in memory,
    stopping as soon as the server answers; returns (status, headers, body)."""
    u = urlparse(url)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
        f"Content-Type: {V1_JSON}\r\nConnection: close\r\n"
        + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {body_len}\r\n")
        + "\r\n"
    ).encode()
    prefix, suffix, filler = b'{"schema": "', b'"}', b"x" * 65536

    def pieces():
        yield prefix
        remaining = body_len - len(prefix) - len(suffix)
        while remaining > 0:
            n = min(remaining, len(filler))
            remaining -= n
            yield filler[:n]
        yield suffix

    s = socket.create_connection((u.hostname, u.port), timeout=timeout)
    data = b""
    try:
        try:
            s.sendall(head)
            for piece in pieces():
                if select.select([s], [], [], 0)[0]:
                    break  # the server answered early
                s.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
            else:
                if chunked:
                    s.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass
        try:
            while True:
                got = s.recv(65536)
                if not got:
                    break
                data += got
                head_b, sep, rest = data.partition(b"\r\n\r\n")
                if sep:
                    cl = [ln for ln in head_b.split(b"\r\n") if ln.lower().startswith(b"content-length:")]
                    if cl and len(rest) >= int(cl[0].split(b":")[1]):
                        break
        except (ConnectionResetError, socket.timeout):
            pass
    finally:
        s.close()
    assert data, f"the server sent no answer to a {body_len}-byte body"
    head_b, _, rest = data.partition(b"\r\n\r\n")
    lines = head_b.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out, buf = b"", rest
        while buf:
            size_s, _, buf = buf.partition(b"\r\n")
            size = int(size_s, 16) if size_s.strip() else 0
            if size == 0:
                break
            out, buf = out + buf[:size], buf[size + 2:]
        rest = out
    return status, headers, rest


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_huge_request_body_is_413_json(registry, chunked):
    status, headers, body = _raw_post(registry.url, "/subjects/s/versions", 64 * 1024 * 1024, chunked)
    assert status == 413, f"expected 413 for a 64 MiB body, got {status}: {body[:300]!r}"
    parsed = json.loads(body)
    assert parsed["error_code"] == 413 and parsed["message"], parsed
    # and the registry still works
    assert registry.client().get_subjects() == []


# --------------------------------------------------------------------------
# durability


def test_restart_keeps_ids_versions_deletions_and_config(registry):
    c = registry.client()
    texts = {
        ("a-value", 1): rec(fld("a", "string")),
        ("a-value", 2): rec(fld("a", "string"), fld("b", "int", default=0)),
        ("b-value", 1): rec(fld("x", "long"), name="B"),
    }
    ids = {k: register(c, k[0], t) for k, t in texts.items()}
    id_c = register(c, "c-value", rec(fld("gone", "string"), name="C"))
    c.delete_version("a-value", 1)
    c.delete_subject("c-value")
    c.set_compatibility(level="FORWARD")
    c.set_compatibility("b-value", "NONE")

    registry.restart()

    c2 = registry.client()
    for (subject, version), sid in ids.items():
        assert c2.get_schema(sid).schema_str == texts[(subject, version)]
        assert c2.get_version(subject, version, deleted=True).schema_id == sid
    assert c2.get_versions("a-value") == [2]
    assert c2.get_versions("a-value", deleted=True) == [1, 2]
    assert c2.get_subjects() == ["a-value", "b-value"]
    assert c2.get_subjects(deleted=True) == ["a-value", "b-value", "c-value"]
    assert c2.get_compatibility() == "FORWARD"
    assert c2.get_compatibility("b-value") == "NONE"
    # same schema again: same id, no new version
    assert register(c2, "a-value", texts[("a-value", 2)]) == ids[("a-value", 2)]
    assert registry.client().get_versions("a-value") == [2]
    new_id = register(registry.client(), "a-value", rec(fld("a", "string"), fld("n", "int", default=0)))
    assert new_id not in set(ids.values()) | {id_c}
    assert lookup_version(registry, "a-value", rec(fld("a", "string"), fld("n", "int", default=0)))["version"] == 3


def test_kill9_then_restart_keeps_acknowledged_schemas_and_hands_out_a_fresh_id(registry):
    c = registry.client()
    old = {}
    for i in range(5):
        text = rec(fld(f"f{i}", "string"), name=f"K{i}")
        old[register(c, f"k{i}-value", text)] = text
    registry.kill9()
    registry.start()
    c2 = registry.client()
    for sid, text in old.items():
        assert c2.get_schema(sid).schema_str == text
    new_text = rec(fld("fresh", "string"), name="Fresh")
    new_id = register(c2, "fresh-value", new_text)
    assert new_id not in old, f"a new schema got old id {new_id} after kill -9 + restart"
    assert registry.client().get_schema(new_id).schema_str == new_text
    for sid, text in old.items():
        assert registry.client().get_schema(sid).schema_str == text


def test_restart_never_reuses_the_id_of_a_permanently_deleted_schema(registry):
    c = registry.client()
    keep = register(c, "keep-value", rec(fld("k", "string"), name="Keep"))
    gone = register(c, "gone-value", rec(fld("g", "string"), name="Gone"))
    c.delete_subject("gone-value")
    c.delete_subject("gone-value", permanent=True)
    registry.kill9()
    registry.start()
    new_id = register(registry.client(), "new-value", rec(fld("n", "string"), name="New"))
    assert new_id not in (keep, gone), f"new schema got old id {new_id} (keep={keep}, gone={gone})"
    registry.restart()
    new_id2 = register(registry.client(), "new2-value", rec(fld("m", "string"), name="New2"))
    assert new_id2 not in (keep, gone, new_id)


def test_torn_last_line_of_the_log_is_tolerated(registry):
    c = registry.client()
    old = {}
    for i in range(3):
        text = rec(fld(f"f{i}", "string"), name=f"T{i}")
        old[register(c, f"t{i}-value", text)] = (f"t{i}-value", text)
    registry.kill9()
    files = registry.data_files()
    if len(files) != 1:
        pytest.skip(f"expected the registry to write a single log file in {registry.data_dir}, found {files}")
    log = files[0]
    data = log.read_bytes()
    last = data.rstrip(b"\n").rsplit(b"\n", 1)[-1]
    torn = last[: max(1, len(last) // 2)]
    assert not torn.endswith(b"\n")
    with open(log, "ab") as f:
        f.write(torn)

    registry.start()  # must not refuse to start
    c2 = registry.client()
    for sid, (subject, text) in old.items():
        assert c2.get_schema(sid).schema_str == text
        assert c2.get_latest_version(subject).schema_id == sid
    new_text = rec(fld("after", "string"), name="After")
    new_id = register(c2, "after-value", new_text)
    assert new_id not in old
    # what was written after the torn bytes must survive the next restart
    registry.restart()
    c3 = registry.client()
    assert c3.get_schema(new_id).schema_str == new_text
    assert c3.get_latest_version("after-value").schema_id == new_id
    for sid, (_, text) in old.items():
        assert c3.get_schema(sid).schema_str == text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_server_cleanly(registry, sig):
    register(registry.client(), "s", rec(fld("a", "string")))
    registry.proc.signal(sig)
    rc = registry.proc.wait(15)
    assert rc == 0, f"exit code after {sig.name}: {rc}\n{registry.proc.describe()}"
    registry.start()
    assert registry.client().get_subjects() == ["s"]


# --------------------------------------------------------------------------
# the Confluent Avro serde against our registry (no broker needed)

ORDERS = "orders"
ORDER_SUBJECT = kfhelpers.subject_for(ORDERS, "OrderPlaced")


def _ctx(topic=ORDERS):
    return SerializationContext(topic, MessageField.VALUE)


def _frame_id(payload: bytes) -> int:
    assert payload[0] == 0, "Confluent wire format starts with magic byte 0"
    return int.from_bytes(payload[1:5], "big")


def test_keyflow_contracts_register_under_topic_record_subjects(registry):
    c = registry.client()
    c.set_compatibility(level="BACKWARD")
    ids = {}
    for name in kfhelpers.event_names():
        subject = kfhelpers.subject_for(kfhelpers.topic_of_record(name), name)
        ids[subject] = register(c, subject, kfhelpers.composed_text(name))
    assert registry.client().get_subjects() == sorted(ids)
    assert len(set(ids.values())) == len(ids)
    # registering them all again changes nothing
    for name in kfhelpers.event_names():
        subject = kfhelpers.subject_for(kfhelpers.topic_of_record(name), name)
        assert register(registry.client(), subject, kfhelpers.composed_text(name, indent=2)) == ids[subject]
    # an optional field added to the shared envelope is a BACKWARD-compatible change
    evolved = kfhelpers.composed_schema("OrderPlaced")
    evolved["fields"][0]["type"]["fields"].append(fld("tenant", ["null", "string"], default=None))
    assert registry.client().test_compatibility(ORDER_SUBJECT, avro(json.dumps(evolved))) is True


def test_avro_serializer_without_auto_register_looks_the_schema_up(registry):
    c = registry.client()
    sid = register(c, ORDER_SUBJECT, kfhelpers.composed_text("OrderPlaced"))
    # the producer holds a differently formatted copy of the same schema
    ser = AvroSerializer(
        registry.client(),
        kfhelpers.composed_text("OrderPlaced", indent=2),
        conf={"auto.register.schemas": False, "subject.name.strategy": topic_record_subject_name_strategy},
    )
    value = kfhelpers.order_placed_value("o-lookup", "c-1")
    payload = ser(value, _ctx())
    assert _frame_id(payload) == sid
    de = AvroDeserializer(registry.client())
    assert de(payload, _ctx()) == value
    assert registry.client().get_versions(ORDER_SUBJECT) == [1]


def test_avro_serializer_without_auto_register_fails_for_an_unregistered_schema(registry):
    register(registry.client(), ORDER_SUBJECT, kfhelpers.composed_text("OrderPlaced"))
    other = kfhelpers.composed_schema("OrderPlaced")
    other["fields"].append(fld("gift_note", "string", default=""))
    ser = AvroSerializer(
        registry.client(),
        json.dumps(other),
        conf={"auto.register.schemas": False, "subject.name.strategy": topic_record_subject_name_strategy},
    )
    value = kfhelpers.order_placed_value("o-x", "c-1")
    value["gift_note"] = ""
    sr_error(lambda: ser(value, _ctx()), 404, 40403)
    ser2 = AvroSerializer(
        registry.client(),
        kfhelpers.composed_text("OrderPlaced"),
        conf={"auto.register.schemas": False, "subject.name.strategy": topic_record_subject_name_strategy},
    )
    sr_error(lambda: ser2(kfhelpers.order_placed_value("o-y", "c-1"), _ctx("unknown-topic")), 404, 40401)


def test_avro_serializer_auto_registers_and_deserializer_reads_back(registry):
    schema_text = kfhelpers.composed_text("OrderPlaced")
    ser = AvroSerializer(registry.client(), schema_text)  # default: auto-register under <topic>-value
    value = kfhelpers.order_placed_value("o-auto", "c-2")
    p1 = ser(value, _ctx())
    p2 = AvroSerializer(registry.client(), schema_text)(value, _ctx())
    assert _frame_id(p1) == _frame_id(p2)
    c = registry.client()
    assert c.get_subjects() == ["orders-value"]
    assert c.get_latest_version("orders-value").schema_id == _frame_id(p1)
    assert AvroDeserializer(registry.client())(p1, _ctx()) == value
    # the body after the 5-byte header is plain Avro binary of the registered schema
    parsed = fastavro.parse_schema(json.loads(c.get_schema(_frame_id(p1)).schema_str))
    assert fastavro.schemaless_reader(io.BytesIO(p1[5:]), parsed) == value


def test_avro_serializer_use_latest_version_writes_with_the_latest_registered_schema(registry):
    c = registry.client()
    register(c, ORDER_SUBJECT, kfhelpers.composed_text("OrderPlaced"))
    evolved = kfhelpers.composed_schema("OrderPlaced")
    evolved["fields"].append(fld("gift_note", "string", default="none"))
    latest_id = register(c, ORDER_SUBJECT, json.dumps(evolved))
    ser = AvroSerializer(
        registry.client(),
        kfhelpers.composed_text("OrderPlaced"),
        conf={
            "auto.register.schemas": False,
            "use.latest.version": True,
            "subject.name.strategy": topic_record_subject_name_strategy,
        },
    )
    value = kfhelpers.order_placed_value("o-latest", "c-3")
    value["gift_note"] = "hi"
    payload = ser(value, _ctx())
    assert _frame_id(payload) == latest_id
    assert AvroDeserializer(registry.client())(payload, _ctx())["gift_note"] == "hi"
