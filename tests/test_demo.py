"""The Gradio demo, driven as users and clients drive it: gradio_client on every endpoint, bad uploads, concurrent
queries, and a real headless Chromium through Playwright."""

from __future__ import annotations

import os
import shutil
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
os.environ["SYNCMASK_DEMO_NO_AUTOLOAD"] = "1"

from demo.app import build_demo, launch  # noqa: E402
from syncmask_hf.search import ATTRIBUTES, CatalogSearch  # noqa: E402

from .helpers import save_tiny_model  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _save_trained_combiner(model_dir: Path, seed: int = 0) -> None:
    """What finetune_tgir.py leaves in a folder: a combiner (here with random, non-zero weights) beside the model."""
    import torch
    from transformers import AutoModel

    from syncmask_hf.tgir import ComposedQueryModel

    torch.manual_seed(seed)
    wrapper = ComposedQueryModel(AutoModel.from_pretrained(model_dir))
    torch.nn.init.normal_(wrapper.combiner[2].weight, std=0.5)
    wrapper.save_combiner(model_dir)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    model_dir = save_tiny_model("syncmask", root / "model")
    _save_trained_combiner(model_dir)  # the text-guided tab must use it
    return CatalogSearch(model_dir, "synthetic:48", cache_dir=root / "cache")


