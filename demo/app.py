"""Fashion search demo: text -> products, image -> products and texts, "this but in red", captions, attributes.

    python demo/app.py --model outputs/pretrain/final --catalog synthetic:2400
    python demo/app.py --model your-name/syncmask-fashion --catalog hm:/data/hm --captioner your-name/fashion-decap

On a Space the same settings come from the environment: MODEL_ID, CATALOG, CAPTIONER_ID. The gallery is embedded
once and cached on disk (see `syncmask_hf.search.CatalogSearch`, in /data when the Space has persistent storage);
product searches go through a `CatalogIndex` (LanceDB): narrowed by gender, category, colour and brand in every tab,
one result per product unless unticked. "This, but ..." uses the model folder's fine-tuned text-guided head
(`finetune_tgir.py`'s combiner, or SyncMask's fusion head) when it has one.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import gradio as gr

from syncmask_hf.search import ATTRIBUTES, BadImageError, CatalogSearch, open_image

DEFAULT_MODEL = os.environ.get("MODEL_ID", "outputs/pretrain/final")
DEFAULT_CATALOG = os.environ.get("CATALOG", "synthetic:2400")
DEFAULT_CAPTIONER = os.environ.get("CAPTIONER_ID") or None
CONCURRENCY = int(os.environ.get("DEMO_CONCURRENCY", "2"))  # requests decoding and embedding at once, all endpoints
#: The catalogue columns every search can be narrowed by (those the catalogue fills).
FILTERS = ("gender", "category", "color", "brand")


def default_cache_dir() -> str | None:
    """INDEX_CACHE, else on a Space with persistent storage `/data/syncmask_hf` (the index survives restarts),
    else None (`~/.cache/syncmask_hf/search`)."""
    if os.environ.get("INDEX_CACHE"):
        return os.environ["INDEX_CACHE"]
    if os.path.isdir("/data") and os.access("/data", os.W_OK):
        return "/data/syncmask_hf"
    return None


class UploadImage(gr.Image):
    """gr.Image that checks the upload before Gradio decodes it, so a file that is not an image, an empty file or a
    decompression bomb gets a readable message instead of Gradio's generic processing error."""

    is_template = True  # Gradio's template convention: render with the parent's (gr.Image's) frontend

    def preprocess(self, payload):
        path = getattr(payload, "path", None)
        if path:
            try:
                open_image(path, getattr(payload, "orig_name", None) or "the upload")
            except BadImageError as err:
                raise gr.Error(str(err)) from None
        return super().preprocess(payload)


def check_upload(payload):
    """Runs as soon as a file is dropped (before Search): an unreadable upload is cleared, with the reason as a
    warning, instead of sitting in the box as a broken thumbnail."""
    path = payload.get("path") if isinstance(payload, dict) else getattr(payload, "path", None)
    if not path:
        return gr.skip()
    name = (payload.get("orig_name") if isinstance(payload, dict) else None) or "the upload"
    try:
        open_image(path, name)
    except BadImageError as err:
        gr.Warning(str(err))
        return None
    return gr.skip()


def _friendly(fn):
    """Turn expected failures (bad upload, empty query) into a message in the UI instead of a traceback."""

    @functools.wraps(fn)  # keeps fn's signature: Gradio names the API parameters after it
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (BadImageError, ValueError) as err:
            raise gr.Error(str(err)) from None

    return wrapper


def colour_key_html(legend: dict[str, list[int]], colours: dict[str, str]) -> str:
    """The E2 overlay's key: one swatch per entity in the colour its boxes are drawn in, with the patches picked."""
    import html

    rows = [
        f'<span style="display:inline-block;width:14px;height:14px;border:3px solid {colours.get(e, "#888")};'
        f'margin-right:6px;vertical-align:middle"></span><b>{html.escape(e)}</b>: patches '
        f"{', '.join(str(p) for p in patches)}"
        for e, patches in legend.items()
    ]
    return "<div id='colour-key'>" + "<br>".join(rows) + "</div>" if rows else ""


