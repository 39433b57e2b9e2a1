"""The demo's library layer: a corpus of awkward uploads, single-image attacks, context isolation."""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

import hpm
from hpm.mixed import MixedClassifier
from hpm import images
from hpm import interactive as demo
from hpm.errors import HPMError


def png_bytes(image: Image.Image, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=kwargs.pop("format", "PNG"), **kwargs)
    return buf.getvalue()


def make_exif_rotated() -> bytes:
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise on display
    return png_bytes(image, format="JPEG", exif=exif)


def make_animated() -> bytes:
    frames = [Image.new("P", (16, 16), i) for i in (10, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buf.getvalue()


def make_16bit() -> bytes:
    a = np.full((8, 8), 65535, dtype=np.uint16)
    a[:4] = 0
    return png_bytes(Image.fromarray(a, "I;16"))


def make_rgba() -> bytes:
    return png_bytes(Image.new("RGBA", (8, 8), (0, 0, 0, 0)))  # fully transparent -> white


GOOD = {  # name -> (bytes, expected size, expected colour of pixel (0, 0))
    "grayscale": (png_bytes(Image.new("L", (8, 6), 128)), (8, 6), (128, 128, 128)),
    "palette": (png_bytes(Image.new("P", (8, 8), 0)), (8, 8), None),
    "cmyk": (png_bytes(Image.new("CMYK", (8, 8), (0, 0, 0, 0)), format="JPEG"), (8, 8), (255, 255, 255)),
    "rgba_transparent": (make_rgba(), (8, 8), (255, 255, 255)),
    "16bit": (make_16bit(), (8, 8), (0, 0, 0)),
    "animated_gif": (make_animated(), (16, 16), None),
    "exif_rotated": (make_exif_rotated(), (20, 40), None),  # width and height swap
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_awkward_but_valid_images_decode_to_rgb(name):
    data, size, colour = GOOD[name]
    image = images.open_image(data)
    assert image.mode == "RGB" and image.size == size
    if colour is not None:
        assert image.getpixel((0, 0)) == pytest.approx(colour, abs=2)
    x = images.image_to_tensor(image, (3, 32, 32))
    assert x.shape == (1, 3, 32, 32) and x.is_contiguous() and 0 <= x.min() and x.max() <= 1


def bomb() -> bytes:
    return png_bytes(Image.new("1", (10_000, 9_000)))  # 90 megapixels in a few kB


BAD = {
    "empty": (b"", "empty"),
    "text": (b"hello, I am not an image", "not an image"),
    "truncated_jpeg": (png_bytes(Image.new("RGB", (64, 64), (1, 2, 3)), format="JPEG")[:200], "could not be decoded"),
    "decompression_bomb": (bomb(), "outside the accepted range"),
    "too_wide": (png_bytes(Image.new("L", (13_000, 1))), "outside the accepted range"),
    # beyond twice PIL's own limit, opening the header alone raises DecompressionBombError
    "pil_decompression_bomb": (png_bytes(Image.new("1", (20_000, 10_000))), "decompression bomb"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_uploads_get_a_clear_message(name):
    data, message = BAD[name]
    with pytest.raises(HPMError, match=message):
        images.open_image(data)


def test_files_are_read_with_a_size_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(b"\0" * 2048)
    monkeypatch.setattr(images, "MAX_UPLOAD_BYTES", 1024)
    with pytest.raises(HPMError, match="larger than"):
        images.open_image(path)
    with pytest.raises(HPMError, match="no such file"):
        images.open_image(tmp_path / "missing.png")


@pytest.fixture(scope="module")
def tiny_model():
    from conftest import TinyMLP
    torch.manual_seed(0)
    model = hpm.wrap(TinyMLP(), head="hpm", classes=["a", "b", "c", "d"])
    x = torch.rand(40, 3, 32, 32)
    model.head.init_prototypes(model.forward_features(x), torch.arange(40) % 4)
    torch.nn.init.normal_(model.head.mixer.weight, std=0.2)
    return model


@pytest.mark.parametrize("attack", ["fc", "soft", "ensemble", "bpda", "square"])
def test_single_image_attacks_stay_in_budget_and_report_both_heads(attack, tiny_model):
    x = torch.rand(1, 3, 32, 32)
    steps = 50 if attack == "square" else 5
    seen = []
    result = demo.attack_image(tiny_model, x, attack=attack, eps=16 / 255, steps=steps,
                               on_step=lambda done, total: seen.append((done, total)))
    assert result.linf <= 16 / 255 + 1e-6 and 0 <= result.x_adv.min() and result.x_adv.max() <= 1
    assert set(result.clean) == set(result.adversarial) == {"fc", "deployed"} and len(result.clean["deployed"]) == 4
    assert seen[-1] == (steps, steps) and all(total == steps for _, total in seen)  # counts what was asked
    assert result.transferred in (None, True, False)


@pytest.mark.parametrize("attack", ["ensemble", "square"])
def test_the_attacked_image_is_an_8bit_image_within_the_budget_and_judged_as_such(attack, tiny_model):
    """What the app returns is a PNG of exactly the image it judged: 8-bit levels, inside the eps ball."""
    x = torch.randint(0, 256, (1, 3, 32, 32)).float() / 255
    eps = 8.5 / 255  # not a whole number of levels: the ball's edge must not be crossed by rounding
    result = demo.attack_image(tiny_model, x, attack=attack, eps=eps, steps=30 if attack == "square" else 5)
    levels = result.x_adv * 255
    assert torch.equal(levels, levels.round()) and (result.x_adv - x).abs().max() <= 8 / 255 + 1e-6
    assert result.adversarial == demo.classify(tiny_model, result.x_adv, demo.no_context())


def test_context_changes_the_batch_but_never_mutates_the_model(tiny_model):
    x = torch.rand(1, 3, 32, 32)
    context = demo.make_context(tiny_model, torch.rand(30, 3, 32, 32), "30 random images")
    alone = demo.classify(tiny_model, x, demo.no_context())
    inside = demo.classify(tiny_model, x, context)
    assert alone["fc"] == inside["fc"]  # FC is per-sample
    assert alone["deployed"] != inside["deployed"]  # HPM depends on the batch
    assert not hasattr(tiny_model, "context_size")  # the shared model holds no context


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": 17 / 255}, "eps in units of 1/255 must be from 0 to 16; got 17"), ({"steps": 0}, "from 1 to"),
    ({"steps": 2.5}, "steps must be a whole number; got 2.5"),
    ({"attack": "fgsm"}, r"no attack of that name exists\): it accepts fc, soft, ensemble, bpda, square"),
    ({"eps": None}, "eps in units of 1/255 must be a number .* got None"),
    ({"eps": float("nan")}, "got nan"), ({"steps": "20"}, "steps must be a whole number .* got '20'"),
    ({"attack": "square", "steps": 5001}, "queries must be from 1 to 5000")])
def test_out_of_range_settings_are_rejected(kwargs, message, tiny_model):
    with pytest.raises(HPMError, match=message):
        demo.attack_image(tiny_model, torch.rand(1, 3, 32, 32), **{"attack": "fc", "eps": 8 / 255, "steps": 5,
                                                                    **kwargs})


def test_each_head_is_offered_the_attacks_that_exist_for_it():
    from conftest import TinyMLP
    assert demo.attack_choices(hpm.wrap(TinyMLP(), head="hpm")) == ["fc", "soft", "ensemble", "bpda", "square"]
    assert demo.attack_choices(hpm.wrap(TinyMLP(), head="ncm")) == ["fc", "deployed", "square"]
    model = hpm.wrap(TinyMLP(), head="fc")
    assert demo.attack_choices(model) == ["deployed", "square"] and model.head.label == "FC"
    with pytest.raises(HPMError, match=r"does not apply to this model \(FC\)"):
        demo.attack_image(model, torch.rand(1, 3, 32, 32), attack="soft", eps=0.01, steps=2)


def test_a_mixed_classifier_shows_its_robust_branch_beside_the_mixture_and_offers_each_branch_as_a_target():
    from conftest import TinyMLP
    torch.manual_seed(0)
    model = MixedClassifier(hpm.wrap(TinyMLP(), head="fc"), hpm.wrap(TinyMLP(), head="fc"), alpha=0.75).eval()
    assert demo.attack_choices(model) == ["deployed", "standard", "robust", "square"]
    assert demo.panel_labels(model) == ("robust branch", "mixture (α = 0.75)")
    assert not demo.batch_dependent(model) and not demo.deployed_is_reference(model)
    x = torch.rand(1, 3, 32, 32)
    shown = demo.classify(model, x, demo.no_context())
    with torch.no_grad():
        assert shown["fc"] == demo.top_k(model(x, mode="robust")[0], model.classes)
        assert shown["deployed"] == demo.top_k(model(x)[0], model.classes)
    result = demo.attack_image(model, x, attack="standard", eps=8 / 255, steps=3)
    assert result.surrogate_fooled is not None and result.linf <= 8 / 255 + 1e-6
    assert demo.card_summary(model).startswith("**Mixed classifier** (Bai et al.)")
    assert "robust = the robust branch alone" in demo.attack_legend(model)
    with pytest.raises(HPMError, match="no l2 prototypes"):
        demo.angle_report(model)


def test_an_l2_head_is_attacked_directly():
    from conftest import TinyMLP
    torch.manual_seed(0)
    model = hpm.wrap(TinyMLP(), head="ncm")
    torch.nn.init.normal_(model.head.prototypes)
    result = demo.attack_image(model, torch.rand(1, 3, 32, 32), attack="deployed", eps=16 / 255, steps=5)
    assert result.surrogate_fooled is not None and result.linf <= 16 / 255 + 1e-6


def test_shipped_checkpoints_are_listed_and_load_by_name_with_their_facts():
    from conftest import REPO
    from hpm.hub import shipped_checkpoints
    found = shipped_checkpoints()
    assert found["cifar10-resnet18-hpm-clean"] == REPO / "checkpoints" / "cifar10-resnet18-hpm-clean"
    model = hpm.load("cifar10-resnet18-hpm-clean")
    summary = demo.card_summary(model)
    assert "pyautoattack:resnet18" in summary and "**not adversarially trained**" in summary
    assert "Measured:** clean 93.6% (n 1000, batch 256)" in summary
    assert "| clean_accuracy |" in demo.card_metrics(model)


def test_the_card_summary_leads_with_the_lowest_robust_accuracy_at_the_trained_radius_and_its_batch_size():
    from conftest import REPO
    model = hpm.load(REPO / "checkpoints" / "cifar10-resnet20w32-fgsmrs-hpm-full")
    summary = demo.card_summary(model)
    lowest = min(m["value"] for name, m in model.checkpoint_config.metrics.items()
                 if name.startswith("robust_accuracy") and abs(m["eps"] - 8 / 255) < 1e-9)
    assert "adversarially trained for ℓ∞ ε = 8/255" in summary
    assert f"robust {100 * lowest:.1f}% at ε = 8/255 (n " in summary and "batch " in summary
    assert demo.default_eps(model) == pytest.approx(8 / 255)


def test_the_first_visit_starts_with_the_attack_and_radius_measured_to_fool_the_fc_head_on_most_gallery_images():
    """The defaults are the ones ``scripts/first_visit.py`` chose from its measurement on the shipped gallery."""
    from conftest import REPO
    measured = json.loads((REPO / "results" / "app" / "first-visit.json").read_text())
    chosen = measured["chosen"]
    model = hpm.load(REPO / "checkpoints" / demo.DEFAULT_MODEL)
    assert measured["model"] == demo.DEFAULT_MODEL and measured["steps"] == demo.STEPS_DEFAULT
    assert chosen["fc_share"] >= measured["share_wanted"] >= 0.5
    assert demo.default_attack(demo.attack_choices(model)) == chosen["attack"]
    assert demo.default_eps(model) * 255 == pytest.approx(chosen["eps_255"])
    assert str(demo.CONTEXT_DEFAULT) in measured["context"]


def test_the_current_image_is_previewed_enlarged_by_an_integer_factor_and_says_so():
    pixels = (np.arange(32 * 24 * 3) % 251).astype(np.uint8).reshape(24, 32, 3)
    shown, label = demo.preview(pixels)
    assert shown.shape == (192, 256, 3) and np.array_equal(shown[::8, ::8], pixels)
    assert label == "Current image: 32×24 px, shown 8× enlarged (nearest neighbour: one square per pixel)"
    big = np.zeros((400, 300, 3), np.uint8)
    assert demo.preview(big)[0] is big and demo.preview(big)[1] == "Current image: 300×400 px"
    strip = np.zeros((1, 12_000, 3), np.uint8)  # a valid upload: enlarging it 192x would take over a gigabyte
    assert demo.preview(strip)[0] is strip


def test_small_images_are_enlarged_for_display_without_blurring():
    x = torch.rand(1, 3, 32, 32)
    big = images.tensor_to_image(x, min_side=192)
    assert big.shape == (192, 192, 3) and (big[:6, :6] == big[0, 0]).all()
    assert images.tensor_to_image(x).shape == (32, 32, 3)


# --- the same on the command line: hpm predict / hpm attack ----------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An HPM head on a tiny zoo ResNet: a checkpoint that loads by path alone, as users' checkpoints do."""
    from hpm.heads import HPMHead
    from hpm.sources import BackboneSpec
    from hpm.sources.zoo import build, split
    torch.manual_seed(0)
    options = {"depth": 8, "width": 4, "num_classes": 4, "classifier": "fc"}
    features, fc = split(build("cifar_resnet", options))
    model = hpm.HPMClassifier(features, fc, HPMHead(16, 4), backbone_spec=BackboneSpec("hpm", "cifar_resnet", options),
                              classes=["a", "b", "c", "d"], dataset="cifar10").eval()
    x = torch.rand(40, 3, 32, 32)
    model.head.init_prototypes(model.forward_features(x), torch.arange(40) % 4)
    return model.save_pretrained(tmp_path_factory.mktemp("ck") / "tiny-hpm")


def test_hpm_predict_prints_both_heads_top5(tiny_checkpoint, tmp_path, capsys):
    from hpm.cli import main
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(Image.new("RGB", (48, 40), (200, 30, 10))))
    assert main(["predict", str(tiny_checkpoint), str(image)]) == 0
    out = capsys.readouterr().out
    assert "alone (batch of 1)" in out and out.count("%") == 8 and "\nFC: " in out and "\nHPM: " in out


@pytest.mark.parametrize("attack", ["ensemble", "square"])
def test_hpm_attack_writes_the_png_it_judged_and_a_json_of_both_heads(attack, tiny_checkpoint, tmp_path):
    from hpm.cli import main
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))))
    out = tmp_path / "out"
    assert main(["attack", str(tiny_checkpoint), str(image), "--attack", attack, "--eps", "8/255", "--steps", "5",
                 "--out", str(out)]) == 0
    record = json.loads((out / "result.json").read_text())
    assert set(record["clean"]) == set(record["adversarial"]) == {"fc", "deployed"} and record["attack"] == attack
    clean = images.image_to_tensor(images.open_image(image), (3, 32, 32))
    adv = images.image_to_tensor(images.open_image(out / "adversarial.png"), (3, 32, 32))  # lossless: exactly what was judged
    assert (adv - clean).abs().max() <= 8 / 255 + 1e-6 and record["png"]["linf"] <= 8 / 255 + 1e-6
    model = hpm.load(tiny_checkpoint)
    assert record["png"]["predictions"] == demo.classify(model, adv, demo.no_context())


