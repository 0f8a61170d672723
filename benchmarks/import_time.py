"""Import time of ``tracklink`` compared with ``pluggy`` (its one plugin dependency), in fresh interpreters.

Each sample starts a new interpreter and times only the ``import`` statement (``time.perf_counter`` around
it), so interpreter start-up is excluded. Bytecode is compiled first (``compileall`` on both packages, and
the samples run without ``PYTHONDONTWRITEBYTECODE``), so the numbers are those of an installed package, not
of a first import that compiles sources. The best of N samples is reported, per module, interleaved.

    python benchmarks/import_time.py [-n 15] [--json PATH] [--breakdown]

Goal from the issue: ``import tracklink`` < 3x ``import pluggy``. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

MODULES = ("pluggy", "tracklink", "tracklink.integrations")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # set on the development machine; an install has bytecode
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env


def compile_bytecode() -> None:
    for name in ("pluggy", "tracklink", "tqdm"):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        for location in spec.submodule_search_locations:
            compileall.compile_dir(location, quiet=1)


def sample(module: str) -> float:
    code = (
        "import time, sys\n"
        "t = time.perf_counter()\n"
        f"import {module}\n"
        "d = time.perf_counter() - t\n"
        "sys.stdout.write(repr(d))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), check=True)
    return float(out.stdout)


def _importtime(code: str) -> dict[str, int]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                            env=_env(), check=True)
    out = {}
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        parts = line[len("import time:"):].split("|")  # "  self |  cumulative | name"
        out[parts[2].strip()] = int(parts[0])
    return out


def breakdown(module: str, top: int = 12) -> list[tuple[int, str]]:
    """The slowest modules ``import module`` loads (self time, best of 3 ``-X importtime`` runs), without
    the modules the interpreter imports at start-up."""
    startup = set(_importtime("pass"))
    best: dict[str, int] = {}
    for _ in range(3):
        for name, value in _importtime(f"import {module}").items():
            if name.strip() not in startup:
                best[name] = min(value, best.get(name, value))
    return sorted(((us, name) for name, us in best.items()), reverse=True)[:top]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="samples per module (default 15)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--breakdown", action="store_true", help="show the slowest modules (-X importtime)")
    ns = parser.parse_args(argv)

    compile_bytecode()
    for module in MODULES:  # warm-up: writes any missing bytecode, fills the OS file cache
        sample(module)
    samples: dict[str, list[float]] = {m: [] for m in MODULES}
    for _ in range(ns.n):
        for module in MODULES:
            samples[module].append(sample(module))

    best = {m: min(v) * 1e3 for m, v in samples.items()}
    median = {m: statistics.median(v) * 1e3 for m, v in samples.items()}
    print(f"python {platform.python_version()}, best of {ns.n} fresh interpreters (bytecode compiled)")
    print(f"{'module':<26}{'best [ms]':>12}{'median [ms]':>14}")
    for module in MODULES:
        print(f"{module:<26}{best[module]:>12.2f}{median[module]:>14.2f}")
    ratio = best["tracklink"] / best["pluggy"]
    ratio_median = median["tracklink"] / median["pluggy"]
    print(f"\nimport tracklink / import pluggy: {ratio:.2f}x (best), {ratio_median:.2f}x (median); goal < 3x")

    result: dict[str, Any] = {
        "python": platform.python_version(),
        "samples": ns.n,
        "best_ms": best,
        "median_ms": median,
        "ratio_best": ratio,
        "ratio_median": ratio_median,
    }
    if ns.breakdown:
        print("\nslowest modules under `import tracklink` (self time, -X importtime):")
        rows = breakdown("tracklink")
        for us, name in rows:
            print(f"  {us / 1e3:8.2f} ms  {name}")
        result["breakdown_us"] = [{"module": name, "self_us": us} for us, name in rows]
    if ns.json:
        path = Path(ns.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
