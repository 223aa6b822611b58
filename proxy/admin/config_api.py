"""The run-time configuration over HTTP: GET /config, PUT /config (a partial update validated as a
whole, then applied by RuntimeConfig) and POST /config/reset."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

from policies.config import BackpressureConfig, PolicyRule
from proxy.admin.http import ApiError, envelope, read_json_object, validation_error
from proxy.admin.keys import RUNTIME_KEY, SIDECAR_KEY
from proxy.admin.requests import CONFIG_BOUNDS
from proxy.admin.responses import Config, ConfigChange, ConfigFile, Override, from_json_dict
from proxy.config.runtime import RuntimeConfig
from proxy.config.schema import collect_errors
from proxy.sidecar import Sidecar

_CONFIG_FIELDS = tuple(f.name for f in msgspec.structs.fields(BackpressureConfig))


def config_data(sidecar: Sidecar, runtime: RuntimeConfig) -> Any:
    """The run-time configuration (the `backpressure` keys plus `policies`), where each value comes from,
    the API changes the file would undo, and the file as last applied."""
    engine = sidecar.engine
    current = engine.config
    return Config(
        **{name: getattr(current, name) for name in _CONFIG_FIELDS},
        policies=list(engine.rules),
        sources=runtime.sources(),
        overrides=[from_json_dict(Override, o) for o in runtime.overrides()],
        file=from_json_dict(ConfigFile, runtime.file_state()),
    )


def _bounds_errors(merged: dict[str, Any]) -> list[str]:
    errors = []
    for name, (low, high) in CONFIG_BOUNDS.items():
        value = merged.get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and not low <= value <= high:
            errors.append(f"$.{name}: must be between {low:g} and {high:g} when set through the API")
    return errors


def parse_config_update(
    current: BackpressureConfig, body: dict[str, Any]
) -> tuple[BackpressureConfig, list[PolicyRule] | None, list[str]]:
    """Validate a partial update as a whole: (new config, new rules or None, changed keys); ApiError 400."""
    known = {f.encode_name for f in msgspec.structs.fields(BackpressureConfig)}
    unknown = [key for key in body if key not in known and key != "policies"]
    if unknown:
        message = f"unknown configuration key {unknown[0]!r}"
        raise ApiError(
            400,
            "UNKNOWN_KEY",
            message,
            {"field": unknown[0], "errors": [f"$.{key}: unknown field {key!r}" for key in unknown]},
        )
    updates = {k: v for k, v in body.items() if k != "policies"}
    before = msgspec.to_builtins(current)
    merged = {**before, **updates}
    errors = collect_errors(merged, BackpressureConfig)
    if not errors:
        errors = _bounds_errors(merged)
    policies = body.get("policies")
    if "policies" in body:
        errors.extend(collect_errors(policies, list[PolicyRule], "$.policies"))
    if errors:
        first = errors[0]
        field = first.split(":", 1)[0].removeprefix("$").lstrip(".") or None
        raise ApiError(400, "VALIDATION_ERROR", first, {"field": field, "errors": errors})
    try:
        config = msgspec.convert(merged, BackpressureConfig)
        rules = msgspec.convert(policies, list[PolicyRule]) if "policies" in body else None
    except msgspec.ValidationError as err:
        raise validation_error(err) from err
    changed = [k for k in updates if before.get(k) != merged[k]]
    if rules is not None:
        changed.append("policies")
    return config, rules, changed


async def get_config(request: web.Request) -> web.Response:
    return envelope(config_data(request.app[SIDECAR_KEY], request.app[RUNTIME_KEY]))


async def put_config(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    runtime = request.app[RUNTIME_KEY]
    body = await read_json_object(request)
    config, rules, changed = parse_config_update(sidecar.engine.config, body)
    runtime.apply_api(config, rules, changed)
    return envelope(ConfigChange(changed=changed, config=config_data(sidecar, runtime)))


async def post_config_reset(request: web.Request) -> web.Response:
    sidecar = request.app[SIDECAR_KEY]
    runtime = request.app[RUNTIME_KEY]
    runtime.reset()
    return envelope(ConfigChange(changed=["all"], config=config_data(sidecar, runtime)))
