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
    for path in sorted(args.folder.glob("times-*.json")):
        times.update(json.loads(path.read_text()))
    if not times:
        raise SystemExit(f"{args.folder}: no times-*.json (run pytest with MMBENCH_TEST_TIMES={args.folder})")
    rows = sorted(times.items(), key=lambda kv: -kv[1][1])
    print(f"| test | wall s | CPU s |\n|---|---:|---:|")
    for nodeid, (wall, cpu) in rows[: args.top]:
        print(f"| `{nodeid}` | {wall:.1f} | {cpu:.1f} |")
    wall, cpu = sum(w for w, _ in times.values()), sum(c for _, c in times.values())
    print(f"\n{len(times)} tests: {wall:.0f} s of test wall time, {cpu:.0f} CPU s "
          f"(≥ {cpu / 2 / 60:.1f} min on 2 cores)")


if __name__ == "__main__":
    main()
