"""Smoke test of the benchmark suite: benchmarks/run.py --quick on a few cases runs, writes its JSON
rows (with the roofline), and both frameworks computed the same thing. No speed is asserted
(timings are noise here).

The JAX column is run with --jax off, so that the suite does the same wherever it runs (CI installs
only ".[test]", without jax, and tests must not skip): the rows then carry no JAX rate and the
better peer is PyTorch. The JAX path is checked by run.py itself (its equivalence checks exit 1 on
a mismatch) when the benchmark runs with ".[bench]" installed."""
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
    ("10,11,12", {10: ("steps/s", "10. Fashion-MNIST conv VAE"), 11: ("steps/s", "11. U-Net eps-network"),
                  12: ("images/s", "12. DDIM sampling")}),
]


@pytest.mark.parametrize("cases, expected", RUNS, ids=[c for c, _ in RUNS])
def test_quick_benchmark(tmp_path, cases, expected):
    out = tmp_path / "bench.json"
    p = subprocess.run([sys.executable, RUN, "--quick", "--cases", cases, "--json", str(out), "--jax", "off"],
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
        assert r["target"].startswith({5: ">=4x", 6: ">=4x", 7: ">=1.5x best peer"}.get(number, ">=")), r["target"]
        assert name in p.stdout  # the printed table
        # no JAX column with --jax off: the better peer is PyTorch
        assert r["jax"] is None and r["jax_check"] is None and r["best_peer"] == "PyTorch"
        assert r["ratio_best_peer"] == pytest.approx(r["ratio"])
        # the roofline: FLOPs and bytes per unit, the bound and each framework's share of it
        assert positive_finite(r["bytes_per_unit"]) and positive_finite(r["roofline_rate"])
        assert r["roofline_bound"] == ("compute" if r["roofline_compute_s"] >= r["roofline_memory_s"] else "memory")
        assert r["roofline_rate"] == pytest.approx(1 / max(r["roofline_compute_s"], r["roofline_memory_s"]))
        assert r["bound_share_elbokit"] == pytest.approx(r["elbokit"] / r["roofline_rate"])
    assert "roofline: peak" in p.stdout
    env = rows[0]
    assert env["kind"] == "meta" and env["jax"]["status"].startswith("off")

    peaks = [r for r in rows if r.get("kind") == "peak"]
    assert len(peaks) == 2 and all(positive_finite(r["value"]) for r in peaks)
    bandwidth = [r for r in rows if r.get("kind") == "bandwidth"]
    assert len(bandwidth) == 2 and all(positive_finite(r["value"]) for r in bandwidth)
