"""Smoke test of the benchmark suite: benchmarks/run.py --quick on a few cases runs, writes its JSON
rows, and both frameworks computed the same thing. No speed is asserted (timings are noise here)."""
import json
import math
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")
REQUIRED = ("case", "elbokit", "pytorch", "unit", "ratio")


def positive_finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


# (cases, {case number: (unit, start of its name in the printed table)})
RUNS = [
    ("2,3", {2: ("steps/s", "2. digits VAE"), 3: ("examples/s", "3. ELBO evaluation")}),
    ("5,6,7", {5: ("steps/s", "5. digits HVAE"), 6: ("steps/s", "6. diffusion eps-MLP"),
               7: ("points/s", "7. DDPM sampling")}),
]


@pytest.mark.parametrize("cases, expected", RUNS, ids=[c for c, _ in RUNS])
def test_quick_benchmark(tmp_path, cases, expected):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, RUN, "--quick", "--cases", cases, "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, f"run.py failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and rows
    for r in rows:
        missing = [k for k in REQUIRED if k not in r]
        assert not missing, f"row {r.get('case')!r} lacks {missing}"

    found = {r["number"]: r for r in rows if r.get("kind") == "case"}
    assert sorted(found) == sorted(expected)
    for number, r in found.items():
        unit, name = expected[number]
        assert r["unit"] == unit
        assert r["case"].startswith(f"{number}. ")
        for key in ("elbokit", "pytorch", "ratio", "gflops_elbokit"):
            assert positive_finite(r[key]), (r["case"], key, r[key])
        assert r["ratio"] == pytest.approx(r["elbokit"] / r["pytorch"])
        # the two frameworks computed the same thing (no speed from doing less)
        assert r["check"] == "ok", (r["case"], r["check_detail"])
        assert r["target"].startswith(">=4x" if number >= 5 else ">="), r["target"]
        assert name in p.stdout  # the printed table

    peaks = [r for r in rows if r.get("kind") == "peak"]
    assert len(peaks) == 2 and all(positive_finite(r["value"]) for r in peaks)
