"""Methods by name: the one way to build a method config (from a name with retain, layer and options, a dict, or
a YAML/JSON file or string), and `Variant`, one run of a comparison (probe, bench, eval)."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from . import methods as _builtin  # noqa: F401  (importing registers the built-in methods)
from .errors import ConfigError
from .methods.base import Method, check_options, registered
from .methods.schedule import Schedule


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
    check_options(cls, data)
    return cls(**data)


def split_layer(spec: str, label: str | None = None) -> tuple[str, int | None]:
    """A run's "name@K" as the commands write it: (name, K), or (name, None) without "@"."""
    name, _, at = spec.partition("@")
    if at and not at.isdigit():
        raise ConfigError(f"{(label or spec)!r}: the layer after '@' must be an integer, e.g. uniform@0")
    return name, int(at) if at else None


def build_method(method: str | Method | dict[str, Any], retain: float | None = None, layer: int | None = None,
                 options: dict[str, Any] | None = None, label: str | None = None) -> Method:
    """A checked method config: from a registered name with `retain` / `layer` (set where the method has them)
    and `options`, from a mapping with a 'method' key, or a config as it is. Every caller (VideoQA, the CLI, the
    probe, the benchmark, eval, the lmms-eval plugin) builds through here, so a bad option reads the same
    everywhere; the error names the run (`label`, default the method's name)."""
    if isinstance(method, Method):
        return method
    if isinstance(method, dict):
        return from_dict(method)
    cls = method_class(method)
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    fixed = {k: v for k, v in (("retain", retain), ("layer", layer)) if v is not None and k in fields}
    options = dict(options or {})
    name = label or cls.name
    clash = sorted(set(options) & set(fixed))
    if clash:
        raise ConfigError(f"{name}: the options set {', '.join(clash)}, which the run sets itself; "
                          "give it as the retain / layer of the run (--retain / --layer) instead")
    try:
        return from_dict({"method": cls.name, **fixed, **options})
    except ConfigError as err:
        raise ConfigError(f"{name}: {err}") from None


def build_run(spec: str, retain: float, layer: int | None = None,
              options: dict[str, dict[str, Any]] | None = None) -> Method:
    """A run named as `sharp probe --methods` names it: "name", "name@K" (at layer K), or stages joined by "+"
    ("vidcom2@0+sharp"): a schedule whose last stage keeps `retain` and every earlier one twice that (at most
    everything). `layer`: of every stage without @K (None: each method's own); `options`: per method name."""
    parts = spec.split("+")
    steps = []
    for i, part in enumerate(parts):
        name, at = split_layer(part, spec)
        share = retain if i == len(parts) - 1 else min(1.0, 2 * retain)
        steps.append(build_method(name, share, layer if at is None else at, (options or {}).get(name), label=spec))
    if len(steps) == 1:
        return steps[0]
    try:
        return Schedule(steps)  # type: ignore[arg-type]
    except ConfigError as err:
        raise ConfigError(f"{spec}: {err}") from None


@dataclasses.dataclass(frozen=True)
class Variant:
    """One run of a comparison: a method config at one retained share, as the reports name it.

    label: the report's name ("fastv", "uniform@0", "sharp[mask+dedup]", "sharp-cached"); method: the registered
    name ("none": the unpruned model); bias_cache: run with a bias cache shared by every call of the run.
    """

    label: str
    method: str
    retain: float
    config: Method
    bias_cache: bool = False

    @property
    def key(self) -> str:
        """How records name the run: "none", or label@retain (retain written with %g)."""
        return "none" if self.method == "none" else f"{self.label}@{self.retain:g}"


def load_config(source: str | Path | dict[str, Any]) -> Method:
    """Load a method config from a dict, a YAML/JSON file path, or a YAML/JSON string."""
    if isinstance(source, dict):
        return from_dict(source)
    text = str(source)
    path = Path(text)
    looks_like_path = isinstance(source, Path) or (
        "\n" not in text and ":" not in text and "{" not in text and (path.suffix or "/" in text)
    ) or ("\n" not in text and path.is_file())
    if path.suffix.lower() in {".yaml", ".yml", ".json"} or looks_like_path:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" or text.lstrip().startswith("{") else (
            _yaml(text))
    except (json.JSONDecodeError, _yaml_error()) as err:
        raise ConfigError(f"the config is not valid JSON/YAML: {err}") from None
    if isinstance(data, str) and data == text.strip():
        raise ConfigError(f"config {text!r} is neither an existing file nor a mapping with a 'method' key")
    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping with a 'method' key, e.g. {'method': 'fastv', 'retain': 0.1}")
    return from_dict(data)


def _yaml(text: str) -> Any:
    """YAML 1.2 booleans: only true/false. YAML 1.1 reads `off`, `on`, `yes`, `no` as booleans, which would turn
    `mask: off` into mask=False."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                 list("tTfF"))
    return yaml.load(text, Loader=Loader)  # noqa: S506  (a SafeLoader subclass)


def _yaml_error() -> type[Exception]:
    import yaml

    return yaml.YAMLError