@pytest.mark.parametrize("name", ["text", "decompression_bomb"])
def test_hpm_predict_rejects_bad_images_with_the_apps_message(name, tiny_checkpoint, tmp_path, capsys):
    from hpm.cli import main
    data, message = BAD[name]
    bad = tmp_path / "bad.png"
    bad.write_bytes(data)
    assert main(["predict", str(tiny_checkpoint), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpm: error: ") and message in err and len(err.strip().splitlines()) == 1


def test_the_card_summary_pairs_the_clean_accuracy_with_the_robust_one_when_the_card_has_no_plain_clean_entry():
    model = hpm.load("cifar10-resnet20w32-fgsmrs-20ep-mixed-alpha0.8")
    metrics = model.checkpoint_config.metrics
    assert "clean_accuracy" not in metrics
    clean = metrics["clean_accuracy (n 500, bs 250)"]
    assert f"**Measured:** clean {100 * clean['value']:.1f}% (n 500, batch 250) · robust" in demo.card_summary(model)


def test_an_attack_radius_given_in_pixels_asks_whether_it_meant_a_fraction_of_255(tiny_net):
    model = hpm.wrap(tiny_net, head="hpm")
    with pytest.raises(HPMError, match="did you mean 8/255"):
        demo.check_attack_args("ensemble", 8, 10, model)
    with pytest.raises(HPMError) as refused:
        demo.check_attack_args("ensemble", 200, 10, model)  # 200/255 is beyond the demo's budget too
    assert "did you mean" not in str(refused.value)
