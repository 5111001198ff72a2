"""`make bench`: the benchmarks, each printing its tables and writing them to docs/benchmarks.md.

    python -m tests.bench [--only NAME,...] [--size full|quick] [--no-docs]

NAME is one of index_scale, ingest, engines, rebase, builder, builder_pull, derived_builder,
publish, pull
(default: all, in that order).
`--size quick` builds smaller images and layers (the method and the repeats stay the same; the
tables say the sizes) for a run in a fraction of the time. Each bench that finishes replaces its
section of docs/benchmarks.md with its tables, the commit, the date, the engines and the machine.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

from tests.bench.docs import TITLES


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    ap.add_argument(
        "--only",
        default=os.environ.get("PACKCACHE_BENCH", ""),
        help=f"comma-separated benches of {', '.join(TITLES)} (default all; env PACKCACHE_BENCH)",
    )
    ap.add_argument(
        "--size",
        choices=("full", "quick"),
        default=os.environ.get("PACKCACHE_BENCH_SIZE") or "full",
        help="full (default) or quick: smaller images, same method (env PACKCACHE_BENCH_SIZE)",
    )
    ap.add_argument(
        "--no-docs", action="store_true", help="print only; leave docs/benchmarks.md alone"
    )
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()] or list(TITLES)
    unknown = [n for n in names if n not in TITLES]
    if unknown:
        ap.error(f"unknown bench {', '.join(unknown)}; choose from {', '.join(TITLES)}")
    # Before the bench modules are imported: they size their images from it.
    os.environ["PACKCACHE_BENCH_SIZE"] = args.size

    from tests.bench import common, docs

    for name in names:
        module = importlib.import_module(f"tests.bench.{name}")
        common.RECORDED.clear()
        common.ENGINES_USED.clear()
        load, start = os.getloadavg()[0], time.perf_counter()
        print(f"\n# {docs.TITLES[name]} (tests/bench/{name}.py, size {args.size})", flush=True)
        module.main()
        seconds = time.perf_counter() - start
        print(f"\n{name}: {seconds:.0f} s", flush=True)
        if not args.no_docs:
            body = docs.render(
                name,
                list(common.RECORDED),
                list(common.ENGINES_USED.values()),
                seconds,
                (load, os.getloadavg()[0]),
                args.size,
                module.__doc__ or "",
            )
            docs.replace_section(name, body)
            print(f"wrote its section of {docs.DOC.relative_to(common.ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
