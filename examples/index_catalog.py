#!/usr/bin/env python
"""Embed a catalogue into a persistent `CatalogIndex` (LanceDB), on one process or several.

    python examples/index_catalog.py --model_path outputs/pretrain/final --dataset hm:../shared/data/hm \
        --index_uri outputs/hm.lance
    torchrun --nproc_per_node 2 examples/index_catalog.py ...            # CPU processes (gloo)
    accelerate launch --multi_gpu examples/index_catalog.py ...          # GPUs, or machines sharing the --index_uri

The catalogue is cut into chunks of `--chunk_size` rows in its own order; each process embeds its share of the
chunks (`Accelerator.split_between_processes`), writes each embedded chunk to `<index_uri>/_staging/` (one Arrow file,
renamed into place when complete), and the main process merges them into the index at the end. The staging area
lives beside the index on the same filesystem (pyarrow's: a local folder, `file://`, `s3://`, `gs://`, ...), so
machines that share an object-store `--index_uri` share it too. Rows already in the
index with the same content (image and text hash) are not embedded again, so a killed run started again resumes: the
staged chunks are kept, the merged rows are skipped, and only the rest is embedded. `--streaming` reads the source
without loading it whole. `--onnx DIR` embeds through ONNX Runtime with the model's export (examples/export_onnx.py).
Bad images are skipped and counted. Safe by default: model code from another package runs
only with `--trust_remote_code`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import sys
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import gather_object
from tqdm.auto import tqdm

import syncmask_hf  # noqa: F401  (registers the package's models with the Auto classes)
from syncmask_hf.catalog_index import DEFAULT_ANN_THRESHOLD, DEFAULT_CLUSTER_BY, CatalogIndex, catalog_rows
from syncmask_hf.training import add_trust_remote_code_argument, multi_cpu_launch

logger = logging.getLogger("index_catalog")
STAGING = "_staging"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="a model folder or Hub id")
    p.add_argument("--dataset", action="append", required=True, help="a data-layer source (repeat to index several)")
    p.add_argument("--index_uri", required=True, help="a local folder or an object-store URI for LanceDB")
    add_trust_remote_code_argument(p)
    p.add_argument("--chunk_size", type=int, default=1024, help="rows per staged chunk (what a kill can lose)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--streaming", action="store_true", help="read the sources as streams")
    p.add_argument(
        "--ann_threshold", type=int, default=DEFAULT_ANN_THRESHOLD, help="rows from which to add an ANN index"
    )
    p.add_argument(
        "--cluster_by",
        nargs="*",
        default=list(DEFAULT_CLUSTER_BY),
        help="columns the table is sorted by above --ann_threshold, most-filtered first (none: catalogue order)",
    )
    p.add_argument(
        "--onnx",
        default=None,
        help="embed with this ONNX export of --model_path (examples/export_onnx.py) through ONNX Runtime (CPU)",
    )
    p.add_argument("--onnx_precision", choices=["fp32", "int8"], default="fp32", help="which of the export's files")
    p.add_argument(
        "--cleanup_old_versions",
        action="store_true",
        help="after sorting the table, delete its previous layout (frees the disk; a process still serving the "
        "index from that version fails: leave it off while others serve it)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an index of another model at --index_uri")
    p.add_argument("--no_progress", action="store_true")
    args = p.parse_args(argv)
    if args.chunk_size < 1 or args.batch_size < 1:
        p.error("--chunk_size and --batch_size must be >= 1")
    return args


def rows(args):
    """Every source's rows in order (each source loaded, or streamed, with bad rows skipped and counted)."""
    from syncmask_hf.data import load_catalog

    for source in args.dataset:
        yield from catalog_rows(load_catalog(source, streaming=args.streaming, skip_bad=True))


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(message)s", level=logging.INFO)
    accelerator = Accelerator(cpu=multi_cpu_launch())
    staging = Staging(args.index_uri)
    encoder = None
    if args.onnx:
        from syncmask_hf.serving import OnnxFeatureEncoder

        encoder = OnnxFeatureEncoder(args.onnx, args.onnx_precision)
    if accelerator.is_main_process:
        CatalogIndex.create(
            args.model_path,
            args.index_uri,
            trust_remote_code=args.trust_remote_code,
            ann_threshold=args.ann_threshold,
            cluster_by=args.cluster_by,
            overwrite=args.overwrite,
            encoder=encoder,
        )
        staging.create()
    accelerator.wait_for_everyone()
    index = CatalogIndex.open(
        args.index_uri, device=accelerator.device, trust_remote_code=args.trust_remote_code, encoder=encoder
    )

    # Chunk c goes to process c % N: the same split on every process without reading the catalogue twice into memory.
    counts = {"embedded": 0, "unchanged": 0, "skipped": 0, "staged_before": 0}
    rank, world = accelerator.process_index, accelerator.num_processes
    it = iter(rows(args))
    bar = tqdm(
        desc=f"indexing (process {rank})",
        unit="row",
        disable=args.no_progress or not accelerator.is_local_main_process,
    )
    for c in itertools.count():
        chunk = list(itertools.islice(it, args.chunk_size))
        if not chunk:
            break
        bar.update(len(chunk))
        if c % world != rank:
            continue
        name = f"chunk-{c:07d}.arrow"
        if staging.exists(name):  # embedded by an earlier, killed run and not merged yet
            counts["staged_before"] += len(chunk)
            continue
        table, chunk_counts = index.embed_changed(chunk, args.batch_size)
        for key, value in chunk_counts.items():
            counts[key] += value
        for item_id, reason in index.skipped:
            logger.warning("skipped %s: %s", item_id, reason)
        if table is not None:
            staging.write(name, table)
    bar.close()
    totals = gather_object([counts])
    accelerator.wait_for_everyone()

    summary = {}
    if accelerator.is_main_process:
        staged = staging.chunks()
        for name in staged:
            index.ingest(staging.read(name))
            staging.remove(name)  # merged: a later run finds these rows in the index by their hash
        index.optimize(cleanup=args.cleanup_old_versions)
        summary = {k: sum(t[k] for t in totals) for k in counts}
        summary.update({"rows_in_index": len(index), "chunks_merged": len(staged), "processes": world})
        staging.write_report(json.dumps(summary, indent=2))
        print(json.dumps(summary))
    accelerator.wait_for_everyone()
    return summary


