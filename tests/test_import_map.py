"""The import map: no circles, and no room importing a room above it (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import sharp_vlm

ROOT = Path(sharp_vlm.__file__).parent
# what each lower room may import (the table in docs/architecture.md); the tools above them (bench, probe, eval,
# viz, cli) may import any of these rooms
ALLOWED = {
    "errors": set(),
    "checks": {"errors"},
    "core": {"errors"},
    "flops": {"core"},
    "methods": {"checks", "core", "errors"},
    "models": {"core", "errors"},
    "video": {"models", "core", "errors"},
    "engine": {"methods", "models", "flops", "checks", "core", "errors"},
    "loading": {"methods", "errors"},
    "checkpoint": {"video", "errors"},
    "testing": {"models", "video", "core"},
    "pipeline": {"engine", "loading", "checkpoint", "video", "methods", "flops", "errors"},
}
TOOLS = {"bench", "probe", "eval", "viz", "cli"}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Every sharp_vlm module the file imports: at module level, inside functions and under TYPE_CHECKING."""
    tree = ast.parse(path.read_text())
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    out: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            targets = [name] + [f"{name}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        modules = {t for t in targets if t.startswith("sharp_vlm") and _exists(t)}
        # `from .core.layout import X` names the module core.layout, not the package above it
        modules = {m for m in modules if not any(o.startswith(m + ".") for o in modules)}
        out += sorted(modules)
    return out


def _exists(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph() -> dict[str, list[str]]:
    return {_module(p): _imports(p) for p in sorted(ROOT.rglob("*.py"))}


def _breaches(graph: dict[str, list[str]]) -> list[str]:
    out = []
    for mod, deps in graph.items():
        room = _room(mod)
        for dep in deps:
            other = _room(dep)
            if other == room:
                continue
            if room in ALLOWED and other not in ALLOWED[room]:
                out.append(f"{mod} imports {dep}")
            elif room in TOOLS and other == "cli":
                out.append(f"{mod} imports {dep}")
    return out


def test_no_room_imports_a_room_above_it():
    bad = _breaches(_graph())
    assert not bad, "\n".join(bad)


def test_the_room_check_finds_an_upward_import():
    graph = {"sharp_vlm.methods.x": ["sharp_vlm.engine.hooks"], "sharp_vlm.core.y": ["sharp_vlm.testing.llama"],
             "sharp_vlm.models.z": ["sharp_vlm.core.layout"], "sharp_vlm.probe.run": ["sharp_vlm.cli"]}
    assert _breaches(graph) == ["sharp_vlm.methods.x imports sharp_vlm.engine.hooks",
                                "sharp_vlm.core.y imports sharp_vlm.testing.llama",
                                "sharp_vlm.probe.run imports sharp_vlm.cli"]


def _cycles(graph: dict[str, list[str]], packages: set[str]) -> list[str]:
    """Every circle a depth-first walk meets. A package and its own modules importing each other is how a
    package is assembled (its __init__ re-exports them), not a circle."""
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(m: str) -> None:
        seen[m] = 1
        stack.append(m)
        for d in graph.get(m, []):
            if (d.startswith(m + ".") and m in packages) or (m.startswith(d + ".") and d in packages):
                continue
            if seen.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in seen:
                visit(d)
        stack.pop()
        seen[m] = 2

    for m in graph:
        if m not in seen:
            visit(m)
    return cycles


def test_the_cycle_finder_finds_circles():
    assert _cycles({"a": ["b"], "b": ["c"], "c": ["a"]}, set()) == ["a -> b -> c -> a"]
    assert _cycles({"p": ["p.x"], "p.x": ["p"]}, {"p"}) == []
    assert _cycles({"a": ["b"], "b": []}, set()) == []


def test_the_imports_have_no_circle():
    # imports inside functions count too: a lazy import that closes a circle only hides it
    graph = {mod: sorted({d for d in deps if d != mod}) for mod, deps in _graph().items()}
    cycles = _cycles(graph, _packages())
    assert not cycles, "\n".join(cycles)


def _packages() -> set[str]:
    return {_module(p) for p in ROOT.rglob("__init__.py")}


def test_the_map_names_every_room():
    # a rule for a room that does not exist would pass for ever, and a new room would go unchecked
    rooms = {p.stem for p in ROOT.iterdir() if (p.suffix == ".py" and p.stem != "__init__") or
             (p.is_dir() and (p / "__init__.py").is_file())}
    assert rooms == set(ALLOWED) | TOOLS
