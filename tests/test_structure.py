"""The package's layering, read from the source: which packages may import which.

- ``config/`` imports nothing above it (only itself and the leaf ``modality``);
- files in ``configs/`` import only ``latentlm_jax.config`` (and load each other by path);
- ``modality`` is a leaf; ``train/`` knows no model family (no ``lm``, ``vae``, ``models``);
- no two modules import each other, directly or through others.
"""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "latentlm_jax"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: pathlib.Path) -> set[str]:
    """Every ``latentlm_jax`` module a file imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return {m for m in out if m == "latentlm_jax" or m.startswith("latentlm_jax.")}


def package_files(sub: str) -> list[pathlib.Path]:
    return sorted((PKG / sub).rglob("*.py"))


def outside(path: pathlib.Path, allowed: tuple[str, ...]) -> set[str]:
    return {m for m in imports(path) if not any(m == a or m.startswith(a + ".") for a in allowed)}


def test_config_package_is_a_leaf():
    bad = {module_name(f): outside(f, ("latentlm_jax.config", "latentlm_jax.modality"))
           for f in package_files("config")}
    assert not {k: v for k, v in bad.items() if v}


def test_config_files_import_only_the_config_package():
    files = sorted((ROOT / "configs").glob("*.py"))
    assert files
    bad = {f.name: outside(f, ("latentlm_jax.config",)) for f in files}
    assert not {k: v for k, v in bad.items() if v}


def test_modality_is_a_leaf_and_train_knows_no_model_family():
    assert imports(PKG / "modality.py") == set()
    families = ("latentlm_jax.lm", "latentlm_jax.vae", "latentlm_jax.models",
                "latentlm_jax.diffusion", "latentlm_jax.demo")
    bad = {module_name(f): {m for m in imports(f) if m.startswith(families)}
           for f in package_files("train")}
    assert not {k: v for k, v in bad.items() if v}


def test_no_import_cycles():
    mods = {module_name(f): f for f in PKG.rglob("*.py")}
    graph = {m: {t for t in imports(f) if t in mods and t != m and not m.startswith(t + ".")}
             for m, f in mods.items()}
    # A cycle exists iff some module reaches itself.
    cycles = []
    for start in graph:
        seen, todo = set(), list(graph[start])
        while todo:
            m = todo.pop()
            if m == start:
                cycles.append(start)
                break
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
    assert not cycles, f"modules on an import cycle: {sorted(cycles)}"