class Staging:
    """`<index_uri>/_staging/` on the index's own filesystem (pyarrow.fs: local, file://, s3://, gs://, ...): one
    Arrow IPC file per embedded chunk, written under a temporary name and moved into place when complete."""

    def __init__(self, index_uri):
        from pyarrow import fs

        uri = str(index_uri)
        self.fs, root = fs.FileSystem.from_uri(uri if "://" in uri else Path(uri).resolve().as_uri())
        self.root = root.rstrip("/")
        self.dir = f"{self.root}/{STAGING}"

    def create(self) -> None:
        self.fs.create_dir(self.dir, recursive=True)

    def exists(self, name: str) -> bool:
        from pyarrow import fs

        return self.fs.get_file_info(f"{self.dir}/{name}").type != fs.FileType.NotFound

    def chunks(self) -> list[str]:
        from pyarrow import fs

        infos = self.fs.get_file_info(fs.FileSelector(self.dir, allow_not_found=True))
        return sorted(
            i.base_name for i in infos if i.base_name.startswith("chunk-") and i.base_name.endswith(".arrow")
        )

    def write(self, name: str, table) -> None:
        import pyarrow as pa

        tmp = f"{self.dir}/{name}.tmp{os.getpid()}"
        with self.fs.open_output_stream(tmp) as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        self.fs.move(tmp, f"{self.dir}/{name}")  # the chunk's name appears only once it is complete

    def read(self, name: str):
        import pyarrow as pa

        with self.fs.open_input_file(f"{self.dir}/{name}") as source:
            return pa.ipc.open_file(source).read_all()

    def remove(self, name: str) -> None:
        self.fs.delete_file(f"{self.dir}/{name}")

    def write_report(self, text: str) -> None:
        with self.fs.open_output_stream(f"{self.root}/index_report.json") as sink:
            sink.write(text.encode())


if __name__ == "__main__":
    main(sys.argv[1:])