def build_demo(engine: CatalogSearch, k: int = 12) -> gr.Blocks:
    from syncmask_hf.search import colour_key

    choices = engine.filter_values(FILTERS)
    # the attributes `attribute_scores` can score: those with at least two values in the catalogue
    attribute_names = [a for a, values in engine.filter_values(ATTRIBUTES).items() if len(values) > 1]

    def narrow(gender, category, color, brand) -> dict:
        picked = {"gender": gender, "category": category, "color": color, "brand": brand}
        return {name: list(v) for name, v in picked.items() if v}

    def gallery(hits):
        return [(engine.image_path(h.index), h.caption()) for h in hits]

    # Named parameters (not *args): API clients pass e.g. `gender=["women"]`, `one_per_product=False`.
    @_friendly
    def text_search(query, gender=None, category=None, color=None, brand=None, one_per_product=True):
        filters = narrow(gender, category, color, brand)
        return gallery(engine.search_text(query, k, filters, one_per_product))

    @_friendly
    def image_search(image, gender=None, category=None, color=None, brand=None, one_per_product=True):
        filters = narrow(gender, category, color, brand)
        products, texts = engine.search_image(image, k, filters, one_per_product)
        return gallery(products), "\n".join(f"{h.score:.3f}  {h.text}" for h in texts)

    @_friendly
    def modified_search(image, modification, gender=None, category=None, color=None, brand=None, one_per_product=True):
        filters = narrow(gender, category, color, brand)
        return gallery(engine.search_modified(image, modification, k, filters, one_per_product))

    @_friendly
    def describe(image):
        caption = engine.caption(image)
        scores = engine.attribute_scores(image)
        overlay = engine.selection_overlay(image)
        picture, legend = overlay if overlay is not None else (None, {})
        key = colour_key_html(legend, colour_key(engine.model.config)) if legend else ""
        return caption, *[scores.get(a) for a in attribute_names], picture, key

    photos = example_photos(engine)  # thumbnails written once, shown in three tabs
    head = {"combiner": "the fine-tuned combiner", "fusion": "SyncMask's fine-tuned fusion head"}
    with gr.Blocks(title="syncmask_hf fashion search") as demo:
        gr.Markdown(
            f"# Fashion search\nModel `{engine.model_path}` ({engine.model.config.model_type}), "
            f"{len(engine.index):,} catalogue items of {len(set(engine.product_ids)):,} products. "
            f'"This, but …" composes with {head.get(engine.tgir_head, "the zero-shot image + text sum")}.'
            + (
                f" Embeddings served by ONNX Runtime ({engine.encoder.precision})."
                if hasattr(engine.encoder, "precision")
                else ""
            )
        )
        with gr.Row(elem_id="filters"):
            # one set of filters over every tab's search (the catalogue index pre-filters: k results when k match)
            filter_boxes = [
                gr.Dropdown(
                    choices.get(name, []),
                    value=[],
                    multiselect=True,
                    label=name,
                    elem_id=f"filter-{name}",
                    visible=len(choices.get(name, ())) > 1,  # a column the catalogue leaves empty
                )
                for name in FILTERS
            ]
            group_box = gr.Checkbox(value=True, label="One result per product", elem_id="group-by-product")
        narrowing = [*filter_boxes, group_box]
        with gr.Tab("Text → products"):
            query = gr.Textbox(
                label="Describe a product", placeholder="red striped dress with pockets", elem_id="text-query"
            )
            text_button = gr.Button("Search", elem_id="text-search")
            text_results = gr.Gallery(label="Products", columns=6, elem_id="text-results")
            text_button.click(text_search, [query, *narrowing], text_results, api_name="text_search")
            query.submit(text_search, [query, *narrowing], text_results, api_name=False)
            gr.Examples(example_texts(engine), query, label="From the catalogue")
        with gr.Tab("Image → products & texts"):
            image_in = UploadImage(type="filepath", label="Photo", elem_id="image-query")
            image_button = gr.Button("Search", elem_id="image-search")
            image_results = gr.Gallery(label="Similar products", columns=6, elem_id="image-results")
            image_texts = gr.Textbox(label="Closest catalogue texts", lines=6)
            image_button.click(
                image_search, [image_in, *narrowing], [image_results, image_texts], api_name="image_search"
            )
            gr.Examples(photos, image_in, label="From the catalogue")
        with gr.Tab("This, but …"):
            with gr.Row():
                reference = UploadImage(type="filepath", label="Reference product", elem_id="modified-reference")
                modification = gr.Textbox(label="Change", placeholder="in red", elem_id="modified-text")
            modified_button = gr.Button("Search", elem_id="modified-search")
            modified_results = gr.Gallery(label="Products", columns=6, elem_id="modified-results")
            modified_button.click(
                modified_search, [reference, modification, *narrowing], modified_results, api_name="modified_search"
            )
            changes = ("in red", "in black", "with stripes", "in blue")
            gr.Examples(
                [list(pair) for pair in zip(photos, changes)], [reference, modification], label="From the catalogue"
            )
        with gr.Tab("Caption & attributes"):
            describe_in = UploadImage(type="filepath", label="Photo", elem_id="describe-image")
            describe_button = gr.Button("Describe", elem_id="describe")
            caption_out = gr.Textbox(label="Caption")
            with gr.Row():
                attribute_outs = [gr.Label(label=a, num_top_classes=3) for a in attribute_names]
            overlay_out = gr.Image(label="Patches picked by E2's selection tokens (E2 models only)")
            legend_out = gr.HTML(label="Colour key: entity → patches")
            describe_button.click(
                describe, describe_in, [caption_out, *attribute_outs, overlay_out, legend_out], api_name="describe"
            )
            gr.Examples(photos, describe_in, label="From the catalogue")
        for box in (image_in, reference, describe_in):
            box.upload(check_upload, box, box, preprocess=False, api_name=False, show_progress="hidden")
    # Every endpoint decodes an upload and runs the model: one shared pool of CONCURRENCY slots bounds the memory
    # (4 endpoints x 4 slots each let 16 large uploads decode at once).
    for dependency in demo.fns.values():
        dependency.concurrency_id, dependency.concurrency_limit = "model", CONCURRENCY
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=256)
    return demo


