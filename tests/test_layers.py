"""salsa's modules form layers; a module imports only from its own layer or the layers below (docs/design.md).

Every import is counted, also those inside functions: a lazy import of a higher layer is still a dependency.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "salsa"

# Bottom to top. A module's layer is that of the longest prefix listed (a package covers its modules).
LAYERS = [
    # leaves: no salsa imports but each other
    ("errors", "version", "shipped", "progress", "seeding", "io", "tasks", "judge_prompt", "encoder_reward",
     "weights.spec", "sweep_spec", "rl.core", "evaluation.stats", "plots"),
    # settings: every stage's config and how it is read
    ("options", "config", "config_loading"),
    # data and the torch-free check of every input
    ("data", "tokenization", "standard_sets", "inputs"),
    # compute: devices, models, weights, sampling, logs, checkpoints, scoring
    ("runtime", "models", "weights", "generation", "logs", "checkpoint", "scoring", "training", "rl.policy"),
    # the stage lifecycle
    ("engine",),
    # the stages
    ("sft", "soup", "task_data", "reward", "rl", "evaluation", "evaluate", "report"),
    # the whole pipeline
    ("pipeline", "grid", "executors", "demo", "study"),
    # the interfaces
    ("cli", "__init__"),
]  # fmt: skip


def layer_of(module: str) -> int:
    best, found = -1, None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > best:
                best, found = len(name), index
    if found is None:
        raise AssertionError(f"salsa.{module} has no layer in tests/test_layers.py: add it to LAYERS")
    return found


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def salsa_imports(path: Path) -> set[str]:
    """Every salsa module that `path` imports, anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "salsa":
            if node.module == "salsa":  # `from salsa import runtime`: a module; any other name is the package root's
                found |= {a.name if (PACKAGE / f"{a.name}.py").is_file() else "__init__" for a in node.names}
            else:
                found.add(node.module.removeprefix("salsa."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("salsa.") for a in node.names if a.name.startswith("salsa.")}
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_layer_above_its_own(path):
    module = "__init__" if path == PACKAGE / "__init__.py" else module_name(path)
    own = layer_of(module)
    upward = sorted(name for name in salsa_imports(path) if layer_of(name) > own)
    assert not upward, f"salsa.{module} (layer {own}) imports from higher layers: {upward}"


def test_the_layer_check_sees_an_upward_import(tmp_path):
    # The check itself must catch a lazy import inside a function.
    source = tmp_path / "models.py"
    source.write_text("def f():\n    from salsa.engine import remove_debris\n")
    assert "engine" in salsa_imports(source) and layer_of("engine") > layer_of("models")
