"""The answers are types: every JSON answer of the document is a Struct of proxy/admin/responses.py,
its schema is msgspec's for that Struct, and building a Struct changes no byte of the JSON."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from proxy.admin import responses
from proxy.admin.history import sample_to_json
from proxy.admin.openapi import RENAMED, build_openapi
from proxy.admin.responses import RESPONSES, HistoryPoint, camel, from_json_dict

DOC = build_openapi()
SCHEMAS = DOC["components"]["schemas"]


def test_every_json_answer_is_a_generated_struct_schema() -> None:
    names = {cls.__name__ for cls in RESPONSES}
    seen = set()
    for path, ops in DOC["paths"].items():
        for method, op in ops.items():
            for status, answer in op["responses"].items():
                schema = answer.get("content", {}).get("application/json", {}).get("schema")
                if schema is None or not status.startswith("2") or path.endswith("openapi.json"):
                    continue
                ref = schema["properties"]["data"]["$ref"]
                name = ref.rsplit("/", 1)[-1]
                assert name in names, (method, path, name)
                seen.add(name)
    assert seen == names


@pytest.mark.parametrize("cls", RESPONSES, ids=lambda c: c.__name__)
def test_the_component_is_msgspecs_schema_of_the_struct(cls: type) -> None:
    ref = "#/components/schemas/{name}"
    _, components = msgspec.json.schema_components([cls], ref_template=ref)
    expected = msgspec.json.decode(msgspec.json.encode(components[cls.__name__]))
    got = SCHEMAS[cls.__name__]
    text = msgspec.json.encode(expected).decode()
    for old, new in RENAMED.items():
        text = text.replace(f'"{ref.format(name=old)}"', f'"{ref.format(name=new)}"')
    assert got == msgspec.json.decode(text)
    assert got.get("additionalProperties") is False


def test_camel_keeps_units_upper_case() -> None:
    assert camel("current_memory_mb") == "currentMemoryMB"
    assert camel("cgroup_limit_mb") == "cgroupLimitMB"
    assert camel("oldest_queued_age_seconds") == "oldestQueuedAgeSeconds"
    assert camel("p50") == "p50"


def test_a_struct_built_from_a_dict_encodes_to_the_same_bytes() -> None:
    # Ints in float fields stay ints (msgspec.convert would make 7 into 7.0).
    sample = (1_700_000_000.123, 12, 3.5, 7, 100, 55.5, 2.0, 1, 4, 1.0, 10, 9, 1, 0, 0, 0, 0.4, 0, 12, 0, -1)
    for reasons in (None, {"queue_full": 3}):
        point: dict[str, Any] = sample_to_json(sample, reasons)
        built = from_json_dict(HistoryPoint, point)
        assert msgspec.json.encode(built) == msgspec.json.encode(point)


def test_config_view_has_every_backpressure_key_then_the_extras() -> None:
    from policies.config import BackpressureConfig

    keys = [f.encode_name for f in msgspec.structs.fields(BackpressureConfig)]
    config = [f.encode_name for f in msgspec.structs.fields(responses.Config)]
    assert config == [*keys, "policies", "sources", "overrides", "file"]
    assert SCHEMAS["Config"]["required"] == config
