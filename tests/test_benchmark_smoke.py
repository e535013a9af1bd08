"""Smoke test of the benchmark suite: benchmarks/run.py --quick on two cases runs, writes its JSON
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


def test_quick_benchmark_cases_2_and_3(tmp_path):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, RUN, "--quick", "--cases", "2,3", "--json", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode == 0, f"run.py failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    rows = json.loads(out.read_text())
    assert isinstance(rows, list) and rows
    for r in rows:
        missing = [k for k in REQUIRED if k not in r]
        assert not missing, f"row {r.get('case')!r} lacks {missing}"

    cases = {r["number"]: r for r in rows if r.get("kind") == "case"}
    assert sorted(cases) == [2, 3]
    assert cases[2]["unit"] == "steps/s" and cases[3]["unit"] == "examples/s"
    for r in cases.values():
        assert r["case"].startswith(f"{r['number']}. ")
        for key in ("elbokit", "pytorch", "ratio", "gflops_elbokit"):
            assert positive_finite(r[key]), (r["case"], key, r[key])
        assert r["ratio"] == pytest.approx(r["elbokit"] / r["pytorch"])
        # the two frameworks computed the same ELBOs (no speed from doing less)
        assert r["check"] == "ok", (r["case"], r["check_detail"])

    peaks = [r for r in rows if r.get("kind") == "peak"]
    assert len(peaks) == 2 and all(positive_finite(r["value"]) for r in peaks)
    assert "2. digits VAE" in p.stdout and "3. ELBO evaluation" in p.stdout  # the printed table
