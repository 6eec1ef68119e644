"""The `auto_map` a saved folder carries, so its Hub copy loads with `trust_remote_code=True` under every Auto class
the model serves (not only the one it was registered for). Hub copies are flat: this file imports nothing."""

from __future__ import annotations


def extend_auto_map(model, entries: dict[str, type]) -> None:
    """Name `entries` (Auto class name -> model class in a sibling file) in `model.config.auto_map`, keeping what is
    there. Only for classes registered with `register_for_auto_class`: others do not write their code to the folder."""
    if getattr(model, "_auto_class", None) is None:
        return
    auto_map = dict(getattr(model.config, "auto_map", None) or {})
    for auto_class, model_class in entries.items():
        auto_map.setdefault(auto_class, f"{model_class.__module__.rsplit('.', 1)[-1]}.{model_class.__name__}")
    model.config.auto_map = auto_map
