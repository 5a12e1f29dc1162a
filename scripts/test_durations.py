"""Sum up `make test-durations`: the tests that cost most CPU, and the totals.

Usage: python scripts/test_durations.py DIR [--top N] — DIR holds the times-<worker>.json files that
tests/conftest.py writes when MMBENCH_TEST_TIMES=DIR."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    times: dict[str, list[float]] = {}
    ends: dict[str, float] = {}
    for path in sorted(args.folder.glob("times-*.json")):
        worker = json.loads(path.read_text())
        times.update({k: v[:2] for k, v in worker.items()})
        ends[path.stem] = max((v[2] + v[0] for v in worker.values() if len(v) > 2), default=0.0)
    if not times:
        raise SystemExit(f"{args.folder}: no times-*.json (run pytest with MMBENCH_TEST_TIMES={args.folder})")
    rows = sorted(times.items(), key=lambda kv: -kv[1][1])
    print(f"| test | wall s | CPU s |\n|---|---:|---:|")
    for nodeid, (wall, cpu) in rows[: args.top]:
        print(f"| `{nodeid}` | {wall:.1f} | {cpu:.1f} |")
    wall, cpu = sum(w for w, _ in times.values()), sum(c for _, c in times.values())
    print(f"\n{len(times)} tests: {wall:.0f} s of test wall time, {cpu:.0f} CPU s "
          f"(≥ {cpu / 2 / 60:.1f} min on 2 cores)")
    if len(ends) > 1 and all(ends.values()):
        print(f"the last test of each worker ended {max(ends.values()) - min(ends.values()):.0f} s apart (idle core at the end)")


if __name__ == "__main__":
    main()
