"""The hpm command: accurate help, one-line errors, and wrap + fine-tune + info end to end."""
import subprocess
import sys

import pytest

from hpm.cli import build_parser, main
from hpm.units import parse_eps


@pytest.mark.parametrize("command", ["train", "train-backbone", "info", "push", "eval", "analyze", "card"])
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: hpm " + command in capsys.readouterr().out


@pytest.mark.parametrize("text, value", [("8/255", 8 / 255), ("0.25/255", 0.25 / 255), ("0.031", 0.031), ("0", 0.0)])
def test_eps_is_a_number_or_a_fraction_with_a_decimal_numerator(text, value):
    assert parse_eps(text) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize("argv, message", [
    (["train", "pyautoattack", "--out", "x", "--eps", "abc"], "--eps: not a number"),
    (["eval", "pyautoattack", "--eps", "8/0"], "--eps: not a number"),
    (["eval", "pyautoattack", "--eps=-1/255"], "--eps: must be >= 0"),
    (["train", "pyautoattack", "--out", "x", "--epochs", "0"], "--epochs: must be >= 1"),
    (["train", "pyautoattack", "--out", "x", "--head", "svm"], "invalid choice"),
    (["info"], "required"),
])
def test_bad_arguments_get_one_line_and_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_bad_files_get_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hpm.cli", "info", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"hpm: error: {tmp_path}: no config.json; not an hpm checkpoint"


def test_train_clean_then_info_end_to_end(tiny_data_root, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert main(["train", "pyautoattack", "--head", "hpm", "--data", str(tiny_data_root), "--out", str(out),
                 "--lr", "1e-3", "--batch-size", "8", "--eval-batch-size", "8"]) == 0
    printed = capsys.readouterr().out
    assert "clean_accuracy (hard, 24 images, batch 8)" in printed
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "head:       hpm  d=512  k=10" in info and "| clean_accuracy |" in info


def test_parser_lists_all_commands():
    text = build_parser().format_help()
    for command in ("train", "eval", "info", "push"):
        assert command in text


def test_readme_quickstart_script_runs_on_the_local_data(tmp_path):
    from conftest import REPO, shared_data_or_skip
    data = shared_data_or_skip()
    result = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py"), "--data", str(data),
                             "--n-train", "2000", "--out", str(tmp_path / "q")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("FC  clean accuracy on 1000 test images") and lines[1].startswith("HPM")
    assert (tmp_path / "q" / "model.safetensors").exists()


def test_analyze_writes_statistics_and_figures(tiny_data_root, tmp_path, capsys):
    import json
    out = tmp_path / "analysis"
    assert main(["analyze", "pyautoattack", "--data", str(tiny_data_root), "--out", str(out), "--check-n", "4",
                 "--dims", "2,64"]) == 0
    stats = json.loads((out / "angle_stats.json").read_text())
    assert set(stats["fc"]) == {"mu_pos", "sigma_pos", "mu_neg", "sigma_neg", "alpha"}
    assert stats["eq8_check"]["implication_violations"] == 0 and stats["n_samples"] == 24
    assert {p.name for p in out.iterdir()} >= {"fig2_isotropic.html", "fig3_angles.html", "fig3_cdf.html"}
    assert "max |modelled - empirical| CDF gap" in capsys.readouterr().out


def test_analyze_rejects_bad_dims(tiny_data_root, tmp_path, capsys):
    assert main(["analyze", "pyautoattack", "--data", str(tiny_data_root), "--out", str(tmp_path), "--dims",
                 "1,8"]) == 2
    assert "--dims must all be >= 2" in capsys.readouterr().err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_asking_for_a_gpu_the_machine_lacks_gets_one_line(tiny_data_root, tmp_path, capsys):
    assert main(["eval", "pyautoattack", "--data", str(tiny_data_root), "--n", "2", "--device", "cuda",
                 "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "device cuda: PyTorch sees no CUDA GPU on this machine" in err and "--device cpu" in err


def test_a_data_root_without_the_dataset_names_the_files_it_looked_for(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HPM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("hpm.network.network_available", lambda host, timeout=3.0: False)
    assert main(["eval", "pyautoattack", "--data", str(tmp_path), "--n", "2", "--out", str(tmp_path / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert (f"{tmp_path} has no cifar10 test data (looked for {tmp_path}/cifar10/test-first1000.npz, "
            f"{tmp_path}/cifar10-samples/*.png or {tmp_path}/cifar10/cifar10-jpeg.tar.gz)") in err
    assert "--data DIR" not in err


def test_the_quickstart_example_reports_a_bad_data_root_in_one_line(tmp_path):
    from conftest import REPO
    result = subprocess.run([sys.executable, str(REPO / "examples" / "quickstart.py"), "--data",
                             str(tmp_path / "missing")], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"quickstart: error: data root {tmp_path / 'missing'} (from --data) is not a directory"


def test_help_version_and_argument_errors_never_import_torch():
    """They answer in a fraction of a second (benchmarks/bench_cli.py times them) because nothing imports torch."""
    code = ("import sys\nfrom hpm.cli import main\n"
            "for argv in (['--help'], ['--version'], ['eval', '--help'], ['eval', 'x', '--eps', 'abc']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "import hpm\nprint('torch' in sys.modules, file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stderr.strip().splitlines()[-1] == "False"


def test_the_head_choices_of_the_command_line_are_the_library_heads_that_fit_any_backbone():
    from hpm.cli.common import HEAD_TYPES
    from hpm.heads import HEADS
    assert HEAD_TYPES == tuple(name for name, head in HEADS.items() if not head.with_own_backbone)
