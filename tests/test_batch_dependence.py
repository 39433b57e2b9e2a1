"""Batch dependence measured: accuracy over evaluation batch size and order, and the clean-drop diagnosis."""
import json
import subprocess
import sys

import torch

import hpm
from conftest import REPO, TinyMLP
from hpm.evaluation.batch_dependence import prediction_curve, predictions


def tiny(head: str):
    torch.manual_seed(0)
    model = hpm.wrap(TinyMLP(), head=head)
    z = model.forward_features(torch.rand(40, 3, 32, 32))
    if head != "fc":
        model.head.init_prototypes(z, torch.arange(40) % 4)
    if head == "hpm":
        torch.nn.init.normal_(model.head.mixer.weight, std=0.3)
    return model, z, model.forward_head(z).argmax(1)


def test_a_per_sample_head_has_a_flat_curve():
    model, z, y = tiny("ncm")
    curve = prediction_curve(model, z, y, [1, 8, 40], n_orders=3)
    assert {c["accuracy"] for c in curve.values()} == {1.0} and all(c["changed"] == 0 for c in curve.values())


def test_hpm_predictions_move_with_the_batch_size_and_the_order():
    model, z, y = tiny("hpm")  # labels: its own predictions on the whole batch of 40
    curve = prediction_curve(model, z, y, [1, 8, 40], n_orders=3)
    assert curve[40]["accuracy"] == 1.0 and curve[40]["changed"] == 0  # one batch: the order cannot matter
    assert curve[1]["changed"] == 0 and curve[8]["changed"] > 0  # alone: no order; in 5 batches of 8: it does
    assert curve[8]["min"] <= curve[8]["accuracy"] <= curve[8]["max"] and len(curve[8]["accuracy_orders"]) == 3
    order = torch.randperm(40)
    assert torch.equal(predictions(model, z, 40, order), predictions(model, z, 40))  # returned in the given order


def test_the_diagnosis_script_writes_every_row(tmp_path, tiny_data_root):
    from hpm.sources import BackboneSpec
    from hpm.sources.zoo import build, split
    options = {"depth": 8, "width": 4, "num_classes": 10, "classifier": "fc"}
    features, fc = split(build("cifar_resnet", options))
    fc_model = hpm.HPMClassifier(features, fc, hpm.create_head("fc", 16, 10), dataset="cifar10",
                                 backbone_spec=BackboneSpec("hpm", "cifar_resnet", options))
    fc_model.save_pretrained(tmp_path / "fc")
    tuned = hpm.HPMClassifier(features, fc, hpm.create_head("hpm", 16, 10), dataset="cifar10",
                              backbone_spec=BackboneSpec("hpm", "cifar_resnet", options))
    tuned.head.prototypes.normal_()  # stands in for a fine-tuned checkpoint of the same backbone
    tuned.save_pretrained(tmp_path / "tuned")
    out = tmp_path / "diag.json"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "diagnose_clean_drop.py"), str(tmp_path / "fc"),
                             "--data", str(tiny_data_root), "--batch-sizes", "1,4,24", "--orders", "2", "--adv-n", "30",
                             "--extra", f"tuned={tmp_path / 'tuned'}", "--out", str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads(out.read_text())
    assert list(data["models"]) == ["fc", "ncm (clean class means)", "ncm (adversarial class means)", "hpm at init",
                                    "hpm, clean FT",
                                    "hpm w/o C_batch, clean FT", "hpm mean mixer, clean FT", "hpm dot score, clean FT",
                                    "tuned", "ncm on the C_global of: tuned"]
    assert data["hpm_at_init_minus_ncm_max_abs_score"] < 1e-4 and data["test"]["n"] == 24
    assert all(set(m["curve"]) == {"1", "4", "24"} for m in data["models"].values())
    assert data["command"].startswith("python scripts/diagnose_clean_drop.py ")
