"""The package's layout (ARCHITECTURE.md): `models/` holds only what a Hub copy of a model folder needs, and the
application around it depends on `models/`, never the reverse.

A Hub copy is flat: `save_pretrained` copies a model's `modeling_*.py` / `configuration_*.py` and the siblings they
import into the folder, where `syncmask_hf` is not installed. So a file in `models/` may import its siblings (one
dot), the standard library, torch, transformers and what transformers itself needs, and nothing else.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "syncmask_hf"
MODELS = PACKAGE / "models"
# transformers' own dependencies (numpy, PIL for its image processors, safetensors, huggingface_hub) are present
# wherever transformers is.
THIRD_PARTY = {"torch", "transformers", "numpy", "PIL", "safetensors", "huggingface_hub"}


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(relative level, module, imported names) of every import statement in `path`, nested ones included."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(0, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", [alias.name for alias in node.names]))
    return found


def test_models_import_only_siblings_the_standard_library_torch_and_transformers():
    files = sorted(MODELS.glob("*.py"))
    assert {"modeling_syncmask.py", "modeling_e2.py", "modeling_fashionfae.py", "processing_fashion.py"} <= {
        p.name for p in files
    }
    siblings = {p.stem for p in files}
    bad = []
    for path in files:
        for level, module, names in imports(path):
            top = module.split(".")[0]
            if level == 1:
                ok = top in siblings if module else set(names) <= siblings
            elif level == 0:
                ok = top in sys.stdlib_module_names or top in THIRD_PARTY or top == "__future__"
            else:
                ok = False  # `from ..x`: the application, absent from a Hub copy
            if not ok:
                bad.append(f"{path.name}: {'.' * level}{module} {names}")
    assert not bad, "models/ must import only siblings, stdlib, torch and transformers:\n" + "\n".join(bad)


def test_models_is_flat():
    assert not [p for p in MODELS.iterdir() if p.is_dir() and p.name != "__pycache__"]


def test_no_module_of_the_package_imports_the_package_by_name():
    bad = [
        f"{path.relative_to(PACKAGE)}: {module}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for level, module, _ in imports(path)
        if level == 0 and module.split(".")[0] == "syncmask_hf"
    ]
    assert not bad, "use relative imports inside the package:\n" + "\n".join(bad)
