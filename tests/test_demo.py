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
from syncmask_hf.search import CatalogSearch  # noqa: E402

from .helpers import save_tiny_model  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    model_dir = save_tiny_model("syncmask", root / "model")
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
    caption, attributes, overlay, legend = client.predict(gradio_client.handle_file(photo), api_name="/describe")
    assert caption.startswith("(closest catalogue text)") and len(caption) > 30
    assert set(attributes) >= {"category", "color"}
    assert overlay is None  # a SyncMask model has no selection tokens


def test_e2_describe_draws_the_picked_patches_inside_the_region_the_model_saw(tmp_path):
    """An E2 checkpoint (the main job's model) through the app's describe endpoint: its processor resizes the short
    side and centre-crops, so on a 300 x 200 photo the patch boxes lie in the central 200 x 200 square."""
    from syncmask_hf.search import ENTITY_COLOURS, model_view_box

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
        _, _, overlay, legend = client.predict(gradio_client.handle_file(str(photo)), api_name="/describe")
    finally:
        demo.close()
    picture = Image.open(overlay).convert("RGB")
    assert picture.size == (300, 200)
    assert set(legend["value"] if isinstance(legend, dict) and "value" in legend else legend) == set(
        e2.model.config.entities
    )
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
def test_browser_search_and_upload(server, photo, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    screenshot = Path(os.environ.get("DEMO_SCREENSHOT", tmp_path / "demo.png"))
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
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(server, wait_until="networkidle")
        page.locator("#text-query textarea").fill("blue striped shirt")
        page.locator("#text-search").click()
        page.wait_for_selector("#text-results img", timeout=60_000)
        assert page.locator("#text-results img").count() >= 6
        page.screenshot(path=str(screenshot.with_name(screenshot.stem + "-text.png")), full_page=True)
        page.get_by_role("tab", name="Image → products & texts").click()
        page.locator("#image-query input[type=file]").set_input_files(photo)
        page.locator("#image-search").click()
        page.wait_for_selector("#image-results img", timeout=60_000)
        assert page.locator("#image-results img").count() >= 6
        page.screenshot(path=str(screenshot), full_page=True)  # the uploaded photo and its results
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
