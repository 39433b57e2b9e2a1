"""The whole pipeline on a CUDA device with tiny models: wrap, fine-tune, save/load, evaluate with checks (library
and ``hpm eval``), the app's classify and attack (library and the app's endpoints). Skipped where no GPU is present
(CI has none); run with ``pytest -m gpu``."""
import json

import pytest
import torch

import hpm
from hpm import interactive as demo
from hpm.data import ImageTensorDataset
from hpm.cli import main
from hpm.devices import device_of
from hpm.evaluation import AttackConfig, evaluate_model
from hpm.sources import BackboneSpec
from hpm.sources.zoo import build, split
from hpm.train import AdversarialConfig, finetune_adversarial

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

CUDA = torch.device("cuda")


@pytest.fixture
def cuda_model():
    torch.manual_seed(0)
    options = {"depth": 8, "width": 4, "num_classes": 4, "classifier": "fc"}  # a loadable tiny CIFAR ResNet
    features, fc = split(build("cifar_resnet", options))
    model = hpm.HPMClassifier(features, fc, hpm.create_head("hpm", 16, 4), classes=["a", "b", "c", "d"],
                              backbone_spec=BackboneSpec("hpm", "cifar_resnet", options)).eval().to(CUDA)
    x = torch.rand(32, 3, 32, 32, device=CUDA)
    model.head.init_prototypes(model.forward_features(x), torch.arange(32, device=CUDA) % 4)
    return model, x


def test_fine_tuning_keeps_the_model_and_its_state_on_the_gpu(cuda_model, tmp_path):
    model, _ = cuda_model
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    data = ImageTensorDataset(images, torch.arange(16) % 4, ["a", "b", "c", "d"], "synthetic")
    losses = finetune_adversarial(model, data, AdversarialConfig(batch_size=8, steps=2, max_steps=2), tmp_path,
                                  progress=False)
    assert len(losses) == 2 and device_of(model).type == "cuda" and model.head.prototypes.is_cuda


def test_a_checkpoint_saved_from_the_gpu_loads_onto_it_with_the_same_outputs(cuda_model, tmp_path):
    model, x = cuda_model
    model.save_pretrained(tmp_path / "ckpt")
    again = hpm.load(tmp_path / "ckpt", device="cuda")
    assert torch.allclose(again(x), model(x), atol=1e-5)


def test_an_evaluation_without_a_device_runs_where_the_model_is_and_says_so(cuda_model):
    model, x = cuda_model
    with torch.no_grad():
        y = model(x).argmax(1)
    report = evaluate_model(model, x.cpu(), y.cpu(), attack=AttackConfig(n_iter=3, square_queries=20),
                            batch_sizes=[16], check_n=8, progress=False)
    assert report.config.device.startswith("cuda") and "gpu" in report.versions
    assert all(c.passed in (True, None) for c in report.checks), report.checks
    assert device_of(model).type == "cuda"


def test_the_apps_classify_and_attack_run_on_the_gpu(cuda_model):
    model, x = cuda_model
    context = demo.make_context(model, x[:8], "eight random images")
    assert set(demo.classify(model, x[8:9], context)) == {"fc", "deployed"}
    result = demo.attack_image(model, x[8:9], attack="ensemble", eps=8 / 255, steps=5, context=context)
    assert result.x_adv.shape == (1, 3, 32, 32) and (result.x_adv - result.x).abs().max() <= 8 / 255 + 1e-6


def test_hpm_eval_on_the_gpu_runs_its_checks_there_and_records_the_gpu(tiny_data_root, tmp_path):
    from hpm.data import CIFAR10_CLASSES

    options = {"depth": 8, "width": 4, "num_classes": 10, "classifier": "fc"}
    features, fc = split(build("cifar_resnet", options))
    model = hpm.HPMClassifier(features, fc, hpm.create_head("hpm", 16, 10), classes=CIFAR10_CLASSES,
                              dataset="cifar10", backbone_spec=BackboneSpec("hpm", "cifar_resnet", options)).eval()
    x = torch.rand(40, 3, 32, 32)
    model.head.init_prototypes(model.forward_features(x).detach(), torch.arange(40) % 10)
    model.save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "report.json"
    assert main(["eval", str(tmp_path / "ckpt"), "--data", str(tiny_data_root), "--n", "8", "--iters", "3",
                 "--square-queries", "20", "--batch-sizes", "8", "--device", "cuda", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["config"]["device"].startswith("cuda") and report["versions"]["gpu"]
    assert report["versions"]["tf32_conv"] == "False"  # judged in plain float32
    assert all(c["passed"] in (True, None) for c in report["checks"]), report["checks"]


def test_the_apps_endpoints_classify_and_attack_on_the_gpu(tmp_path):
    from PIL import Image

    from hpm import webapp

    name = "checkpoints/cifar10-resnet20w32-fgsmrs-20ep-hpm-full"  # weights shipped in the repository
    image = tmp_path / "upload.png"
    Image.new("RGB", (32, 32), (120, 60, 200)).save(image)
    fc, deployed, _ = webapp.predict(str(image), name, False, 8)
    assert len(fc) == len(deployed) == 5 and webapp.DEVICE == "cuda"  # top-5 of each head
    assert not torch.backends.cudnn.allow_tf32  # the app judges in plain float32
    assert device_of(webapp._model(name)).type == "cuda"
    out = webapp.attack(str(image), name, "ensemble", 8, 5, 100, False, 8, progress=lambda *a, **k: None)
    assert "deployed HPM fooled" in out[7]
