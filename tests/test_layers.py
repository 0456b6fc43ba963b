"""The shape of the code: data flows export -> runtime -> webapp, and nothing imports against that flow;
the prompt the runtime builds is the one the exported tokenizer's own chat template gives."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("export", "runtime", "webapp", "bench")
# package -> modules it must never import (at any depth, including imports inside functions)
FORBIDDEN = {
    "runtime": ("webapp", "export", "bench"),  # the runtime serves exports; it knows no web layer or exporter
    "export": ("webapp", "bench"),  # it may reuse small pure helpers of runtime (settings, preprocessing)
    "webapp": ("export", "bench", "runtime.backends"),  # the web layer talks to the engine, never a backend
}


def imported_modules(path: Path) -> set[str]:
    """Every module named by an import statement of a file, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def violations(package: str) -> list[str]:
    """'file: module' for each forbidden import in package."""
    out = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in sorted(imported_modules(path)):
            if any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN[package]):
                out.append(f"{path.relative_to(ROOT)}: {module}")
    return out


@pytest.mark.parametrize("package", list(FORBIDDEN))
def test_no_import_against_the_flow(package):
    assert violations(package) == []


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    """The check itself works: an import inside a function, written relatively, is still found."""
    fake = tmp_path / "runtime"
    fake.mkdir()
    (fake / "x.py").write_text("def f():\n    from ..webapp import state\n    import export.pipeline\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert violations("runtime") == ["runtime/x.py: export.pipeline", "runtime/x.py: webapp",
                                     "runtime/x.py: webapp.state"]


# ---------------------------------------------------------------------------- the chat template

def rendered_template(export_dir: Path, dialog: list[tuple[str, str, list[int]]]) -> str:
    """The exported chat_template.jinja rendered as transformers would, each image expanded as the processor
    does (`<IMG_CONTEXT>` -> `<img>` + 256 `<IMG_CONTEXT>` per tile + `</img>`)."""
    import jinja2

    from runtime.prompts import image_placeholder

    template = jinja2.Environment().from_string((export_dir / "chat_template.jinja").read_text())
    messages = [{"role": role, "content": [{"type": "image"} for _ in tiles] + [{"type": "text", "text": text}]}
                for role, text, tiles in dialog]
    text = template.render(messages=messages, add_generation_prompt=True)
    images = [t for _, _, tiles in dialog for t in tiles]
    pieces = text.split("<IMG_CONTEXT>")
    assert len(pieces) == len(images) + 1
    return pieces[0] + "".join(image_placeholder(t) + rest for t, rest in zip(images, pieces[1:]))


DIALOGS = [
    [("user", "What is in this picture?", [1])],
    [("system", "Answer briefly.", []), ("user", "Describe it.", [3])],
    [("user", "First?", [2]), ("assistant", "A cat.", []), ("user", "And this one?", [1]),
     ("assistant", "A dog.", []), ("user", "Which is bigger?", [])],
    [("user", "Two at once", [1, 2])],
]


@pytest.mark.parametrize("dialog", DIALOGS, ids=range(len(DIALOGS)))
def test_our_prompt_builder_is_the_tokenizers_chat_template(model_cache, dialog):
    from runtime.prompts import build_prompt

    export_dir = next(model_cache.glob("exported/*/int8"))
    assert str(build_prompt(dialog)) == rendered_template(export_dir, dialog)
