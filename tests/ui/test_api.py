"""The app's named API endpoints, called through gradio_client."""
import pytest

pytestmark = pytest.mark.ui

MODEL = "checkpoints/cifar10-resnet18-hpm-clean"


@pytest.fixture(scope="module")
def client(app_url):
    from gradio_client import Client
    return Client(app_url, verbose=False)


@pytest.fixture
def image(tmp_path):
    from PIL import Image
    path = tmp_path / "input.png"
    Image.new("RGB", (48, 40), (200, 30, 30)).save(path)
    from gradio_client import handle_file
    return handle_file(str(path))


def test_api_lists_the_named_endpoints(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/predict", "/attack", "/load_model", "/isotropic_cdf", "/angle_statistics"} <= names


def test_predict_alone_and_in_context(client, image):
    from conftest import REPO  # noqa: F401  (tests/ui is importable beside tests/)
    fc, hpm_alone, note = client.predict(image, MODEL, False, 16, api_name="/predict")
    assert "alone" in note and len(fc["confidences"]) == 5 and len(hpm_alone["confidences"]) == 5


def test_attack_returns_images_labels_and_a_verdict(client, image):
    out = client.predict(image, MODEL, "fc", 4, 3, False, 8, api_name="/attack")
    adv, pert, heat, fc_clean, hpm_clean, fc_adv, hpm_adv, summary = out
    assert adv and pert and "deployed HPM fooled" in summary and "ε = 4/255" in summary
    assert fc_adv["label"] and hpm_adv["label"]


def test_the_adversarial_image_a_client_downloads_is_the_one_the_app_judged(client, tmp_path):
    """Lossless both ways: the PNG that comes back is at the model's input size, within eps of the clean input
    and classified, by the same model alone, exactly as the app reported."""
    import numpy as np
    from gradio_client import handle_file
    from PIL import Image

    import hpm
    from hpm import images
    from hpm import interactive as demo
    path = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    adv_path, _, _, _, _, _, hpm_adv, _ = client.predict(handle_file(str(path)), MODEL, "ensemble", 4, 5, False, 8,
                                                         api_name="/attack")
    with Image.open(adv_path) as downloaded:
        assert downloaded.format == "PNG" and downloaded.size == (32, 32)
    clean = images.image_to_tensor(images.open_image(path), (3, 32, 32))
    adv = images.image_to_tensor(images.open_image(adv_path), (3, 32, 32))
    assert (adv - clean).abs().max() <= 4 / 255 + 1e-6
    model = hpm.load(MODEL)
    assert demo.classify(model, adv, demo.no_context())["deployed"] == {
        c["label"]: c["confidence"] for c in hpm_adv["confidences"]}


@pytest.mark.parametrize("model_field", ["", "/etc", "../../etc/passwd", "checkpoints", "checkpoints/nope"])
def test_the_model_field_takes_only_shipped_checkpoints_and_hub_ids_and_reveals_no_server_path(client, image,
                                                                                                model_field):
    import sys
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="shipped checkpoint or give a Hugging Face Hub repo id") as failure:
        client.predict(image, model_field, False, 8, api_name="/predict")
    assert sys.modules["app"].APP_DIR not in str(failure.value)


def test_a_hub_id_that_names_a_server_directory_is_looked_up_on_the_hub_only(client, image):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="cannot reach the Hugging Face Hub to download 'tests/ui'"):
        client.predict(image, "tests/ui", False, 8, api_name="/predict")  # a folder of this repository


def test_out_of_range_settings_come_back_as_errors(client, image):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="maximum"):
        client.predict(image, MODEL, "fc", 40, 3, False, 8, api_name="/attack")


def test_unknown_hub_model_fails_fast_with_a_message(client, image):
    import time
    from gradio_client.exceptions import AppError
    start = time.monotonic()
    with pytest.raises(AppError, match="local checkpoint directory"):
        client.predict(image, "nobody/no-such-hpm-model", False, 8, api_name="/predict")
    assert time.monotonic() - start < 15


def test_concurrent_visitors_do_not_share_batches(client, tmp_path):
    """Requests in flight together give exactly what each gives alone: no image joins another's batch."""
    from gradio_client import handle_file
    from PIL import Image
    paths = []
    for i, colour in enumerate([(250, 250, 250), (10, 10, 10), (20, 200, 40)]):
        path = tmp_path / f"im{i}.png"
        Image.new("RGB", (32, 32), colour).save(path)
        paths.append(handle_file(str(path)))
    sequential = [client.predict(p, MODEL, True, 32, api_name="/predict")[1] for p in paths]
    jobs = [client.submit(p, MODEL, True, 32, api_name="/predict") for p in paths]
    concurrent = [job.result()[1] for job in jobs]
    assert concurrent == sequential


def test_angle_statistics_endpoint_draws_fig3(client):
    import sys
    if not sys.modules["app"].DATA:  # the data root the app was started with
        pytest.skip("needs the local data root")
    hist, cdf = client.predict(MODEL, api_name="/angle_statistics")
    assert hist and cdf
