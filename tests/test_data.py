"""Tests of the catalogue data layer (syncmask_hf.data) on fixtures generated here, plus integration tests on the
real catalogue data in ../shared/data (marked ``shared_data``; skipped when the folder is absent)."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import datasets  # noqa: E402
import h5py  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from syncmask_hf.data import (  # noqa: E402
    CATALOG_COLUMNS,
    CATALOG_FEATURES,
    FASHIONGEN_KEYS,
    BadItemError,
    draw_view,
    hm_gender,
    load_catalog,
    load_fashioniq,
    load_fashioniq_gallery,
    myntra_brand,
    normalize_text,
    parse_synthetic_spec,
    product_disjoint_split,
    stable_id,
    synthetic_products,
    text_id,
)


def _jpg(path, size=(20, 30), color=(200, 10, 10)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path, format="JPEG")


def _check_schema(ds):
    assert ds.features == CATALOG_FEATURES
    assert tuple(ds.column_names) == CATALOG_COLUMNS


# ------------------------------------------------------------------------------------------------------------ ids
def test_stable_id_is_63_bit_and_stable():
    assert stable_id("0108775") == stable_id("0108775")
    assert stable_id("a") != stable_id("b")
    assert all(0 <= stable_id(f"p{i}") < 2**63 for i in range(200))
    # the same value in every process / Python version (blake2b, not the salted built-in hash)
    assert stable_id("syncmask") == int.from_bytes(
        __import__("hashlib").blake2b(b"syncmask", digest_size=8).digest(), "big"
    ) & (2**63 - 1)
    assert normalize_text("  Red  Dress\n") == "red dress"
    assert text_id("Red dress") == text_id("red   DRESS ") != text_id("blue dress")


# --------------------------------------------------------------------------------------------------- FashionGen
def _write_fashiongen(path, drop=None, n=5):
    """A FashionGen HDF5 in the real schema: strings as (N, 1) latin-1 byte strings, images N x H x W x 3 uint8."""
    pids = [101, 101, 101, 202, 202][:n]
    strings = {
        "input_description": ["Caf\xe9 wool coat with two pockets."] * 3 + ["Slim jeans in black denim."] * 2,
        "input_name": ["Wool coat"] * 3 + ["Slim jeans"] * 2,
        "input_category": ["JACKETS & COATS"] * 3 + ["JEANS"] * 2,
        "input_subcategory": ["COATS"] * 3 + ["SLIM"] * 2,
        "input_brand": ["Acme"] * 3 + ["Denimco"] * 2,
        "input_season": ["FW17"] * 3 + ["SS18"] * 2,
        "input_composition": ["100% wool"] * 3 + ["98% cotton, 2% elastane"] * 2,
        "input_gender": ["WOMEN"] * 3 + ["MEN"] * 2,
        "input_department": ["Clothing"] * 5,
        "input_pose": ["id_gridfs_1", "id_gridfs_2", "id_gridfs_3", "id_gridfs_1", "id_gridfs_2"],
        "input_concat_description": ["coat concat"] * 3 + ["jeans concat"] * 2,
    }
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        if drop != "input_image":
            f.create_dataset("input_image", data=rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8))
        for key, values in strings.items():
            if key != drop:
                f.create_dataset(key, data=np.array([[v.encode("latin-1")] for v in values[:n]], dtype="S64"))
        if drop != "input_productID":
            f.create_dataset("input_productID", data=np.array([[p] for p in pids], dtype=np.int32))
        f.create_dataset("input_msrpUSD", data=np.ones((n, 1), dtype=np.float32))
        f.create_dataset("index", data=np.arange(n)[:, None])
    return path


def test_fashiongen_hdf5(tmp_path):
    path = _write_fashiongen(str(tmp_path / "fashiongen_256_256_validation.h5"))
    ds = load_catalog(f"fashiongen:{tmp_path}", split="validation", cache_dir=str(tmp_path / "cache"), chunk_size=2)
    _check_schema(ds)
    assert ds.num_rows == 5
    row = ds[0]
    assert row["text"] == "Caf\xe9 wool coat with two pockets."  # latin-1 decoded
    assert (row["product_id"], row["category"], row["subcategory"]) == ("101", "JACKETS & COATS", "COATS")
    assert (row["brand"], row["season"], row["composition"], row["gender"]) == ("Acme", "FW17", "100% wool", "women")
    with h5py.File(path) as f:  # lossless: the decoded image is the stored array
        np.testing.assert_array_equal(np.asarray(row["image"]), f["input_image"][0])
    # the poses of one product share its id and text
    assert ds["product_id"][:3] == ["101"] * 3 and len(set(ds["text"][:3])) == 1
    assert ds[3]["gender"] == "men" and len(set(ds["item_id"])) == 5
    # streaming reads the file on the fly, same rows
    stream = load_catalog(f"fashiongen:{path}", streaming=True, text_field="name+description")
    assert isinstance(stream, datasets.IterableDataset)
    rows = list(stream)
    assert [r["product_id"] for r in rows] == ds["product_id"]
    assert rows[0]["text"] == "Wool coat. Caf\xe9 wool coat with two pockets."


@pytest.mark.parametrize("key", ["input_brand", "input_productID", "input_image"])
def test_fashiongen_missing_key_names_key_and_file(tmp_path, key):
    path = _write_fashiongen(str(tmp_path / "broken.h5"), drop=key)
    with pytest.raises(BadItemError, match=rf"(?s){key}.*missing|missing.*{key}") as err:
        load_catalog(f"fashiongen:{path}")
    assert "broken.h5" in str(err.value)
    assert set(FASHIONGEN_KEYS) >= {key}


def test_fashiongen_missing_key_message_lists_the_keys_found(tmp_path):
    path = _write_fashiongen(str(tmp_path / "broken.h5"), drop="input_brand")
    with pytest.raises(BadItemError, match=r"input_brand.*missing") as err:
        load_catalog(f"fashiongen:{path}")
    assert "found []" not in str(err.value) and "input_description" in str(err.value)


def test_fashiongen_row_count_mismatch_is_a_bad_item_error(tmp_path):
    path = _write_fashiongen(str(tmp_path / "short.h5"))
    with h5py.File(path, "a") as f:
        del f["input_season"]
        f.create_dataset("input_season", data=np.array([[b"FW17"]] * 3, dtype="S64"))
    with pytest.raises(BadItemError, match=r"short.h5.*input_season.*3 rows.*input_image has 5"):
        load_catalog(f"fashiongen:{path}")


def test_fashiongen_file_without_unused_keys_loads(tmp_path):
    """``input_pose`` (and ``input_name`` for the default text field) are not read, so not required."""
    path = _write_fashiongen(str(tmp_path / "nopose.h5"), drop="input_pose")
    assert "input_pose" not in FASHIONGEN_KEYS
    ds = load_catalog(f"fashiongen:{path}", streaming=True)
    assert [r["product_id"] for r in ds] == ["101"] * 3 + ["202"] * 2
    with pytest.raises(BadItemError, match="input_name.*missing"):
        load_catalog(
            f"fashiongen:{_write_fashiongen(str(tmp_path / 'noname.h5'), drop='input_name')}",
            streaming=True,
            text_field="name+description",
        )


# ---------------------------------------------------------------------------------------------------------- H&M
HM_HEADER = (
    "article_id,product_code,prod_name,product_type_name,product_group_name,colour_group_name,"
    "index_group_name,section_name,detail_desc\n"
)


def _hm_folder(root, rows):
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "articles.csv"), "w") as f:
        f.write(HM_HEADER + "".join(r + "\n" for r in rows))
    return root


def _hm_fixture(root):
    rows = [
        '0108775015,0108775,Strap top,Vest top,Garment Upper body,Black,Ladieswear,Womens Basics,"Jersey top, narrow straps."',
        '0108775044,0108775,Strap top,Vest top,Garment Upper body,White,Ladieswear,Womens Basics,"Jersey top, narrow straps."',
        "0110065001,0110065,OP T-shirt,T-shirt,Unknown,Red,Sport,Men H&M Sport,",
    ]
    for r in rows:
        aid = r.split(",")[0]
        _jpg(os.path.join(root, "images", aid[:3], f"{aid}.jpg"))
    return _hm_folder(root, rows)


def test_hm_mapping(tmp_path):
    root = _hm_fixture(str(tmp_path / "hm"))
    ds = load_catalog(f"hm:{root}")
    _check_schema(ds)
    assert ds.num_rows == 3 and len(set(ds["product_id"])) == 2
    r0, r1, r2 = ds[0], ds[1], ds[2]
    assert r0["text"] == "Strap top. Jersey top, narrow straps." == r1["text"]  # colour variants share the text
    assert (r0["product_id"], r0["item_id"], r0["category"], r0["subcategory"]) == (
        "0108775",
        "0108775015",
        "Garment Upper body",
        "Vest top",
    )
    assert (r0["color"], r1["color"], r0["gender"], r0["brand"], r0["season"]) == ("Black", "White", "women", "", "")
    assert r2["text"] == "OP T-shirt" and r2["category"] == "" and r2["gender"] == "men"  # empty desc; "Unknown"
    assert r0["image"].size == (20, 30)
    assert [hm_gender(g) for g in ("Ladieswear", "Menswear", "Divided", "Baby/Children")] == [
        "women",
        "men",
        "women",
        "kids",
    ]
    assert hm_gender("Sport", "Kids Sports") == "kids"


def test_hm_missing_image_error_and_counted_skip(tmp_path):
    root = _hm_fixture(str(tmp_path / "hm"))
    os.remove(os.path.join(root, "images", "010", "0108775044.jpg"))
    with pytest.raises(BadItemError, match=r"0108775044.*does not exist.*skip_bad=True"):
        load_catalog(f"hm:{root}")
    ds, report = load_catalog(f"hm:{root}", skip_bad=True, return_report=True)
    assert ds.num_rows == 2 and report.counts["missing_image"] == 1 and report.rows_read == 3
    assert "0108775044" in report.summary()


def test_hm_corrupt_image_detected_with_verify(tmp_path):
    root = _hm_fixture(str(tmp_path / "hm"))
    bad = os.path.join(root, "images", "011", "0110065001.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(BadItemError, match=r"0110065001.*cannot be decoded"):
        load_catalog(f"hm:{root}", verify_images=True)
    ds, report = load_catalog(f"hm:{root}", verify_images=True, skip_bad=True, return_report=True)
    assert ds.num_rows == 2 and report.counts["corrupt_image"] == 1


def test_hm_unreadable_row(tmp_path):
    root = _hm_fixture(str(tmp_path / "hm"))
    with open(os.path.join(root, "articles.csv"), "a") as f:
        f.write("not-an-id,123,x\n")
    with pytest.raises(BadItemError, match=r"line 5.*malformed row"):
        load_catalog(f"hm:{root}")
    ds, report = load_catalog(f"hm:{root}", skip_bad=True, return_report=True)
    assert ds.num_rows == 3 and report.counts["bad_row"] == 1


def test_hm_row_with_too_few_fields_is_a_bad_row(tmp_path):
    root = _hm_fixture(str(tmp_path / "hm"))
    _jpg(os.path.join(root, "images", "012", "0120000001.jpg"))  # the image exists: only the row is broken
    with open(os.path.join(root, "articles.csv"), "a") as f:
        f.write("0120000001,0120000\n")
    with pytest.raises(BadItemError, match=r"line 5 \(article_id=0120000001\).*expected 9 fields, found 2"):
        load_catalog(f"hm:{root}")
    ds, report = load_catalog(f"hm:{root}", skip_bad=True, return_report=True)
    assert ds.num_rows == 3 and report.counts["bad_row"] == 1 and report.rows_read == 4
    assert "0120000001" not in ds["item_id"]


# ------------------------------------------------------------------------------------------------------- Myntra
MYNTRA_HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName\n"


def test_myntra_mapping_and_malformed_rows(tmp_path):
    root = str(tmp_path / "myntra")
    rows = [
        "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt",
        "39386,Women,Footwear,Shoes,Heels,Red,Summer,2012,Casual,Catwalk Women Red Heels",
        # extra commas inside the display name (a known defect of the Kaggle file): repaired
        "59263,Women,Accessories,Watches,Watches,Silver,Winter,2016,Casual,Titan Women Silver, Gold Watch, Set",
        "21379,Boys,Apparel,Bottomwear,Track Pants,Black,Fall,2011,Sports,United Colors of Benetton Black Pants",
    ]
    for r in rows:
        _jpg(os.path.join(root, "images", r.split(",")[0] + ".jpg"))
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "styles.csv"), "w") as f:
        f.write(MYNTRA_HEADER + "".join(r + "\n" for r in rows))
    ds, report = load_catalog(f"myntra:{root}", return_report=True)
    _check_schema(ds)
    assert ds.num_rows == 4 and report.counts["repaired_row"] == 1
    r0 = ds[0]
    assert (r0["brand"], r0["category"], r0["subcategory"], r0["season"], r0["color"], r0["gender"]) == (
        "Turtle Check",
        "Topwear",
        "Shirts",
        "Fall",
        "Navy Blue",
        "men",
    )
    assert r0["text"] == "Turtle Check Men Navy Blue Shirt. casual wear."
    assert ds[2]["brand"] == "Titan" and ds[2]["text"].startswith("Titan Women Silver, Gold Watch, Set.")
    assert ds[3]["brand"] == "United Colors of Benetton" and ds[3]["gender"] == "boys"
    # a row with too few fields: error naming the line, or a counted skip
    with open(os.path.join(root, "styles.csv"), "a") as f:
        f.write("11111,Men,Apparel\n")
    with pytest.raises(BadItemError, match=r"line 6.*expected 10 fields"):
        load_catalog(f"myntra:{root}")
    ds, report = load_catalog(f"myntra:{root}", skip_bad=True, return_report=True)
    assert ds.num_rows == 4 and report.counts["bad_row"] == 1


def test_myntra_brand_rule():
    assert myntra_brand("Fila Men Cush Flex Black Slippers") == "Fila"
    assert myntra_brand("Disney Kids-Unisex Diamond Red Sandals") == "Disney"
    assert myntra_brand("Arrow Woman Solid Green Dress") == "Arrow"
    assert myntra_brand("United Colors of Benetton Olive T-shirt", "Olive") == "United Colors of Benetton"
    assert myntra_brand("Proline Navy Striped Sweater", "Blue") == "Proline"


def test_myntra_missing_image_error_and_counted_skip(tmp_path):
    root = str(tmp_path / "myntra")
    rows = [
        "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt",
        "39386,Women,Footwear,Shoes,Heels,Red,Summer,2012,Casual,Catwalk Women Red Heels",
    ]
    _jpg(os.path.join(root, "images", "15970.jpg"))  # 39386.jpg is missing
    with open(os.path.join(root, "styles.csv"), "w") as f:
        f.write(MYNTRA_HEADER + "".join(r + "\n" for r in rows))
    with pytest.raises(BadItemError, match=r"line 3 \(id=39386\).*39386.jpg does not exist.*skip_bad=True"):
        load_catalog(f"myntra:{root}")
    ds, report = load_catalog(f"myntra:{root}", skip_bad=True, return_report=True)
    assert ds["item_id"] == ["15970"] and report.counts["missing_image"] == 1 and report.rows_read == 2


# ------------------------------------------------------------------------------------------ folder, hub, errors
def _folder_fixture(root, bad_line=False):
    os.makedirs(root, exist_ok=True)
    recs = [
        {"file_name": "a.jpg", "caption": "red dress", "sku": "P1", "brand": "Acme", "gender": "Women"},
        {"file_name": "b.jpg", "caption": "red dress, back", "sku": "P1", "brand": "Acme", "gender": "Women"},
        {"file_name": "c.jpg", "caption": "blue shirt", "sku": "P2"},
    ]
    for r in recs:
        _jpg(os.path.join(root, r["file_name"]))
    lines = [json.dumps(r) for r in recs]
    if bad_line:
        lines.insert(1, "{not json")
    with open(os.path.join(root, "metadata.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")
    return root


def test_folder_jsonl_with_column_mapping(tmp_path):
    root = _folder_fixture(str(tmp_path / "shop"))
    ds = load_catalog(f"folder:{root}", columns={"text": "caption", "product_id": "sku"})
    _check_schema(ds)
    assert ds["product_id"] == ["P1", "P1", "P2"] and ds["item_id"] == ["a.jpg", "b.jpg", "c.jpg"]
    assert ds[0]["brand"] == "Acme" and ds[0]["gender"] == "women" and ds[2]["brand"] == ""
    assert ds[0]["image"].mode == "RGB"
    with pytest.raises(BadItemError, match=r"no text column 'text'.*columns=\{'text'"):
        load_catalog(f"folder:{root}")
    stream = load_catalog(f"folder:{root}", columns={"text": "caption"}, streaming=True)
    assert isinstance(stream, datasets.IterableDataset) and len(list(stream)) == 3


def test_folder_unreadable_line(tmp_path):
    root = _folder_fixture(str(tmp_path / "shop"), bad_line=True)
    with pytest.raises(BadItemError, match=r"metadata.jsonl line 2.*unreadable JSON"):
        load_catalog(f"folder:{root}", columns={"text": "caption"})
    ds, report = load_catalog(f"folder:{root}", columns={"text": "caption"}, skip_bad=True, return_report=True)
    assert ds.num_rows == 3 and report.counts["bad_row"] == 1


def test_folder_csv_missing_image_error_and_counted_skip(tmp_path):
    root = str(tmp_path / "shop")
    _jpg(os.path.join(root, "a.jpg"))  # b.jpg is missing
    with open(os.path.join(root, "metadata.csv"), "w") as f:
        f.write("file_name,text,product_id\na.jpg,red dress,P1\nb.jpg,blue shirt,P2\n")
    with pytest.raises(BadItemError, match=r"metadata.csv line 3 \(b.jpg\).*does not exist.*skip_bad=True"):
        load_catalog(f"folder:{root}")
    ds, report = load_catalog(f"folder:{root}", skip_bad=True, return_report=True)
    assert ds["item_id"] == ["a.jpg"] and report.counts["missing_image"] == 1 and report.rows_read == 2


@pytest.mark.parametrize(
    ("kind", "kwargs", "name"),
    [
        ("hm", {"verify_imags": True}, "verify_imags"),
        ("myntra", {"text_field": "description"}, "text_field"),
        ("folder", {"skipbad": True}, "skipbad"),
        ("hm", {"columns": {"text": "prod_name"}}, "columns"),
        ("myntra", {"columns": {"text": "productDisplayName"}}, "columns"),
        ("fashiongen", {"columns": {"text": "input_name"}}, "columns"),
        ("fashiongen", {"chunksize": 4}, "chunksize"),
        ("synthetic", {"columns": {"text": "x"}}, "columns"),
        ("synthetic", {"num_item": 4}, "num_item"),
    ],
)
def test_load_catalog_rejects_unknown_or_unsupported_keywords(tmp_path, kind, kwargs, name):
    source = "synthetic:4" if kind == "synthetic" else f"{kind}:{tmp_path}"  # checked before any file is read
    with pytest.raises((TypeError, ValueError), match=rf"(?s){name}.*{kind}.*accept") as err:
        load_catalog(source, **kwargs)
    assert not isinstance(err.value, (FileNotFoundError, BadItemError))


def test_hub_class_label_columns_become_label_names(tmp_path):
    """A ClassLabel column maps to its label names, not its integer codes."""
    png = tmp_path / "x.png"
    Image.new("RGB", (8, 8), (0, 120, 0)).save(png)
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["dress", "shirt"]),
            "sex": datasets.ClassLabel(names=["men", "women"]),
        }
    )
    parquet = str(tmp_path / "train.parquet")
    datasets.Dataset.from_dict(
        {"image": [str(png)] * 3, "caption": ["a", "b", "c"], "label": [1, 0, -1], "sex": [1, 0, 0]},
        features=features,
    ).to_parquet(parquet)
    columns = {"text": "caption", "category": "label", "gender": "sex"}
    ds = load_catalog("hub:parquet", columns=columns, data_files=parquet, cache_dir=str(tmp_path / "c"))
    _check_schema(ds)
    assert ds["category"] == ["shirt", "dress", ""] and ds["gender"] == ["women", "men", "men"]


def test_hub_source_uses_load_dataset(tmp_path):
    """``hub:`` runs the real datasets.load_dataset; a local imagefolder stands in for a Hub id (no network)."""
    root = str(tmp_path / "hubdata")
    os.makedirs(root)
    for name in ("x.png", "y.png"):
        Image.new("RGB", (8, 8), (0, 120, 0)).save(os.path.join(root, name))
    with open(os.path.join(root, "metadata.csv"), "w") as f:
        f.write("file_name,caption,sku,colour\nx.png,green top,S1,green\ny.png,green top back,S1,green\n")
    ds = load_catalog(
        f"hub:{root}",
        columns={"text": "caption", "product_id": "sku", "color": "colour"},
        cache_dir=str(tmp_path / "c"),
    )
    _check_schema(ds)
    assert sorted(ds["text"]) == ["green top", "green top back"] and ds["product_id"] == ["S1", "S1"]
    assert ds["color"] == ["green", "green"] and ds["item_id"] == ["train-0", "train-1"]
    assert ds[0]["image"].size == (8, 8)
    with pytest.raises(BadItemError, match="no text column"):
        load_catalog(f"hub:{root}", cache_dir=str(tmp_path / "c"))
    stream = load_catalog(f"hub:{root}", columns={"text": "caption"}, streaming=True)
    rows = list(stream)
    assert isinstance(stream, datasets.IterableDataset) and stream.features == CATALOG_FEATURES
    assert [r["image"].size for r in rows] == [(8, 8), (8, 8)] and rows[0]["product_id"] == "train-0"


def test_unknown_source_lists_known():
    with pytest.raises(ValueError, match=r"(?s)unknown catalogue source 'parquet:/x'.*hm:.*myntra:.*synthetic"):
        load_catalog("parquet:/x")
    with pytest.raises(ValueError, match="missing location"):
        load_catalog("hm:")


# ---------------------------------------------------------------------------------------------------- synthetic
def test_synthetic_spec_and_determinism():
    assert parse_synthetic_spec("300?seed=4&size=48&views=2") == {
        "num_items": 300,
        "seed": 4,
        "image_size": 48,
        "max_views": 2,
    }
    with pytest.raises(ValueError, match="unknown option"):
        parse_synthetic_spec("10?colour=red")
    for spec, option in (("100?seed=abc", "seed"), ("100?size=1.5", "size"), ("100?views=", "views")):
        with pytest.raises(ValueError, match=rf"option {option!r}.*integer") as err:
            load_catalog(f"synthetic:{spec}")
        assert "invalid literal" not in str(err.value)
    a = load_catalog("synthetic:120?seed=3&size=48")
    b = load_catalog("synthetic", num_items=120, seed=3, image_size=48)
    c = load_catalog("synthetic:120?seed=4&size=48")
    _check_schema(a)
    assert a.num_rows == 120 and a[0]["image"].size == (48, 48)
    assert a["text"] == b["text"] and a.data.column("image").to_pylist() == b.data.column("image").to_pylist()
    assert a["text"] != c["text"]
    # several views of one product share one text; every attribute is filled
    pids = a["product_id"]
    assert len(set(pids)) < len(pids)
    for col in ("brand", "season", "composition", "color", "category", "subcategory", "gender"):
        assert all(a[col])
    by_product = {}
    for pid, text in zip(pids, a["text"]):
        by_product.setdefault(pid, set()).add(text)
    assert all(len(t) == 1 for t in by_product.values())
    stream = load_catalog("synthetic:30?seed=3&size=48", streaming=True)
    assert [r["text"] for r in stream] == load_catalog("synthetic:30?seed=3&size=48")["text"]


def test_synthetic_details_visible_only_in_some_views():
    """The text names every detail, but a pocket shows only in the front view and a logo only in the back view."""
    import dataclasses

    base = next(p for p in synthetic_products(400, seed=0) if p.garment == "jacket" and p.pattern == "plain")
    plain = dataclasses.replace(base, details=())
    with_pocket = dataclasses.replace(base, details=("pocket",))
    with_logo = dataclasses.replace(base, details=("logo",))
    assert "pocket" in with_pocket.text and "logo" in with_logo.text and "pocket" not in plain.text

    def px(p, view):
        return np.asarray(draw_view(p, view, 64, jitter_seed=7), dtype=np.int16)

    assert np.abs(px(with_pocket, "front") - px(plain, "front")).sum() > 0
    assert np.array_equal(px(with_pocket, "back"), px(plain, "back"))
    assert np.array_equal(px(with_pocket, "side"), px(plain, "side"))
    assert np.abs(px(with_logo, "back") - px(plain, "back")).sum() > 0
    assert np.array_equal(px(with_logo, "front"), px(plain, "front"))


def test_synthetic_colour_is_drawn():
    """What the text says is in the pixels: a nearest-colour guess from the image centre recovers the colour."""
    from syncmask_hf.data.synthetic import COLORS

    products = [p for p in synthetic_products(300, seed=1) if p.pattern == "plain" and p.category != "bottoms"][:40]
    names = sorted(COLORS)
    hits = 0
    for p in products:
        img = np.asarray(draw_view(p, "side", 64, jitter_seed=1), dtype=np.float32)
        patch = img[40:48, 28:36].reshape(-1, 3).mean(0)
        guess = min(names, key=lambda n: float(((np.array(COLORS[n]) - patch) ** 2).sum()))
        hits += guess == p.color
    assert hits >= 0.8 * len(products)


def test_synthetic_is_learnable_from_pixels():
    """Even 1-nearest-neighbour on raw 16x16 thumbnails predicts garment type and colour of unseen products far
    above chance, so the text (which names them) is grounded in the images."""
    ds = load_catalog("synthetic:500?seed=5&size=32")
    parts = product_disjoint_split(ds, test_size=0.25, val_size=0.0, seed=0)

    def thumbs(d):
        return np.stack([np.asarray(im.resize((16, 16)), dtype=np.float32).ravel() / 255 for im in d["image"]])

    x_train, x_test = thumbs(parts["train"]), thumbs(parts["test"])
    nearest = ((x_test[:, None, :] - x_train[None]) ** 2).sum(-1).argmin(1)
    for col in ("subcategory", "color"):
        y_train, y_test = np.array(parts["train"][col]), np.array(parts["test"][col])
        majority = max((y_test == v).mean() for v in set(y_test))
        assert (y_train[nearest] == y_test).mean() > 2 * majority, col


# ------------------------------------------------------------------------------------------------------- splits
def test_product_disjoint_split():
    ds = load_catalog("synthetic:200?seed=2&size=32")
    parts = product_disjoint_split(ds, test_size=0.2, val_size=0.1, seed=0)
    assert set(parts) == {"train", "validation", "test"}
    products = {k: set(v["product_id"]) for k, v in parts.items()}
    assert not products["train"] & products["test"] and not products["train"] & products["validation"]
    assert not products["validation"] & products["test"]
    assert sum(v.num_rows for v in parts.values()) == 200
    n = len(set(ds["product_id"]))
    assert len(products["test"]) == round(0.2 * n) and len(products["validation"]) == round(0.1 * n)
    again = product_disjoint_split(ds, test_size=0.2, val_size=0.1, seed=0)
    assert again["test"]["item_id"] == parts["test"]["item_id"]
    with pytest.raises(ValueError, match="leave none"):
        product_disjoint_split(ds, test_size=0.6, val_size=0.5)

    stream = load_catalog("synthetic:200?seed=2&size=32", streaming=True)
    sparts = product_disjoint_split(stream, test_size=0.2, val_size=0.1, seed=0)
    sproducts = {k: {r["product_id"] for r in v} for k, v in sparts.items()}
    assert not sproducts["train"] & sproducts["test"] and not sproducts["validation"] & sproducts["test"]
    assert sum(len(v) for v in sproducts.values()) == n


# ---------------------------------------------------------------------------------------------------- FashionIQ
def _fiq_fixture(root):
    os.makedirs(os.path.join(root, "captions"))
    os.makedirs(os.path.join(root, "image_splits"))
    val = [
        {"candidate": "B1", "target": "B2", "captions": ["is red.", "has sleeves"]},
        {"candidate": "B3", "target": "B4", "captions": ["is shorter", "is blue"]},
    ]
    test = [{"candidate": "B1", "captions": ["is longer", "is darker"]}]
    for name, data in (("cap.dress.val.json", val), ("cap.dress.test.json", test)):
        with open(os.path.join(root, "captions", name), "w") as f:
            json.dump(data, f)
    for s in ("val", "test"):
        with open(os.path.join(root, "image_splits", f"split.dress.{s}.json"), "w") as f:
            json.dump(["B1", "B2", "B3", "B4"], f)
    imgs = os.path.join(root, "images")
    for i in ("B1", "B2", "B3"):  # B4 is missing
        _jpg(os.path.join(imgs, f"{i}.jpg"))
    return imgs


def test_fashioniq_triplets_and_missing_images(tmp_path):
    root = str(tmp_path / "fiq")
    imgs = _fiq_fixture(root)
    ds = load_fashioniq(root, "dress", "val")
    assert ds.num_rows == 2 and ds[0]["caption"] == "is red and has sleeves" and ds[0]["target"] == "B2"
    test = load_fashioniq(root, "dress", "test")
    assert test[0]["target"] == "" and test[0]["captions"] == ["is longer", "is darker"]
    with pytest.raises(BadItemError, match=r"(?s)1 of 2 triplets.*B4.*skip_bad=True"):
        load_fashioniq(root, "dress", "val", image_dir=imgs)
    ds, report = load_fashioniq(root, "dress", "val", image_dir=imgs, skip_bad=True, return_report=True)
    assert ds.num_rows == 1 and report.counts["missing_image"] == 1 and ds[0]["target_image"].size == (20, 30)
    test = load_fashioniq(root, "dress", "test", image_dir=imgs)
    assert test[0]["target_image"] is None and test[0]["candidate_image"] is not None
    gallery = load_fashioniq_gallery(root, "dress", "val", image_dir=imgs, skip_bad=True)
    assert gallery["image_id"] == ["B1", "B2", "B3"]
    with pytest.raises(ValueError, match="category must be one of"):
        load_fashioniq(root, "shoes", "val")


@pytest.mark.parametrize(
    "bad",
    [
        {"candidate": "B5", "target": "B6", "captions": []},
        {"candidate": "B5", "target": "B6", "captions": ["only one"]},
        {"candidate": "B5", "target": "B6", "captions": ["a", "b", "c"]},
        {"candidate": "B5", "target": "B6", "captions": ["is red", 3]},
        {"candidate": "B5", "target": "B6", "captions": [None, "is red"]},
        {"candidate": "B5", "captions": ["is red", "is long"]},  # a val triplet without target
        {"candidate": "B5", "target": "", "captions": ["is red", "is long"]},
    ],
)
def test_fashioniq_malformed_triplet(tmp_path, bad):
    root = str(tmp_path / "fiq")
    _fiq_fixture(root)
    path = os.path.join(root, "captions", "cap.dress.val.json")
    with open(path) as f:
        triplets = json.load(f)
    with open(path, "w") as f:
        json.dump(triplets + [bad], f)
    with pytest.raises(BadItemError, match=r"cap.dress.val.json triplet 2.*skip_bad=True"):
        load_fashioniq(root, "dress", "val")
    ds, report = load_fashioniq(root, "dress", "val", skip_bad=True, return_report=True)
    assert ds.num_rows == 2 and report.counts["bad_row"] == 1
    # the test split has no targets: a test triplet without one is fine
    with open(os.path.join(root, "captions", "cap.dress.test.json"), "w") as f:
        json.dump([{"candidate": "B1", "captions": ["is longer", "is darker"]}], f)
    assert load_fashioniq(root, "dress", "test")["target"] == [""]


# ----------------------------------------------------------------------------------- real data (../shared/data)
@pytest.mark.shared_data
def test_shared_hm_counts(shared_data):
    ds = load_catalog(f"hm:{shared_data / 'hm'}")
    _check_schema(ds)
    assert ds.num_rows == 10_044
    assert len(set(ds["product_id"])) == 5_708
    assert len(set(ds["item_id"])) == 10_044
    row = ds[0]  # decode one image only
    assert row["image"].mode == "RGB" and row["text"] and row["category"] and row["gender"]


@pytest.mark.shared_data
def test_shared_myntra_counts(shared_data):
    ds, report = load_catalog(f"myntra:{shared_data / 'myntra'}", return_report=True)
    _check_schema(ds)
    assert ds.num_rows == 8_113 and report.num_skipped == 0
    assert sum(1 for b in ds["brand"] if b) == 8_113
    assert ds[0]["image"].size == (224, 224)


@pytest.mark.shared_data
@pytest.mark.parametrize("category", ["dress", "shirt", "toptee"])
@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_shared_fashioniq_every_caption_file(shared_data, category, split):
    root = shared_data / "fashioniq"
    ds = load_fashioniq(str(root), category, split)
    with open(root / "captions" / f"cap.{category}.{split}.json") as f:
        assert ds.num_rows == len(json.load(f)) > 0
    assert all(len(c) == 2 for c in ds["captions"])
    assert all(t == "" for t in ds["target"]) if split == "test" else all(ds["target"])
    assert load_fashioniq_gallery(str(root), category, split).num_rows > 0
