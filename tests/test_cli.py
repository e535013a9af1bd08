"""The ``elbokit`` command line: ``main([...])`` in-process with small settings, and the installed
console script once through a subprocess."""
import json
import math
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

import elbokit as ek
from elbokit.cli import main

pytest.importorskip("matplotlib")


def _finite_numbers(obj):
    """Every int/float in a JSON tree."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _finite_numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _finite_numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    """One small `elbokit train vae` run on digits, shared by the tests that read its files."""
    out = tmp_path_factory.mktemp("run") / "vae"  # not there yet: train must create it
    code = main(["train", "vae", "--data", "digits", "--epochs", "2", "--k", "50", "--z-dim", "4",
                 "--hidden", "32", "--out", str(out), "--no-progress"])
    return code, out


def test_train_vae_writes_model_report_and_metrics(vae_run):
    code, out = vae_run
    assert code == 0
    for name in ("model.elbokit", "report.png", "metrics.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_metrics_are_finite_and_consistent(vae_run):
    _, out = vae_run
    m = json.loads((out / "metrics.json").read_text())
    numbers = list(_finite_numbers(m))
    assert numbers and all(math.isfinite(v) for v in numbers)
    h = m["held_out"]
    assert h["n_examples"] == 297 and m["data"]["n_train"] == 1500 and m["data"]["x_dim"] == 64
    assert h["log_likelihood"]["k"] == 50
    # ELBO = reconstruction - KL, KL >= 0, and ELBO <= L_K (MATH.md §3).
    assert h["elbo"]["mean"] == pytest.approx(h["reconstruction"]["mean"] - h["kl"]["mean"], abs=1e-9)
    assert h["kl"]["mean"] >= 0
    assert h["elbo"]["mean"] <= h["log_likelihood"]["mean"]
    assert all(v["stderr"] > 0 for v in (h["elbo"], h["reconstruction"], h["log_likelihood"]))
    assert 0 <= h["active_units"] <= h["z_dim"] == 4
    assert len(h["kl_per_dim"]) == 4 and sum(h["kl_per_dim"]) == pytest.approx(h["kl"]["mean"], rel=1e-6)
    bits = h["bits_per_dim"]  # image data: positive costs -nats / (d ln 2)
    assert bits["elbo"]["mean"] == pytest.approx(-h["elbo"]["mean"] / (64 * math.log(2)))
    assert bits["elbo"]["mean"] > 0
    assert m["training"]["epochs"] == 2 and m["config"]["z_dim"] == 4 and m["config"]["hidden"] == [32]
    assert m["time_s"]["total"] >= m["time_s"]["train"] > 0


def test_saved_model_reproduces_recorded_numbers(vae_run):
    _, out = vae_run
    m = json.loads((out / "metrics.json").read_text())
    h = m["held_out"]
    vae = ek.load(out / "model.elbokit")
    assert isinstance(vae, ek.VAE) and vae.config == m["config"]
    _, test = ek.datasets.load("digits")
    res = vae.elbo(test, n_samples=h["n_samples"], seed=h["seed"])
    assert res.mean() == pytest.approx(h["elbo"]["mean"], rel=1e-9, abs=1e-9)
    assert res.stderr() == pytest.approx(h["elbo"]["stderr"], rel=1e-9)
    ll = vae.log_likelihood(test, k=h["log_likelihood"]["k"], seed=h["seed"])
    assert np.mean(ll) == pytest.approx(h["log_likelihood"]["mean"], rel=1e-9)


def test_train_prints_the_table(capsys, tmp_path):
    code = main(["train", "vae", "--epochs", "1", "--k", "5", "--hidden", "16", "--out", str(tmp_path),
                 "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    for word in ("ELBO", "reconstruction", "KL", "L_5", "active units", "bits/dim", "±", "time:"):
        assert word in out, word
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert f"{m['held_out']['elbo']['mean']:.3f}" in out  # the table shows what metrics.json records


def test_train_on_2d_data_defaults_to_gaussian(tmp_path, capsys):
    code = main(["train", "vae", "--data", "two_moons", "--epochs", "1", "--k", "5", "--hidden", "16",
                 "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["config"]["likelihood"] == "gaussian" and m["config"]["x_dim"] == 2 and m["config"]["z_dim"] == 2
    assert "bits_per_dim" not in m["held_out"]
    assert "bits/dim" not in capsys.readouterr().out
    assert (tmp_path / "report.png").is_file()


@pytest.mark.parametrize("argv, named", [
    (["train", "vae", "--epochs", "0"], "--epochs"),
    (["train", "vae", "--epochs", "two"], "--epochs"),
    (["train", "vae", "--data", "mnist"], "--data"),
    (["train", "vae", "--likelihood", "poisson"], "--likelihood"),
    (["train", "vae", "--kl", "exact"], "--kl"),
    (["train", "vae", "--k", "-3"], "--k"),
    (["train", "vae", "--bogus"], "--bogus"),
    (["train", "vae", "--seed", "-1"], "--seed"),
    (["train", "vae", "--lr", "0"], "--lr"),
    (["train", "vae", "--free-bits", "nan"], "--free-bits"),
    (["train", "vae", "--hidden", "64", "0"], "--hidden"),
    (["train", "gan"], "gan"),
    (["train"], "MODEL"),
    ([], "COMMAND"),
])
def test_bad_arguments_exit_2_naming_the_argument(argv, named, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error" in err and named in err, err


@pytest.mark.parametrize("argv, message", [
    (["train", "vae", "--data", "two_moons", "--likelihood", "bernoulli", "--epochs", "1"], "Bernoulli"),
])
def test_errors_from_the_package_are_one_line_exit_2(argv, message, capsys, tmp_path):
    out = tmp_path / "run"
    assert main(argv + ["--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("elbokit: error: ") and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists(), "a failed run must not leave an output folder"


def test_missing_fashion_mnist_is_a_clear_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ELBOKIT_FASHION_MNIST", str(tmp_path / "nowhere"))
    assert main(["train", "vae", "--data", "fashion_mnist", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("elbokit: error: ") and "not found" in err and "Traceback" not in err


def test_unknown_model_exits_2_listing_the_models(capsys):
    assert main(["train", "gan", "--epochs", "3", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'gan'" in err and "vae" in err and "hvae" in err and "diffusion" in err


def test_help_and_version_exit_0(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    assert main(["train", "vae", "--help"]) == 0
    assert "--z-dim" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert ek.__version__ in capsys.readouterr().out


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert ek.__version__ in out and "float32" in out and "float64" in out
    assert f"threads  {ek.get_num_threads()}" in out


def test_installed_console_script_info():
    # pip puts the script next to the interpreter; a shell may find it on PATH (e.g. a pyenv shim).
    beside = pathlib.Path(sys.executable).parent / "elbokit"
    exe = str(beside) if beside.is_file() else shutil.which("elbokit")
    assert exe is not None, "the console script 'elbokit' is not installed; is the package installed with pip?"
    proc = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert ek.__version__ in proc.stdout


def test_module_entry_point_matches_console_script():
    proc = subprocess.run([sys.executable, "-m", "elbokit.cli", "train", "gan"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'gan'" in proc.stderr


# -- the report's figures (elbokit.plots), as the CLI uses them ---------------------------------------
def test_plot_history_shows_the_objective_only_when_it_is_not_the_elbo():
    from elbokit import plots

    hist = {"train_elbo": [-3.0, -2.0], "val_elbo": [-3.5, -2.5], "train_loss": [3.0, 2.0]}
    assert [l.get_label() for l in plots.plot_history(hist).get_lines()] == ["train ELBO", "validation ELBO"]
    hist["train_loss"] = [2.5, 1.5]  # beta < 1: the objective is above the ELBO, not a bound
    labels = [l.get_label() for l in plots.plot_history(hist).get_lines()]
    assert labels[-1].startswith("objective")
    import matplotlib.pyplot as plt

    plt.close("all")


def test_save_figure_is_atomic_and_checks_the_folder(tmp_path):
    from elbokit import plots

    ax = plots.plot_images(np.linspace(0, 1, 3 * 64).reshape(3, 64), shape=(8, 8), ncols=2)
    path = plots.save_figure(ax.figure, tmp_path / "f.png")
    assert path == str(tmp_path / "f.png") and (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["f.png"]
    with pytest.raises(ValueError, match="path must be in an existing folder"):
        plots.save_figure(ax.figure, tmp_path / "missing" / "f.png")
    with pytest.raises(ValueError, match=r"x must have shape \(n, 64\)"):
        plots.plot_images(np.zeros((2, 63)), shape=(8, 8))
    import matplotlib.pyplot as plt

    plt.close("all")


def test_train_diffusion_on_swiss_roll_writes_model_figure_and_metrics(tmp_path):
    """`elbokit train diffusion --data swiss_roll`: samples and trajectories in report.png, the
    held-out denoising ELBO in metrics.json, a model that loads back."""
    import json

    import elbokit as ek
    from elbokit.cli import main

    out = tmp_path / "run"
    rc = main(["train", "diffusion", "--data", "swiss_roll", "--timesteps", "50", "--hidden", "32", "32",
               "--epochs", "3", "--threads", "1", "--no-progress", "--sample-steps", "10", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["model"] == "diffusion" and len(m["held_out"]["step_means"]) == 50
    elbo, se = m["held_out"]["elbo"]
    assert np.isfinite(elbo) and se > 0
    assert (out / "report.png").stat().st_size > 10000
    assert isinstance(ek.load(str(out / "model.elbokit")), ek.Diffusion)
    assert main(["train", "diffusion", "--data", "swiss_roll", "--beta", "0.5", "--out", str(out)]) == 2


def test_train_diffusion_unet_on_digits(tmp_path):
    """`elbokit train diffusion --data digits --net unet`: a U-Net model on the 8×8 images, its
    held-out bits/dim in metrics.json, image samples and a denoising trajectory in report.png; the
    U-Net's options are refused without --net unet, and --net unet without images."""
    import json

    import elbokit as ek
    from elbokit.cli import main

    out = tmp_path / "unet"
    rc = main(["train", "diffusion", "--data", "digits", "--net", "unet", "--channels", "4", "8", "--groups", "2",
               "--timesteps", "20", "--epochs", "1", "--batch-size", "256", "--threads", "1", "--no-progress",
               "--sample-steps", "5", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["net"] == "unet" and m["config"]["channels"] == [4, 8]
    assert np.isfinite(m["held_out"]["elbo"][0]) and m["held_out"]["bits_per_dim"] > 0
    assert (out / "report.png").stat().st_size > 10000
    back = ek.load(str(out / "model.elbokit"))
    assert isinstance(back, ek.Diffusion) and back.config["image_shape"] == [1, 8, 8]
    assert main(["train", "diffusion", "--data", "digits", "--channels", "4", "--out", str(out)]) == 2
    assert main(["train", "diffusion", "--data", "swiss_roll", "--net", "unet", "--out", str(out)]) == 2


def test_train_vae_conv_on_digits(tmp_path):
    """`elbokit train vae --data digits --net conv`: the conv VAE, saved and loaded back with its
    configuration; MLP and conv options are not mixed, and --net conv needs images."""
    import json

    import elbokit as ek
    from elbokit.cli import main

    out = tmp_path / "conv"
    rc = main(["train", "vae", "--data", "digits", "--net", "conv", "--channels", "4", "8", "--epochs", "2",
               "--k", "20", "--threads", "1", "--no-progress", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["net"] == "conv" and m["config"]["channels"] == [4, 8]
    back = ek.load(str(out / "model.elbokit"))
    assert isinstance(back, ek.VAE) and back.config == m["config"]
    assert main(["train", "vae", "--data", "digits", "--net", "conv", "--hidden", "4", "--out", str(out)]) == 2
    assert main(["train", "vae", "--data", "digits", "--channels", "4", "--out", str(out)]) == 2
    assert main(["train", "vae", "--data", "two_moons", "--net", "conv", "--out", str(out)]) == 2
