"""Methods by name, and method configs from a dict, a YAML/JSON file or string."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from . import methods as _builtin  # noqa: F401  (importing registers the built-in methods)
from .config import Method, registered
from .errors import ConfigError


def methods() -> list[str]:
    """Names of all registered methods."""
    return sorted(registered())


def method_class(name: str) -> type[Method]:
    table = registered()
    key = str(name).lower()
    if key not in table:
        raise ConfigError(f"unknown method {name!r}; available: {', '.join(sorted(table))}")
    return table[key]


def from_dict(data: dict[str, Any]) -> Method:
    """Build a method config from a mapping with a `method` key, e.g. {"method": "fastv", "retain": 0.1}."""
    if "method" not in data:
        raise ConfigError(f"config needs a 'method' key naming one of: {', '.join(methods())}")
    data = dict(data)
    cls = method_class(str(data.pop("method")))
    from_mapping = getattr(cls, "from_mapping", None)
    if from_mapping is not None:  # a composite config (a schedule) builds its parts with from_dict
        return from_mapping(data, from_dict)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - fields)
    if unknown:
        options = ", ".join(sorted(fields)) if fields else "none"
        raise ConfigError(f"{cls.name} has no option(s) {', '.join(unknown)}; its options: {options}")
    return cls(**data)


def load_config(source: str | Path | dict[str, Any]) -> Method:
    """Load a method config from a dict, a YAML/JSON file path, or a YAML/JSON string."""
    if isinstance(source, dict):
        return from_dict(source)
    text = str(source)
    path = Path(text)
    looks_like_path = isinstance(source, Path) or (
        "\n" not in text and ":" not in text and "{" not in text and (path.suffix or "/" in text)
    )
    if path.suffix.lower() in {".yaml", ".yml", ".json"} or looks_like_path:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
    import yaml

    try:
        data = json.loads(text) if path.suffix.lower() == ".json" or text.lstrip().startswith("{") else (
            yaml.safe_load(text))
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"the config is not valid JSON/YAML: {err}") from None
    if isinstance(data, str) and data == text.strip():
        raise ConfigError(f"config {text!r} is neither an existing file nor a mapping with a 'method' key")
    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping with a 'method' key, e.g. {'method': 'fastv', 'retain': 0.1}")
    return from_dict(data)
