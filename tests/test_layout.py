"""The house rules of the layout: a package per concept, imports pointing one way, no twin module names."""

from __future__ import annotations

import ast
import collections
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CORE = PROJECT_ROOT / "trading_core"

# Lower packages first: a package may import only from packages before it (and from itself).
LAYERS = (
    "runtime",
    "data",
    "regimes",
    "features",
    "market",
    "sectors",
    "allocators",
    "broker",
    "envs",
    "models",
    "agents",
    "evaluation",
    "monitoring",
    "live",
    "hierarchy",
)


def _imported_modules(path: Path) -> list[str]:
    modules: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.append(node.module)
        elif isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
    return modules


def _core_modules() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def test_every_core_module_lives_in_a_concept_package():
    loose = [p.name for p in CORE.glob("*.py") if p.name != "__init__.py"]
    assert loose == []
    packages = {p.name for p in CORE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(LAYERS)


def test_no_module_name_is_repeated_inside_trading_core():
    names = collections.Counter(p.name for p in _core_modules() if p.name != "__init__.py")
    assert [name for name, count in names.items() if count > 1] == []


def test_core_imports_point_down_the_layers():
    climbs = []
    for path in _core_modules():
        package = path.relative_to(CORE).parts[0]
        for module in _imported_modules(path):
            parts = module.split(".")
            if parts[0] != "trading_core" or len(parts) < 2 or parts[1] == package:
                continue
            if LAYERS.index(parts[1]) > LAYERS.index(package):
                climbs.append(f"{path.relative_to(PROJECT_ROOT)} imports {module}")
    assert climbs == []


def test_the_domain_never_imports_dagster_or_the_outer_layers():
    outer = ("dagster", "dagster_mlflow", "trading_assets", "resources", "pipelines", "testkit")
    offenders = [
        f"{path.relative_to(PROJECT_ROOT)} imports {module}"
        for path in _core_modules()
        for module in _imported_modules(path)
        if module.split(".")[0] in outer
    ]
    assert offenders == []


def test_production_code_reaches_the_testkit_only_on_demand():
    """The fake Alpaca is imported lazily by ``--fake-alpaca`` only, so the image (without testkit/) runs."""
    top_level = []
    for folder in ("trading_core", "trading_assets", "resources", "pipelines"):
        for path in sorted((PROJECT_ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in tree.body:
                if isinstance(node, ast.ImportFrom | ast.Import):
                    names = (
                        [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                    )
                    top_level += [f"{path.name}: {n}" for n in names if n and n.startswith("testkit")]
    assert top_level == []
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert "COPY testkit" not in dockerfile and "COPY . " not in dockerfile
