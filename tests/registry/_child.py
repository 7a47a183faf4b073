"""One registry step in a child process, for the fault tests that SIGKILL it mid-way.

``python -m tests.registry._child OP TRACKING_URI JSON_ARGS``; OP is ``promote``, ``rollback`` or
``register`` (``flows.steps.register``: idempotent by build_id, as the onboard flow calls it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    op, uri, args = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    from registry.client import Registry

    reg = Registry(tracking_uri=uri, cache_dir=args["cache_dir"], experiment=args.get("experiment", "onramp"),
                   lock_lease_s=args.get("lease", 60.0), attempts=2, retry_wait=0.1)
    if op == "promote":
        print(reg.promote(args["name"], args["version"], force=args.get("force", False)), flush=True)
    elif op == "rollback":
        print(reg.rollback(args["name"]), flush=True)
    elif op == "register":
        from flows import steps

        print(steps.register(reg, Path(args["engine"]), run_id=None, gate_passed=True, metrics={}, tags={}),
              flush=True)
    else:
        raise SystemExit(f"unknown op {op}")


if __name__ == "__main__":
    main()
