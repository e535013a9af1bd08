"""`elbokit train hvae`: trains, evaluates every level's term on held-out data, saves a model that
loads back as an HVAE, and reports per-level numbers in metrics.json."""
import json

import numpy as np

import elbokit as ek
from elbokit.cli import main


def test_train_hvae_reports_every_level(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "hvae", "--z-dims", "6", "3", "2", "--hidden", "32", "--structure", "topdown",
                 "--epochs", "2", "--k", "20", "--warmup-steps", "10", "--free-bits", "0.1", "--out", str(out),
                 "--no-progress", "--dtype", "float64"]) == 0
    text = capsys.readouterr().out
    assert "level 3: prior matching" in text and "level 1: KL to p(z_l|z_l+1)" in text and "per level" in text
    m = json.loads((out / "metrics.json").read_text())
    h = m["held_out"]
    assert len(h["kl_levels"]) == 3 and h["z_dims"] == [6, 3, 2] and h["z_dim"] == 11
    assert h["active_units"] == sum(h["active_units_per_level"])
    assert abs(sum(h["kl_levels"]) - h["kl"]["mean"]) < 1e-9
    assert h["log_likelihood"]["mean"] > h["elbo"]["mean"]
    model = ek.load(out / "model.elbokit")
    assert isinstance(model, ek.HVAE) and model.z_dims == (6, 3, 2) and model.structure == "topdown"
    test = ek.datasets.digits()[1]
    r = model.elbo(test, n_samples=10, seed=0)  # the CLI's evaluation: 10 samples, --seed 0
    assert np.allclose(r.level_means(), h["kl_levels"], rtol=1e-10)
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_train_hvae_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["train", "hvae", "--z-dims", "0", "--out", str(tmp_path / "r")]) == 2
    assert "expected an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["train", "hvae", "--structure", "ladder", "--out", str(tmp_path / "r")]) == 2
    assert "invalid choice: 'ladder'" in capsys.readouterr().err
