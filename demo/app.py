"""Fashion search demo: text -> products, image -> products and texts, "this but in red", captions, attributes.

    python demo/app.py --model outputs/pretrain/final --catalog synthetic:2400
    python demo/app.py --model your-name/syncmask-fashion --catalog hm:/data/hm --captioner your-name/fashion-decap

On a Space the same settings come from the environment: MODEL_ID, CATALOG, CAPTIONER_ID. The gallery is embedded
once and cached on disk (see `syncmask_hf.search.CatalogSearch`); searches use a FAISS index.
"""

from __future__ import annotations

import argparse
import os
import sys

import gradio as gr

from syncmask_hf.search import BadImageError, CatalogSearch, open_image

DEFAULT_MODEL = os.environ.get("MODEL_ID", "outputs/pretrain/final")
DEFAULT_CATALOG = os.environ.get("CATALOG", "synthetic:2400")
DEFAULT_CAPTIONER = os.environ.get("CAPTIONER_ID") or None
CONCURRENCY = int(os.environ.get("DEMO_CONCURRENCY", "2"))  # requests decoding and embedding at once, all endpoints


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


def _friendly(fn):
    """Turn expected failures (bad upload, empty query) into a message in the UI instead of a traceback."""

    def wrapper(*args):
        try:
            return fn(*args)
        except (BadImageError, ValueError) as err:
            raise gr.Error(str(err)) from None

    wrapper.__name__ = fn.__name__
    wrapper.__doc__ = fn.__doc__
    return wrapper


def build_demo(engine: CatalogSearch, k: int = 12) -> gr.Blocks:
    def gallery(hits):
        return [(engine.image_path(h.index), h.caption()) for h in hits]

    @_friendly
    def text_search(query):
        return gallery(engine.search_text(query, k))

    @_friendly
    def image_search(image):
        products, texts = engine.search_image(image, k)
        return gallery(products), "\n".join(f"{h.score:.3f}  {h.text}" for h in texts)

    @_friendly
    def modified_search(image, modification):
        return gallery(engine.search_modified(image, modification, k))

    @_friendly
    def describe(image):
        caption = engine.caption(image)
        attributes = {name: f"{value} ({prob:.0%})" for name, (value, prob) in engine.attributes(image).items()}
        overlay = engine.selection_overlay(image)
        picture, legend = overlay if overlay is not None else (None, {})
        return caption, attributes, picture, legend

    with gr.Blocks(title="syncmask_hf fashion search") as demo:
        gr.Markdown(
            f"# Fashion search\nModel `{engine.model_path}` ({engine.model.config.model_type}), "
            f"{len(engine.texts):,} catalogue items."
        )
        with gr.Tab("Text → products"):
            query = gr.Textbox(
                label="Describe a product", placeholder="red striped dress with pockets", elem_id="text-query"
            )
            text_button = gr.Button("Search", elem_id="text-search")
            text_results = gr.Gallery(label="Products", columns=6, elem_id="text-results")
            text_button.click(text_search, query, text_results, api_name="text_search")
            query.submit(text_search, query, text_results, api_name=False)
        with gr.Tab("Image → products & texts"):
            image_in = UploadImage(type="filepath", label="Photo", elem_id="image-query")
            image_button = gr.Button("Search", elem_id="image-search")
            image_results = gr.Gallery(label="Similar products", columns=6, elem_id="image-results")
            image_texts = gr.Textbox(label="Closest catalogue texts", lines=6)
            image_button.click(image_search, image_in, [image_results, image_texts], api_name="image_search")
        with gr.Tab("This, but …"):
            with gr.Row():
                reference = UploadImage(type="filepath", label="Reference product")
                modification = gr.Textbox(label="Change", placeholder="in red")
            modified_button = gr.Button("Search")
            modified_results = gr.Gallery(label="Products", columns=6)
            modified_button.click(
                modified_search, [reference, modification], modified_results, api_name="modified_search"
            )
        with gr.Tab("Caption & attributes"):
            describe_in = UploadImage(type="filepath", label="Photo")
            describe_button = gr.Button("Describe")
            caption_out = gr.Textbox(label="Caption")
            attributes_out = gr.JSON(label="Predicted attributes")
            overlay_out = gr.Image(label="Patches picked by E2's selection tokens (E2 models only)")
            legend_out = gr.JSON(label="Selection tokens: entity → patch indices")
            describe_button.click(
                describe, describe_in, [caption_out, attributes_out, overlay_out, legend_out], api_name="describe"
            )
    # Every endpoint decodes an upload and runs the model: one shared pool of CONCURRENCY slots bounds the memory
    # (4 endpoints x 4 slots each let 16 large uploads decode at once).
    for dependency in demo.fns.values():
        dependency.concurrency_id, dependency.concurrency_limit = "model", CONCURRENCY
    demo.queue(default_concurrency_limit=CONCURRENCY, max_size=256)
    return demo


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
    p.add_argument("--cache_dir", default=os.environ.get("INDEX_CACHE"), help="where gallery embeddings are cached")
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
    )


if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    demo_engine = make_engine(args)
    launch(build_demo(demo_engine), demo_engine, args)
else:
    # `gradio demo/app.py` and Spaces import the module and look for `demo`; build it from the environment.
    if os.environ.get("SYNCMASK_DEMO_NO_AUTOLOAD") != "1":
        demo = build_demo(make_engine(parse_args([])))
