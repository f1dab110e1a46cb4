"""The package's shape: module dependencies point one way, one flag spelling, thin CLI faces."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from resnet50.cli import COMMANDS, build_parser, dashed

SRC = Path(__file__).parents[1] / "src" / "resnet50"


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports at module level (function-level imports included: they are
    cycles too, only deferred)."""
    graph: dict[str, set[str]] = {}
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    for name, path in modules.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                candidates = [target] + [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            deps |= {c for c in candidates if c in modules and c != name}
        graph[name] = deps
    return graph


def test_no_import_cycle_among_the_package_modules():
    graph = import_graph()
    # a package's __init__ re-exports its modules: edges into a package from its own modules are not cycles
    for name in graph:
        graph[name] = {d for d in graph[name] if not name.startswith(d + ".")}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle.extend(path[path.index(dep):] + [node, dep] if dep in path else [node, dep])
                return True
            if state.get(dep) is None and visit(dep, path + [node]):
                return True
        state[node] = 2
        return False

    for node in sorted(graph):
        if state.get(node) is None and visit(node, []):
            break
    assert not cycle, " -> ".join(cycle)


def test_dependencies_point_down():
    graph = import_graph()
    foundation = {"resnet50.errors", "resnet50.configs"}  # errors, and the configs' dict round trip (errors only)
    assert not graph["resnet50.configs"] - {"resnet50.errors"}, "configs.py is the foundation's: errors only"
    assert not graph["resnet50.model"] - foundation, "model.py knows nothing of data, training or the CLI"
    data = {m for m in graph if m.startswith("resnet50.data")}
    for m in data:
        assert all(d.startswith("resnet50.data") or d in ("resnet50.errors",) for d in graph[m]), m
    assert "resnet50.infer" not in graph["resnet50.export"] and "resnet50.export" not in graph["resnet50.backends"]
    assert not {d for d in graph["resnet50.backends"] if d in ("resnet50.weights", "resnet50.infer")}
    library = {m for m in graph if not m.startswith("resnet50.cli") and m != "resnet50.__main__"}
    assert all(not d.startswith("resnet50.cli") for m in library for d in graph[m])


def _subparsers():
    return next(a for a in build_parser()._actions if a.dest == "command").choices


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_one_spelling(command):
    help_text = _subparsers()[command].format_help()
    options = [s for a in _subparsers()[command]._actions for s in a.option_strings if s.startswith("--")]
    assert all("_" not in o for o in options), [o for o in options if "_" in o]
    assert "--batch_size" not in help_text


def test_the_old_underscore_spelling_still_parses():
    parser = build_parser()
    args = parser.parse_args(dashed(["train", "--batch_size", "8", "--max_steps=3", "--init_weights", "a_b.pt",
                                     "--name", "my_run"]))
    assert (args.batch_size, args.max_steps, args.init_weights, args.name) == ("8", "3", "a_b.pt", "my_run")
    args = parser.parse_args(dashed(["predict", "x_y.png", "--weights", "w.safetensors", "--batch_size", "4",
                                     "--max_pixels", "10"]))
    assert (args.batch_size, args.max_pixels, args.inputs) == (4, 10, ["x_y.png"])
    out = subprocess.run([sys.executable, "-m", "resnet50", "summary", "--arch", "resnet18", "--num_classes", "7",
                          "--in_chans", "1", "--json"], capture_output=True, text=True)
    assert out.returncode == 0 and '"params"' in out.stdout, out.stderr


def test_required_flags_are_required_by_the_parser():
    out = subprocess.run([sys.executable, "-m", "resnet50", "predict", "x.png"], capture_output=True, text=True)
    assert out.returncode == 2 and "--weights" in out.stderr and "Traceback" not in out.stderr


def test_every_command_module_is_thin():
    """A subcommand module parses and calls one library function: no function in it is long."""
    for path in (SRC / "cli").glob("*.py"):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef):
                assert node.end_lineno - node.lineno < 45, f"{path.name}:{node.name} has grown into logic"
