"""Build the reference model to an OpenVINO engine, then ask again: prints both times.

    .venv/bin/python benchmarks/builders_cache.py [--quant int8] [--out DIR] [--fresh]

``--fresh`` builds into a new temporary directory (a real export); without it, an existing
finished build in ``--out`` is reused and only the cached path is timed twice.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    from onramp.signals import exit_on_signals

    exit_on_signals()  # SIGTERM stops what the run started (export, latency server) too
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quant", default="int8", choices=["int8", "int4", "fp16"])
    parser.add_argument("--out", type=Path, default=None, help="engines root (default: a temp dir with --fresh, "
                        "else the test cache's engines/)")
    parser.add_argument("--fresh", action="store_true", help="build into a new temporary directory")
    args = parser.parse_args()

    from builders import build_engine, read_manifest
    from onramp.reference import HUB_REPO_ID, make_reference_model
    root = Path(__file__).resolve().parent.parent
    reference = make_reference_model(cache_dir=root / ".cache" / "test")  # the tests' copy, made once
    out = args.out or (Path(tempfile.mkdtemp(prefix="onramp-bench-")) if args.fresh
                       else root / ".cache" / "test" / "engines")
    for attempt in ("first request", "second request"):
        start = time.perf_counter()
        engine = build_engine(reference, backend="openvino", quant=args.quant, out_root=out, repo=HUB_REPO_ID)
        seconds = time.perf_counter() - start
        manifest = read_manifest(engine)
        print(f"{attempt}: {seconds:.2f} s  (engine built {manifest.created}, export took "
              f"{manifest.build_seconds:.1f} s, {sum(f.size for f in manifest.files.values()) / 1e6:.0f} MB) {engine}")


if __name__ == "__main__":
    main()