def example_texts(engine: CatalogSearch, n: int = 4) -> list[str]:
    """Short queries from the catalogue itself: the first clause of a few products' texts."""
    seen, out = set(), []
    step = max(1, len(engine.texts) // (4 * n))
    for text in engine.texts[::step]:
        short = text.split(".")[0].strip()
        if short and short not in seen:
            seen.add(short)
            out.append(short)
        if len(out) == n:
            break
    return out


def example_photos(engine: CatalogSearch, n: int = 4) -> list[str]:
    """Thumbnails of a few catalogue items spread over the catalogue (what the app may serve)."""
    rows = [int(r) for r in engine.image_rows]
    return [engine.image_path(rows[i * len(rows) // n]) for i in range(min(n, len(rows)))]


def launch(demo: gr.Blocks, engine: CatalogSearch, args, **kwargs):
    """Serve `demo` with the only files it may hand out, the catalogue's thumbnails (not the embedding cache)."""
    return demo.launch(
        server_name=args.host,
        server_port=args.port,
        allowed_paths=[str(engine.thumbnail_root)],
        max_file_size=args.max_file_size,  # refused before it is stored; decoded sizes are checked by open_image
        **kwargs,
    )


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=DEFAULT_MODEL, help="model folder or Hub id")
    p.add_argument(
        "--catalog",
        default=DEFAULT_CATALOG,
        help="data-layer source: synthetic:N, hm:PATH, myntra:PATH, folder:PATH, hub:ID",
    )
    p.add_argument("--captioner", default=DEFAULT_CAPTIONER, help="captioner folder or Hub id (optional)")
    p.add_argument(
        "--cache_dir",
        default=default_cache_dir(),
        help="where the embeddings, the product index and the thumbnails live (env INDEX_CACHE; on a Space with "
        "persistent storage /data/syncmask_hf)",
    )
    p.add_argument(
        "--index_uri",
        default=os.environ.get("INDEX_URI"),
        help="where the product index (LanceDB) is written (default: inside --cache_dir)",
    )
    p.add_argument(
        "--onnx",
        default=os.environ.get("ONNX_DIR"),
        help="serve embeddings from this ONNX export of --model (examples/export_onnx.py; env ONNX_DIR)",
    )
    p.add_argument(
        "--onnx_precision",
        choices=["fp32", "int8"],
        default=os.environ.get("ONNX_PRECISION", "fp32"),
        help="which of the export's files (env ONNX_PRECISION)",
    )
    p.add_argument("--max_items", type=int, default=None)
    p.add_argument(
        "--trust_remote_code",
        action="store_true",
        default=os.environ.get("TRUST_REMOTE_CODE") == "1",
        help="let a --model / --captioner of another model type run its own code (env TRUST_REMOTE_CODE=1)",
    )
    # Spaces set GRADIO_SERVER_NAME=0.0.0.0 (and the port); elsewhere the app stays on loopback unless asked.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    p.add_argument("--max_file_size", default=os.environ.get("MAX_FILE_SIZE", "25mb"), help="largest upload accepted")
    return p.parse_args(argv)


def make_engine(args) -> CatalogSearch:
    return CatalogSearch(
        args.model,
        args.catalog,
        cache_dir=args.cache_dir,
        captioner=args.captioner,
        max_items=args.max_items,
        trust_remote_code=args.trust_remote_code,
        index_uri=args.index_uri,
        onnx=args.onnx,
        onnx_precision=args.onnx_precision,
    )


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    demo_engine = make_engine(args)
    launch(build_demo(demo_engine), demo_engine, args)
else:
    # `gradio demo/app.py` and Spaces import the module and look for `demo`; build it from the environment.
    if os.environ.get("SYNCMASK_DEMO_NO_AUTOLOAD") != "1":
        demo = build_demo(make_engine(parse_args([])))
