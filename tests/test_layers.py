"""salsa's modules form layers; a module imports only from its own layer or the layers below (docs/design.md), and
no stage imports another stage: what two stages share lives in a layer below them.

Every import is counted, also those inside functions (a lazy import of a higher layer is still a dependency) and
relative ones (`from . import x`, `from ..weights import merge`).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "salsa"

# Bottom to top. A module's layer is that of the longest prefix listed (a package covers its modules); "__init__" is
# the package root (salsa/__init__.py).
LAYERS = [
    # leaves: no salsa imports but each other
    ("errors", "version", "shipped", "progress", "seeding", "io", "tasks", "judge_prompt", "encoder_reward", "trackers",
     "weights.spec", "sweep_spec", "evaluation.stats", "plots"),
    # settings: every stage's config and how it is read
    ("options", "config", "config_loading"),
    # data and the torch-free check of every input
    ("data", "tokenization", "standard_sets", "inputs"),
    # compute: devices, models, weights (the streaming merge engine of soup and WARM included), sampling, logs,
    # checkpoints, scoring, the policy (RL trains it, the evaluation scores it) and its snapshots (RL writes them,
    # the evaluation reads them)
    ("runtime", "models", "weights", "generation", "logs", "checkpoint", "scoring", "policy", "snapshots"),
    # the stage lifecycle
    ("engine",),
    # sampling, judging and statistics: `evaluation/` holds the eval stage's parts, but report (soup health, sweeps,
    # the verdict rule) and reward (intervals) use them too, so it is a library below the stages, not a stage
    ("evaluation",),
    # the stages: none imports another
    ("sft", "soup", "task_data", "reward", "rl", "evaluate", "report"),
    # the whole pipeline
    ("pipeline", "grid", "executors", "demo", "study"),
    # the interfaces
    ("cli", "__init__"),
]  # fmt: skip
STAGES = LAYERS.index(("sft", "soup", "task_data", "reward", "rl", "evaluate", "report"))


def covering_entry(module: str) -> tuple[int, str]:
    """(layer, LAYERS entry) of a module: the longest entry that is the module or a package above it."""
    best, found = "", None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, found = name, index
    if found is None:
        raise AssertionError(f"salsa.{module} has no layer in tests/test_layers.py: add it to LAYERS")
    return found, best


def layer_of(module: str) -> int:
    return covering_entry(module)[0]


def is_module(parts: tuple[str, ...]) -> bool:
    """Whether salsa.<parts> is a module or a package (rather than a name defined in one)."""
    path = PACKAGE.joinpath(*parts)
    return bool(parts) and (path.with_suffix(".py").is_file() or path.is_dir())


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts == ("__init__",):
        return "__init__"
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def salsa_imports(source: str, package: tuple[str, ...]) -> set[str]:
    """Every salsa module that `source` imports, anywhere in it; `package` is the package the source lives in, below
    salsa (`("rl",)` for rl/ppo.py and rl/__init__.py, `()` for reward.py), against which relative imports resolve.
    `from X import a` imports X.a where that is a module, else X; the package root is "__init__"."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: level 1 is `package`, each further dot one package up
                up = node.level - 1
                if up > len(package):
                    raise AssertionError(f"a relative import climbs above salsa: {ast.unparse(node)}")
                base = package[: len(package) - up] + tuple(node.module.split(".") if node.module else ())
            elif node.module.split(".")[0] == "salsa":
                base = tuple(node.module.split(".")[1:])
            else:
                continue
            for alias in node.names:
                parts = base + (alias.name,) if is_module(base + (alias.name,)) else base
                found.add(".".join(parts) or "__init__")
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("salsa.") if a.name != "salsa" else "__init__" for a in node.names
                      if a.name.split(".")[0] == "salsa"}  # fmt: skip
    return found


def problems(module: str, imports: set[str]) -> list[str]:
    """What is wrong with `module` importing `imports`: an import from a higher layer, or from another stage."""
    own_layer, own_entry = covering_entry(module)
    found = []
    for name in sorted(imports):
        layer, entry = covering_entry(name)
        if layer > own_layer:
            found.append(f"{name} (a higher layer: {layer} > {own_layer})")
        elif layer == own_layer == STAGES and entry != own_entry:
            found.append(f"{name} (another stage: {entry}; move what they share to a layer below the stages)")
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_from_a_layer_above_or_from_another_stage(path):
    module = module_name(path)
    found = problems(module, salsa_imports(path.read_text(), path.relative_to(PACKAGE).parent.parts))
    assert not found, f"salsa.{module} (layer {layer_of(module)}) imports {found}"


def test_every_layers_entry_names_a_module():
    stale = [name for names in LAYERS for name in names if name != "__init__" and not is_module(tuple(name.split(".")))]
    assert not stale, f"tests/test_layers.py lists modules that do not exist: {stale}"


def test_the_layer_check_sees_an_upward_import():
    # The check itself must catch a lazy import inside a function.
    imports = salsa_imports("def f():\n    from salsa.engine import remove_debris\n", ())
    assert imports == {"engine"} and problems("models", imports) == ["engine (a higher layer: 4 > 3)"]


@pytest.mark.parametrize(
    ("package", "source", "imported"),
    [
        (("weights",), "from ..engine import remove_debris", "engine"),  # weights/merge.py, two dots: salsa
        (("weights",), "from .. import engine", "engine"),
        ((), "from . import engine", "engine"),  # a top-level module, one dot: salsa
        (("weights",), "from .stream import read_tensor\nfrom . import average", None),  # its own layer
    ],
)
def test_the_layer_check_resolves_relative_imports(package, source, imported):
    module = ".".join(package + ("planted",)) if package else "models"
    imports = salsa_imports(source, package)
    assert all(not name.startswith(".") for name in imports)
    assert [p.split(" ")[0] for p in problems(module, imports)] == ([imported] if imported else [])


@pytest.mark.parametrize(
    ("module", "source", "imported"),
    [
        ("reward", "from salsa import soup", "soup"),
        ("reward", "def f():\n    from salsa.soup import build_soup\n", "soup"),
        ("evaluate", "import salsa.rl.ppo", "rl.ppo"),
        ("rl.ppo", "from ..sft import train_sft", "sft"),  # relative, out of the rl package
        ("rl.ppo", "from . import dpo\nfrom .core import gae", None),  # the same stage
        ("report", "from salsa.evaluation import soup_health", None),  # the evaluation library is below the stages
    ],
)
def test_the_layer_check_sees_an_import_of_another_stage(module, source, imported):
    package = tuple(module.split(".")[:-1])
    found = problems(module, salsa_imports(source, package))
    assert [p.split(" ")[0] for p in found] == ([imported] if imported else [])
    assert all("another stage" in p for p in found)
