"""Print benchmark ratios (to the floor and to petfeat's fused pass) from a pytest-benchmark JSON."""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    data = json.load(open(path))
    groups = defaultdict(dict)
    for b in data["benchmarks"]:
        params = b.get("params") or {}
        name = params.get("kernel") or b["name"].split("[")[0].removeprefix("test_")  # beyond_llc: floor, fused
        groups[b["group"]][name + (f"[{params['voxel_mm']}mm]" if "voxel_mm" in params else "")] = b["stats"]["median"]
    print(f"machine: {data['machine_info'].get('cpu', {}).get('brand_raw', '?')}, "
          f"{data['machine_info'].get('cpu', {}).get('count', '?')} cpus; {data['datetime']}")
    for g, rows in sorted(groups.items()):
        floor, fused = rows.get("floor"), rows.get("fused")
        print(f"\n{g}\n{'benchmark':<42} {'median s':>10} {'x floor':>8} {'x fused':>8}")
        for name, t in sorted(rows.items(), key=lambda kv: kv[1]):
            print(f"{name:<42} {t:>10.4f} {t / floor if floor else float('nan'):>8.2f} "
                  f"{t / fused if fused else float('nan'):>8.2f}")


if __name__ == "__main__":
    main(sys.argv[1])
