"""The shape of the house, checked: every import points down, rooms stay small, the top level is the design's.

"Down" means: the graph of imports between the package's modules (module-level and
function-level imports alike) has no cycle, and nothing in the package imports the
benchmarks (`tinytransformer.bench`) or the lecture scripts (`chapters/`). A package's
`__init__` is its front door: it may import its own modules, which never import it back.
"""
import ast
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tinytransformer"
MAX_MODULE_LINES = 450
MAX_CLASS_LINES = 250
# The design card's top level, and the files every repository has beside it.
TOP_LEVEL = {"setup.cfg", "tinytransformer", "cuda_kernels", "chapters", "tests", "docs"}
TOP_LEVEL_META = {"README.md", "LICENSE", "pyproject.toml", ".gitignore", ".ci", "benchmarks"}


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, path: pathlib.Path) -> set[str]:
    """The package's modules that `name` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            # `from a import b` imports a.b when b is a module, else a
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != "tinytransformer")
    found.discard(name)
    return found


GRAPH = {name: imported_modules(name, path) for name, path in MODULES.items()}


def test_nothing_in_the_package_imports_the_benchmarks():
    offenders = {name: sorted(d for d in deps if d.startswith("tinytransformer.bench"))
                 for name, deps in GRAPH.items() if not name.startswith("tinytransformer.bench")}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_lecture_imports_the_benchmarks_and_nothing_imports_a_lecture():
    def imports(path):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                  for a in n.names]
        return names

    for path in sorted((ROOT / "chapters").glob("*.py")):
        assert not [m for m in imports(path) if m.startswith("tinytransformer.bench")], path.name
    for path in [*MODULES.values(), *sorted((ROOT / "tests").rglob("*.py"))]:
        assert not [m for m in imports(path) if m.split(".")[0] in ("chapters", "_lecture")], path


def test_every_import_points_down():
    """No cycle in the import graph: a depth-first search finds no edge back to a module on its stack."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    cycles = []

    def visit(name, stack):
        state[name] = 1
        for dep in sorted(GRAPH[name]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_a_subpackage_module_never_imports_its_own_front_door():
    packages = {name for name, path in MODULES.items() if path.name == "__init__.py" and name != "tinytransformer"}
    offenders = [f"{name} imports {dep}" for name, deps in GRAPH.items() for dep in deps
                 if dep in packages and name.startswith(dep + ".")]
    assert not offenders


@pytest.mark.parametrize("folder", ["tinytransformer", "chapters", "tests"])
def test_no_module_is_over_the_line_limit(folder):
    long = {str(p.relative_to(ROOT)): n for p in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_class_is_over_the_line_limit():
    long = {}
    for path in MODULES.values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                long[f"{path.relative_to(ROOT)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert not long, f"classes over {MAX_CLASS_LINES} lines: {long}"


def test_the_top_level_is_the_design_cards():
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        pytest.skip(f"not a git checkout ({error}); the top level is checked from git's list of files")
    top = {line.split("/")[0] for line in listed.splitlines() if line}
    assert TOP_LEVEL <= top, f"missing from the top level: {sorted(TOP_LEVEL - top)}"
    assert top <= TOP_LEVEL | TOP_LEVEL_META, f"not in the design: {sorted(top - TOP_LEVEL - TOP_LEVEL_META)}"
