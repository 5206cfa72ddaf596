"""The shape of the package, checked: job folders over a flat core, imports only downward, no cycles,
short functions, and optional dependencies inside the one folder (peft: the one module) that needs them.

The layers, lowest first. A module may import its own layer and the ones below, never one above;
a folder's layer covers every module in it. README's "How the code is laid out" explains them.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "chatbot"
LAYERS = [
    ["layout", "fileio", "resources", "distributed", "flags", "metrics"],  # plain helpers, no torch
    ["options", "tokenization"],
    ["data", "model"],  # corpora -> ids; models in, out and converted
    ["generate"],  # ids -> ids: the decoding core shared by chat, eval and serving
    ["conversation", "bot"],  # the ChatBot facade
    ["evaluate", "reports", "config"],
    ["train", "serve", "deploy"],  # the two long-running jobs, and exports for other runtimes
    ["repl", "cli", ""],  # the faces: commands, the terminal and `import chatbot`
]
# dependency -> the folder (or module) that owns it
OPTIONAL = {"fastapi": "serve", "uvicorn": "serve", "starlette": "serve",
            "ctranslate2": "deploy", "onnxruntime": "deploy", "peft": "model.lora"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function: 'chatbot.x.y' or a top-level name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # `from chatbot.serve import engine` imports the module chatbot.serve.engine.
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return found


GRAPH = {name: {m for m in imports(path) if m in MODULES and m != name} for name, path in MODULES.items()}


def layer(module: str) -> int:
    """The layer of `chatbot.x` or of any module in the folder `chatbot.x`."""
    part = module.removeprefix("chatbot").removeprefix(".").split(".")[0]
    (index,) = [i for i, names in enumerate(LAYERS) if part in names]
    return index


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


def test_nothing_imports_upward():
    upward = [f"{a} (layer {layer(a)}) imports {b} (layer {layer(b)})"
              for a, deps in GRAPH.items() for b in deps if layer(b) > layer(a)]
    assert not upward


def test_no_import_cycles():
    visiting, done, cycles = [], set(), []

    def visit(name: str) -> None:
        if name in visiting:
            cycles.append(visiting[visiting.index(name):] + [name])
            return
        if name in done:
            return
        visiting.append(name)
        for dep in sorted(GRAPH[name]):
            visit(dep)
        visiting.pop()
        done.add(name)

    for name in MODULES:
        visit(name)
    assert not cycles


def test_the_server_scheduler_sits_below_the_facade():
    assert not {"chatbot.bot", "chatbot.conversation"} & GRAPH["chatbot.serve.engine"]
    for name in MODULES:
        if name.startswith("chatbot.generate"):
            assert "chatbot.bot" not in GRAPH[name], name


@pytest.mark.parametrize("dependency", sorted(OPTIONAL))
def test_optional_dependencies_stay_in_their_folder(dependency):
    owner = f"chatbot.{OPTIONAL[dependency]}"
    users = [name for name, path in MODULES.items()
             if any(m == dependency or m.startswith(dependency + ".") for m in imports(path))]
    assert users and all(name == owner or name.startswith(owner + ".") for name in users), users


def test_functions_fit_on_a_screen():
    long = [f"{module_name(path)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in MODULES.values()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60]
    assert not long


def test_lines_are_at_most_110_characters():
    wide = [f"{module_name(path)}:{i}" for path in MODULES.values()
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if len(line) > 110]
    assert not wide


def test_each_job_folder_says_what_it_holds():
    for folder in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8")))
        modules = sorted(p.name for p in folder.glob("*.py") if p.name != "__init__.py")
        assert doc and all(m in doc for m in modules), (folder.name, modules)