@pytest.fixture(scope="module")
def server(engine):
    from types import SimpleNamespace

    demo = build_demo(engine)
    port = _free_port()
    # the app's own launch: what it serves (thumbnails only) is part of what is tested
    args = SimpleNamespace(host="127.0.0.1", port=port, max_file_size="25mb")
    launch(demo, engine, args, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def client(server):
    return gradio_client.Client(server, verbose=False)


@pytest.fixture(scope="module")
def photo(tmp_path_factory, engine) -> str:
    path = tmp_path_factory.mktemp("photos") / "query.png"
    engine.image(0).save(path)
    return str(path)


def test_index_is_cached_on_disk(engine, tmp_path):
    cached = list(engine.cache_dir.glob("*.npz"))
    assert len(cached) == 1
    again = CatalogSearch(engine.model_path, "synthetic:48", cache_dir=engine.cache_dir)
    assert (again.image_embeds == engine.image_embeds).all()


def test_index_is_rebuilt_when_the_catalogue_or_the_model_changes(engine, tmp_path):
    import json

    catalog = tmp_path / "catalog"
    catalog.mkdir()
    rows = []
    for i, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]):
        Image.new("RGB", (40, 40), colour).save(catalog / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": f"plain dress number {i}", "product_id": f"p{i}"})

    def write(rows):
        (catalog / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(rows)
    model = tmp_path / "model"
    shutil.copytree(engine.model_path, model)
    cache = tmp_path / "cache"
    first = CatalogSearch(model, f"folder:{catalog}", cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1
    CatalogSearch(model, f"folder:{catalog}", cache_dir=cache)  # unchanged: reused
    assert len(list(cache.glob("*.npz"))) == 1
    write([{**rows[0], "text": "striped red dress"}, *rows[1:]])  # the catalogue is edited
    edited = CatalogSearch(model, f"folder:{catalog}", cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2 and edited.texts[0] == "striped red dress"
    assert not (edited.text_embeds == first.text_embeds).all()
    weights = next(model.glob("*.safetensors"))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # retrained in place
    CatalogSearch(model, f"folder:{catalog}", cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 3


def test_text_search_endpoint(client):
    results = client.predict("red dress", api_name="/text_search")
    assert len(results) == 12
    assert all(Path(item["image"]).is_file() and item["caption"] for item in results)


def test_image_search_endpoint_returns_products_and_texts(client, photo, engine):
    products, texts = client.predict(gradio_client.handle_file(photo), api_name="/image_search")
    assert len(products) == 12 and texts.count("\n") >= 1
    # The query is catalogue item 0 itself: it must come first.
    assert products[0]["caption"].split(" · ")[1] == engine.product_ids[0]


def test_modified_search_endpoint(client, photo):
    results = client.predict(gradio_client.handle_file(photo), "in red", api_name="/modified_search")
    assert len(results) == 12


def test_describe_endpoint(client, photo, engine):
    caption, *labels, overlay, key = client.predict(gradio_client.handle_file(photo), api_name="/describe")
    assert caption.startswith("(closest catalogue text)") and len(caption) > 30
    # one gr.Label per attribute the catalogue has values for, each with its top values and probabilities
    names = [a for a, values in engine.filter_values(ATTRIBUTES).items() if len(values) > 1]
    assert len(labels) == len(names) and {"category", "color"} <= set(names)
    for name, label in zip(names, labels):
        assert label["label"] in engine.filter_values((name,))[name]
        confidences = [c["confidence"] for c in label["confidences"]]
        assert 1 <= len(confidences) <= 3 and confidences == sorted(confidences, reverse=True)
        assert 0 < sum(confidences) <= 1 + 1e-6
    assert overlay is None and key == ""  # a SyncMask model has no selection tokens


def _matches(engine, row: int, filters: dict) -> bool:
    return all(engine.catalog[row][c] in v for c, v in filters.items())


def test_filtered_query_returns_k_matching_products(client, engine):
    """Pre-filtered: every hit matches, and there are k (12) of them whenever k products match; when fewer match,
    all of them come back."""

    def products(results):
        return [item["caption"].split(" · ")[1] for item in results]

    def matching(filters):
        return {engine.product_ids[r] for r in range(len(engine.catalog)) if _matches(engine, r, filters)}

    broad = {"gender": ["women"]}  # 14 of 24 products
    assert len(matching(broad)) > 12
    found = products(client.predict("red dress", **broad, api_name="/text_search"))
    assert len(found) == 12 and set(found) <= matching(broad)

    narrow = {"gender": ["women"], "category": ["dresses", "tops"]}  # 8 products
    assert 2 <= len(matching(narrow)) < 12
    found = products(client.predict("red dress", **narrow, api_name="/text_search"))
    assert sorted(found) == sorted(matching(narrow))
    # the same filters narrow the image and the text-guided searches
    photo = gradio_client.handle_file(engine.image_path(0))
    shown, _ = client.predict(photo, **narrow, api_name="/image_search")
    assert sorted(products(shown)) == sorted(matching(narrow))
    changed = client.predict(photo, "in red", **narrow, api_name="/modified_search")
    assert sorted(products(changed)) == sorted(matching(narrow))


def test_results_are_grouped_by_product_unless_unticked(client):
    grouped = [item["caption"].split(" · ")[1] for item in client.predict("striped dress", api_name="/text_search")]
    assert len(grouped) == 12 and len(set(grouped)) == 12
    every_photo = client.predict("striped dress", one_per_product=False, api_name="/text_search")
    products = [item["caption"].split(" · ")[1] for item in every_photo]
    assert len(products) == 12 and len(set(products)) < 12  # two photos per product: some product shows twice


def test_text_guided_search_uses_the_fine_tuned_combiner(engine, photo):
    """The folder has finetune_tgir.py's combiner: the query is its composition, not the zero-shot sum."""
    import torch
    import torch.nn.functional as F

    from syncmask_hf.tgir import ComposedQueryModel

    assert engine.tgir_head == "combiner"
    query = engine.modified_query(photo, "in red")
    wrapper = ComposedQueryModel.from_folder(engine.model, engine.model_path).eval()
    pixels = engine.processor(images=[engine.image(0)], return_tensors="pt")["pixel_values"]
    tokens = engine.processor(text=["in red"], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = wrapper.get_query_features(pixels, tokens["input_ids"], tokens["attention_mask"])[0]
    zero_shot = F.normalize(engine.encode_images([engine.image(0)])[0] + engine.encode_texts(["in red"])[0], dim=-1)
    assert torch.allclose(query, expected, atol=1e-5)
    assert float(query @ zero_shot) < 0.999  # the trained combiner moved the query


def test_syncmask_fusion_head_folder_is_used_by_the_text_guided_search(tmp_path):
    """A folder finetune_tgir.py saved with SyncMask's fusion head is served with that head."""
    import torch

    from syncmask_hf import SyncMaskConfig
    from syncmask_hf.specs import task_head

    base = save_tiny_model("syncmask", tmp_path / "base")
    head_class = task_head(SyncMaskConfig.from_pretrained(base), "tgir")
    head = head_class.from_pretrained(base)
    shutil.copytree(base, tmp_path / "fused")  # the processor files
    head.save_pretrained(tmp_path / "fused")  # config (architectures) and weights, as finetune_tgir.py saves them
    search = CatalogSearch(tmp_path / "fused", "synthetic:12", cache_dir=tmp_path / "cache")
    assert search.tgir_head == "fusion"
    pixels = search.processor(images=[search.image(0)], return_tensors="pt")["pixel_values"]
    tokens = search.processor(text=["in red"], return_tensors="pt", padding=True)
    head.eval()
    with torch.no_grad():
        expected = head.get_query_features(pixels, tokens["input_ids"], tokens["attention_mask"])[0]
    assert torch.allclose(search.modified_query(search.image(0), "in red"), expected, atol=1e-5)
    assert len(search.search_modified(search.image(0), "in red", k=3)) == 3


def test_a_bad_upload_is_cleared_on_upload_with_its_reason(tmp_path, photo, monkeypatch):
    """Checked when dropped, not when Search is pressed: the box is cleared and the reason shown."""
    from demo.app import check_upload

    warnings = []
    monkeypatch.setattr(gr, "Warning", lambda message: warnings.append(message))
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture")
    assert check_upload({"path": str(bad), "orig_name": "notes.png"}) is None
    assert len(warnings) == 1 and "not an image" in warnings[0] and "notes.png" in warnings[0]
    kept = check_upload({"path": photo, "orig_name": "query.png"})
    assert not isinstance(kept, dict) or "path" not in kept  # gr.skip(): the upload stays as it is
    assert len(warnings) == 1


def test_spaces_persistent_storage_holds_the_index(monkeypatch, tmp_path):
    from demo import app

    monkeypatch.delenv("INDEX_CACHE", raising=False)
    monkeypatch.setattr(app.os.path, "isdir", lambda p: p == "/data" or os.path.isdir(p))
    monkeypatch.setattr(app.os, "access", lambda p, mode: p == "/data")
    assert app.default_cache_dir() == "/data/syncmask_hf"
    monkeypatch.setenv("INDEX_CACHE", str(tmp_path))
    assert app.default_cache_dir() == str(tmp_path)


def test_e2_describe_draws_the_picked_patches_inside_the_region_the_model_saw(tmp_path):
    """An E2 checkpoint (the main job's model) through the app's describe endpoint: its processor resizes the short
    side and centre-crops, so on a 300 x 200 photo the patch boxes lie in the central 200 x 200 square."""
    from syncmask_hf.search import ENTITY_COLOURS, colour_key, model_view_box

    e2 = CatalogSearch(save_tiny_model("e2", tmp_path / "e2"), "synthetic:24", cache_dir=tmp_path / "cache")
    assert model_view_box((300, 200), e2.processor.image_processor) == (50.0, 0.0, 200.0, 200.0)
    photo = tmp_path / "wide.png"
    Image.new("RGB", (300, 200), (128, 128, 128)).save(photo)
    demo = build_demo(e2)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                allowed_paths=[str(e2.cache_dir)])  # fmt: skip
    try:
        client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        *_, overlay, key = client.predict(gradio_client.handle_file(str(photo)), api_name="/describe")
    finally:
        demo.close()
    picture = Image.open(overlay).convert("RGB")
    assert picture.size == (300, 200)
    # the colour key names every entity, each beside a swatch in the colour its boxes are drawn in
    for entity, colour in colour_key(e2.model.config).items():
        assert f"<b>{entity}</b>" in key and colour in key.split(f"<b>{entity}</b>")[0].rsplit("<span", 1)[1]
    assert len(set(colour_key(e2.model.config).values())) == len(e2.model.config.entities)
    colours = {tuple(int(c[i : i + 2], 16) for i in (1, 3, 5)) for c in ENTITY_COLOURS}

    def coloured_columns(x0, x1):
        return sum(1 for x in range(x0, x1) for y in range(200) if _near(picture.getpixel((x, y)), colours))

    assert coloured_columns(50, 250) > 0 and coloured_columns(0, 48) == 0 and coloured_columns(252, 300) == 0


def _near(pixel, colours, tol=40):
    return any(sum(abs(a - b) for a, b in zip(pixel, c)) < tol for c in colours)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("notes.txt", b"this is not a picture", "not an image"),
        ("empty.png", b"", "empty"),
    ],
)
def test_bad_uploads_get_a_message(client, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(Exception, match=message):
        client.predict(gradio_client.handle_file(str(path)), api_name="/image_search")


@pytest.mark.parametrize("api,extra", [("/modified_search", ("in red",)), ("/describe", ())])
def test_every_upload_endpoint_gives_bad_files_a_message(client, tmp_path, api, extra):
    for name, content, message in (
        ("notes.txt", b"this is not a picture", "not an image"),
        ("empty.png", b"", "empty"),
    ):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(Exception, match=message):
            client.predict(gradio_client.handle_file(str(path)), *extra, api_name=api)


def test_missing_upload_and_empty_change_get_a_message(client, photo):
    with pytest.raises(Exception, match="No image given"):
        client.predict(None, api_name="/image_search")
    with pytest.raises(Exception, match="Describe the change"):
        client.predict(gradio_client.handle_file(photo), "  ", api_name="/modified_search")


def test_uploads_over_the_size_limit_are_refused(engine, tmp_path):
    """The app's launch refuses a file over --max_file_size before storing it (a client gets an error, not a hang)."""
    from demo.app import parse_args

    assert parse_args([]).max_file_size == "25mb"
    demo = build_demo(engine)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, max_file_size="1kb")
    try:
        big = tmp_path / "big.png"
        Image.effect_noise((64, 64), 64).convert("RGB").save(big)  # noise: ~12 KB, over the 1 KB limit
        small_client = gradio_client.Client(f"http://127.0.0.1:{port}/", verbose=False)
        with pytest.raises(Exception, match="(?i)size|large|limit"):
            small_client.predict(gradio_client.handle_file(str(big)), api_name="/image_search")
    finally:
        demo.close()


def test_huge_upload_gets_a_message(client, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("L", (9000, 6000), 200).save(path)  # 54 MP, compresses to a few KB
    with pytest.raises(Exception, match="resize"):
        client.predict(gradio_client.handle_file(str(path)), api_name="/image_search")


def test_empty_query_gets_a_message(client):
    with pytest.raises(Exception, match="Type a description"):
        client.predict("   ", api_name="/text_search")


def test_32_concurrent_queries_are_all_answered(client):
    queries = [
        f"{c} {g}"
        for c in ("red", "blue", "black", "white")
        for g in ("dress", "shirt", "skirt", "jacket", "trousers", "top", "coat", "t-shirt")
    ]
    assert len(queries) == 32
    jobs = [client.submit(q, api_name="/text_search") for q in queries]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda job: job.result(timeout=300), jobs))
    assert len(results) == 32 and all(len(r) == 12 for r in results)


@pytest.mark.browser
@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
def test_browser_search_filters_grouping_and_text_guided_head(server, engine, photo, tmp_path):
    """In Chromium: a text search narrowed to women's products (every card a women's product, one per product), the
    image tab, a bad file cleared as soon as it is dropped, and the text-guided tab (served by the fine-tuned
    combiner, named in the header). Screenshots: DEMO_SCREENSHOT (default a temporary file) and its siblings."""
    playwright = pytest.importorskip("playwright.sync_api")
    screenshot = Path(os.environ.get("DEMO_SCREENSHOT", tmp_path / "demo.png"))
    women = {engine.product_ids[r] for r in range(len(engine.catalog)) if engine.catalog[r]["gender"] == "women"}
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"this is not a picture")

    def products(selector):
        captions = page.locator(f"{selector} img").evaluate_all("els => els.map(e => e.alt || '')")
        return [c.split(" · ")[1] for c in captions if " · " in c]

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(server, wait_until="networkidle")
        assert "fine-tuned combiner" in page.locator("body").inner_text()
        page.locator("#filter-gender input").click()
        page.get_by_role("option", name="women", exact=True).click()
        page.keyboard.press("Escape")
        page.locator("#text-query textarea").fill("blue striped shirt")
        page.locator("#text-search").click()
        page.wait_for_selector("#text-results img", timeout=60_000)
        page.wait_for_timeout(500)
        shown = products("#text-results")
        assert len(shown) == 12 and set(shown) <= women and len(set(shown)) == 12  # filtered, one per product
        page.screenshot(path=str(screenshot.with_name(screenshot.stem + "-text.png")), full_page=True)
        page.locator("#group-by-product input").uncheck()  # every photo: a product's two photos both show
        page.locator("#text-search").click()
        page.wait_for_function(
            "() => { const a = [...document.querySelectorAll('#text-results img')].map(e => e.alt.split(' · ')[1]);"
            " return a.length === 12 && new Set(a).size < 12; }",
            timeout=60_000,
        )
        assert set(products("#text-results")) <= women
        page.locator("#group-by-product input").check()

        page.get_by_role("tab", name="Image → products & texts").click()
        page.locator("#image-query input[type=file]").set_input_files(str(bad))
        page.wait_for_timeout(1500)
        assert "not an image" in page.locator("body").inner_text()  # the warning, before any Search
        assert page.locator("#image-query img").count() == 0  # cleared: no broken thumbnail
        page.locator("#image-query input[type=file]").set_input_files(photo)
        page.locator("#image-search").click()
        page.wait_for_selector("#image-results img", timeout=60_000)
        page.wait_for_timeout(500)
        assert set(products("#image-results")) <= women

        page.get_by_role("tab", name="This, but …").click()
        page.locator("#modified-reference input[type=file]").set_input_files(photo)
        page.locator("#modified-text textarea").fill("in red")
        page.locator("#modified-search").click()
        page.wait_for_selector("#modified-results img", timeout=60_000)
        page.wait_for_timeout(500)
        changed = products("#modified-results")
        assert len(changed) >= 6 and set(changed) <= women and len(set(changed)) == len(changed)
        page.screenshot(path=str(screenshot), full_page=True)  # the text-guided tab with its filtered results
        browser.close()
    assert screenshot.stat().st_size > 10_000 and screenshot.with_name(screenshot.stem + "-text.png").is_file()


def test_caption_with_a_trained_captioner_folder(engine, tmp_path):
    """With --captioner the demo decodes a caption from the image embedding (not the closest-text fallback)."""
    from syncmask_hf import FashionDeCapConfig, FashionDeCapForCaptioning
    from syncmask_hf.captioner import encode_texts, train_decap

    texts = list(engine.catalog["text"])[:24]
    tokens = engine.processor.tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
    embeds = encode_texts(engine.model, tokens["input_ids"], tokens["attention_mask"])
    tok = engine.processor.tokenizer
    config = FashionDeCapConfig(
        text_config={"n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 80},
        prefix_dim=embeds.shape[1],
        vocab_size=len(tok),
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id,
    )
    captioner = FashionDeCapForCaptioning(config)
    train_decap(captioner, embeds, tokens["input_ids"], tokens["attention_mask"], steps=2, progress=False)
    captioner.save_pretrained(tmp_path / "captioner")

    search = CatalogSearch(
        engine.model_path, "synthetic:48", cache_dir=engine.cache_dir, captioner=tmp_path / "captioner"
    )
    caption = search.caption(engine.image(0), max_new_tokens=8, num_beams=2)
    assert isinstance(caption, str) and not caption.startswith("(closest catalogue text)")
    assert search.captioner.config.memory_size == len(texts)
