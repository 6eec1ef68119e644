"""Caption decoding cost of FashionDeCapForCaptioning: KV cache vs none, greedy vs beam, and the memory projection.

    HF_HUB_OFFLINE=1 python examples/benchmarks/bench_decap_generate.py --batch 32 --new-tokens 30 --repeats 3

A randomly initialised captioner with the default decoder (4 layers, 512 wide, BERT vocabulary) is forced to decode
`--new-tokens` tokens (EOS suppressed via min_new_tokens) so every row does the same work. Times are medians of
`--repeats`; the ratio column is against greedy decoding with the cache in the same process. The projection rows time
`project_to_memory` (softmax over the whole memory) for memories of 10k and 100k text embeddings.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from syncmask_hf import FashionDeCapConfig, FashionDeCapForCaptioning


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = FashionDeCapForCaptioning(FashionDeCapConfig()).eval().to(args.device)
    images = torch.randn(args.batch, model.config.prefix_dim, device=args.device)
    model.set_memory(torch.randn(1000, model.config.prefix_dim, device=args.device))
    n = args.new_tokens
    common = dict(image_embeds=images, max_new_tokens=n, min_new_tokens=n)
    runs = {
        "greedy, cache": lambda: model.generate(**common),
        "greedy, no cache": lambda: model.generate(**common, use_cache=False),
        "beam 3, cache": lambda: model.generate(**common, num_beams=3),
        "beam 5, cache": lambda: model.generate(**common, num_beams=5),
    }
    rows = [(name, median_seconds(fn, args.repeats)) for name, fn in runs.items()]
    reference = rows[0][1]
    print(f"device={args.device} batch={args.batch} new_tokens={n} threads={torch.get_num_threads()}")
    print(f"{'decoding':<20}{'s / batch':>12}{'captions/s':>12}{'ratio':>8}")
    for name, seconds in rows:
        print(f"{name:<20}{seconds:>12.3f}{args.batch / seconds:>12.1f}{seconds / reference:>8.2f}")

    print(f"\n{'projection':<20}{'ms / batch':>12}")
    for size in (10_000, 100_000):
        model.set_memory(torch.randn(size, model.config.prefix_dim, device=args.device))
        seconds = median_seconds(lambda: model.project_to_memory(images), args.repeats)
        print(f"{f'memory {size:,}':<20}{seconds * 1000:>12.2f}")


if __name__ == "__main__":
    with torch.no_grad():
        main()
