"""Presets are package data: named configs that resolve from an installed wheel, outside the repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from PIL import Image

import syncmask_hf
from syncmask_hf import list_presets, preset_path
from syncmask_hf.specs import SPECS, get_spec, models_with_head, task_head
from syncmask_hf.training import build_processor, collator_mode, resolve_config_path

REPO = Path(__file__).resolve().parents[1]


def test_every_model_has_its_presets_and_they_load():
    assert set(list_presets()) >= {"syncmask-tiny", "syncmask-small", "syncmask-base", "e2-tiny", "fashionfae-tiny"}
    for model_name, spec in SPECS.items():
        names = list_presets(model_name)
        assert {spec.tiny_preset, spec.default_preset, spec.base_preset} <= set(names)
        assert all(n.startswith(model_name) for n in names)
        for name in names:
            config = spec.config_class.from_pretrained(preset_path(name))
            assert config.model_type == model_name


def test_names_resolve_and_wrong_names_say_what_exists(tmp_path):
    assert resolve_config_path("syncmask") == preset_path("syncmask-tiny") / "config.json"
    assert resolve_config_path("e2", "e2-tiny") == preset_path("e2-tiny") / "config.json"
    with pytest.raises(ValueError, match=r"not a syncmask config.*syncmask-small"):
        resolve_config_path("syncmask", "e2-tiny")
    with pytest.raises(FileNotFoundError, match=r"fashionfae-tiny"):
        resolve_config_path("fashionfae", "fashionfae-huge")
    with pytest.raises(KeyError, match="no preset named"):
        preset_path("../models")  # names only, never a path out of the presets folder
    own = tmp_path / "mine"
    own.mkdir()
    (own / "config.json").write_text(preset_path("e2-tiny").joinpath("config.json").read_text())
    assert resolve_config_path("e2", str(own)) == own / "config.json"  # a folder still wins over a name


@pytest.mark.timeout(600)
def test_presets_resolve_from_an_installed_wheel_outside_the_repo(tmp_path):
    """`--config syncmask-tiny` must work where the package is installed from a wheel: build one, unpack it as an
    install would, and resolve and load the preset from a directory with no repository around it."""
    # Built from a copy of the project's files, so no build/ left over in the checkout can leak into the wheel.
    source = tmp_path / "source"
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).is_file():
            shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(source)],
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("syncmask_hf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"syncmask_hf/presets/{n}/config.json" for n in list_presets()} <= names
    assert "syncmask_hf/models/modeling_syncmask.py" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = textwrap.dedent(
        """
        import sys
        import syncmask_hf
        from syncmask_hf.training import resolve_config_path
        assert syncmask_hf.__file__.startswith(sys.argv[1]), syncmask_hf.__file__
        path = resolve_config_path("syncmask", "syncmask-tiny")
        config = syncmask_hf.SyncMaskConfig.from_json_file(str(path))
        print("PRESET-OK", len(syncmask_hf.list_presets()), config.num_text_layers, path.parent.name)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run(
        [sys.executable, "-c", script, str(site)], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"PRESET-OK {len(list_presets())}" in run.stdout and "syncmask-tiny" in run.stdout


def test_one_spec_drives_the_processor_and_the_collator():
    """What differs between models comes from their spec: the collator mode is the model's name, E2's processor
    returns entity tensors, FashionFAE's reads attribute-templated text, SyncMask's plain text."""
    for name, spec in SPECS.items():
        config = spec.config_class.from_pretrained(preset_path(spec.tiny_preset))
        assert get_spec(config) is spec and collator_mode(config) == name
        processor = build_processor(name, config)
        pixels = processor(images=[Image.new("RGB", (80, 100))], return_tensors="pt")["pixel_values"]
        assert pixels.shape[-2:] == (config.vision_config.image_size,) * 2
        assert processor.return_entities == spec.entity_inputs
        assert processor.text_format == ("attributes" if name == "fashionfae" else "plain")
        assert syncmask_hf.FashionCollator(processor, mode=name).mode == name
    assert syncmask_hf.FashionCollator(processor, mode="fae").mode == "fashionfae"  # the earlier names still work
    assert syncmask_hf.FashionCollator(processor, mode="pairs").mode == "syncmask"
    with pytest.raises(ValueError, match="unknown model 'clip'"):
        get_spec("clip")
    # The fine-tuning scripts find a model's own heads through its spec; other models get the generic ones.
    syncmask = SPECS["syncmask"].config_class.from_pretrained(preset_path("syncmask-tiny"))
    assert task_head(syncmask, "tgir") is syncmask_hf.SyncMaskForTextGuidedImageRetrieval
    assert task_head(syncmask, "classification") is syncmask_hf.SyncMaskForProductClassification
    assert task_head(config, "retrieval") is None and models_with_head("retrieval") == ["syncmask"]


def test_every_spec_is_registered_with_the_auto_classes():
    import transformers

    for name, spec in SPECS.items():
        assert transformers.AutoConfig.for_model(name).__class__ is spec.config_class
        for auto, model_class in spec.auto_classes.items():
            assert getattr(transformers, auto)._model_mapping[spec.config_class] is model_class


def test_every_config_has_one_style_and_one_validation_entry_point(tmp_path):
    """The four configs are transformers 5 dataclass-style `@strict` configs (as configuration_clip.py): fields as
    annotations, no `__init__` of their own, and their checks in one `validate_fields` that `config.validate()` runs at
    construction and that `save_pretrained` runs before writing."""
    import dataclasses
    import inspect

    from huggingface_hub.errors import StrictDataclassClassValidationError

    from syncmask_hf import FashionDeCapConfig

    bad_values = {"syncmask": ("mlm_ratio", 1.5), "e2": ("gumbel_tau", 0.0), "fashionfae": ("mlm_probability", -0.1)}
    configs = [
        (name, spec.config_class.from_pretrained(preset_path(spec.tiny_preset))) for name, spec in SPECS.items()
    ]
    configs.append(("fashion_decap", FashionDeCapConfig()))
    for name, config in configs:
        cls = type(config)
        assert "def __init__" not in inspect.getsource(cls), f"{cls.__name__} defines __init__"
        assert {"text_config"} <= {f.name for f in dataclasses.fields(cls)}, cls.__name__
        assert [v.__name__ for v in cls.__class_validators__].count("validate_fields") == 1, cls.__name__
        config.validate()  # a good config passes
        if name in bad_values:
            field, value = bad_values[name]
            setattr(config, field, value)
            with pytest.raises(StrictDataclassClassValidationError, match=field):
                config.validate()
            with pytest.raises(StrictDataclassClassValidationError, match=field):
                config.save_pretrained(tmp_path / name)  # nothing bad reaches a saved folder
            assert not (tmp_path / name / "config.json").exists()
    with pytest.raises(StrictDataclassClassValidationError, match="memory_temperature"):
        FashionDeCapConfig(memory_temperature=0.0)
