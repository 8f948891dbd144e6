"""The package's layering, read from the source: every ``import`` of every module (function-level
ones included) goes to the same layer or a lower one; only the Ray package imports Ray; the pure
core imports neither torch nor Ray; ``import psfm`` is light. ARCHITECTURE.md draws the same
layers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import psfm

PKG = Path(psfm.__file__).resolve().parent

# lowest first; a module may import its own layer and the layers before it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("psfm.errors", "psfm.hashing", "psfm.progress", "psfm.memory")),
    ("math", ("psfm.optim", "psfm.models", "psfm.metrics")),
    ("config", ("psfm.config", "psfm.steps", "psfm.checkpoint")),
    ("data", ("psfm.data",)),
    ("parameter server", ("psfm.ps",)),
    ("worker and serving", ("psfm.worker", "psfm.export")),
    ("offline tooling", ("psfm.datasets",)),
    ("run loop", ("psfm.backend", "psfm.failure", "psfm.scoring", "psfm.passes", "psfm.rundir")),
    ("run loop", ("psfm.warmstart", "psfm.runloop", "psfm.local_backend", "psfm.trainer")),
    ("Ray backend", ("psfm.ray_backend",)),
    ("entry points", ("psfm.cli_options", "psfm.cli", "psfm", "psfm.study")),
]

# the pure core: what a reader can import (and type-check) without torch or Ray
PURE = ("psfm.errors", "psfm.hashing", "psfm.optim", "psfm.metrics", "psfm.config", "psfm.steps")
PURE += ("psfm.checkpoint", "psfm.data", "psfm.ps", "psfm.models.layout", "psfm.datasets")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _imports(path: Path, name: str) -> set[str]:
    """Absolute names of every module ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # "from psfm import x"
    return out


def _layer(name: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for i, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            if name == pre or name.startswith(pre + "."):
                if best is None or len(pre) > best[0]:
                    best = (len(pre), i)
    return None if best is None else best[1]


def _in(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


MODULES = _modules()


def test_every_module_has_a_layer():
    assert "psfm.runloop" in MODULES and "psfm.ps.shard" in MODULES  # the walk found the package
    assert [m for m in MODULES if _layer(m) is None] == []


def test_no_module_imports_a_higher_layer():
    bad = []
    for name, path in MODULES.items():
        own = _layer(name)
        assert own is not None
        for imp in _imports(path, name):
            if not imp.startswith("psfm"):
                continue
            target = _layer(imp)
            if target is not None and target > own and imp != "psfm":
                bad.append(f"{name} ({LAYERS[own][0]}) imports {imp} ({LAYERS[target][0]})")
    assert bad == []


def test_the_walk_sees_a_violation(tmp_path):
    """The checker itself: function-level and relative imports of a higher layer are found."""
    f = tmp_path / "shard.py"
    f.write_text(
        "def f():\n    from psfm.runloop import Backend\n    from ..worker import Worker\n"
    )
    got = _imports(f, "psfm.ps.shard")
    assert {"psfm.runloop", "psfm.worker"} <= got
    assert _layer("psfm.runloop") > _layer("psfm.ps.shard") < _layer("psfm.worker")


def test_only_the_ray_package_imports_ray():
    users = sorted(
        name
        for name, path in MODULES.items()
        if any(i == "ray" or i.startswith("ray.") for i in _imports(path, name))
    )
    assert users and all(_in(u, ("psfm.ray_backend",)) for u in users), users


def test_the_pure_core_imports_neither_torch_nor_ray():
    bad = [
        f"{name} imports {imp}"
        for name, path in MODULES.items()
        if _in(name, PURE)
        for imp in _imports(path, name)
        if imp.split(".")[0] in ("torch", "ray")
    ]
    assert bad == []


@pytest.mark.parametrize("stmt", ["import psfm", "import psfm.cli", "import psfm.runloop"])
def test_light_imports_do_not_load_torch_or_ray(stmt):
    code = f"{stmt}; import sys; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_public_names_still_resolve():
    assert psfm.load_config.__module__ == "psfm.config"
    assert callable(psfm.train_local) and psfm.ParameterShard.__name__ == "ParameterShard"
    with pytest.raises(AttributeError):
        psfm.no_such_name  # noqa: B018


def test_the_top_level_help_does_not_import_the_offline_tools():
    code = (
        "import sys; from psfm.cli import _parser; _parser().format_help(); "
        "print(sorted(m for m in ('torch', 'ray', 'psfm.datasets.convert', 'psfm.rundir') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
