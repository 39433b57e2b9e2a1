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
    out = client.predict(image, MODEL, "fc", 4, 3, 100, False, 8, api_name="/attack")
    adv, pert, heat, fc_clean, hpm_clean, fc_adv, hpm_adv, summary, clean_input = out
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
    adv_path, _, _, _, _, _, hpm_adv, _, clean_path = client.predict(handle_file(str(path)), MODEL, "ensemble", 4, 5,
                                                                     100, False, 8, api_name="/attack")
    with Image.open(adv_path) as downloaded, Image.open(clean_path) as clean_input:
        assert downloaded.format == clean_input.format == "PNG" and downloaded.size == clean_input.size == (32, 32)
        assert np.array_equal(np.asarray(clean_input), np.asarray(Image.open(path).convert("RGB")))
    clean = images.image_to_tensor(images.open_image(path), (3, 32, 32))
    adv = images.image_to_tensor(images.open_image(adv_path), (3, 32, 32))
    assert (adv - clean).abs().max() <= 4 / 255 + 1e-6
    model = hpm.load(MODEL)
    assert demo.classify(model, adv, demo.no_context())["deployed"] == {
        c["label"]: c["confidence"] for c in hpm_adv["confidences"]}


@pytest.mark.parametrize("model_field", ["", "/etc", "../../etc/passwd", "checkpoints", "checkpoints/nope"])
def test_the_model_field_takes_only_shipped_checkpoints_and_hub_ids_and_reveals_no_server_path(client, image,
                                                                                                model_field):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="shipped checkpoint or give a Hugging Face Hub repo id") as failure:
        client.predict(image, model_field, False, 8, api_name="/predict")
    from hpm.hub import shipped_root
    assert str(shipped_root()) not in str(failure.value) and str(shipped_root().parent) not in str(failure.value)


def test_a_hub_id_that_names_a_server_directory_is_looked_up_on_the_hub_only(client, image):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match="cannot reach the Hugging Face Hub to download 'tests/ui'"):
        client.predict(image, "tests/ui", False, 8, api_name="/predict")  # a folder of this repository


def test_out_of_range_settings_come_back_as_errors(client, image):
    from gradio_client.exceptions import AppError
    with pytest.raises(AppError, match=r"ε \(×1/255, ℓ∞\) must be from 0 to 16; got 40"):
        client.predict(image, MODEL, "fc", 40, 3, 100, False, 8, api_name="/attack")


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
    hist, cdf = client.predict(MODEL, api_name="/angle_statistics")
    assert hist and cdf


def test_without_a_data_root_the_api_classifies_inside_a_full_context_batch_and_draws_fig3(app_without_data, image):
    from gradio_client import Client
    url, cache = app_without_data
    bare = Client(url, verbose=False)
    note = bare.predict(image, MODEL, True, 256, api_name="/predict")[2]
    assert "inside a batch with the first 256 cifar10 test images" in note
    hist, cdf = bare.predict(MODEL, api_name="/angle_statistics")
    assert "Angle statistics (300 samples" in str(hist) and "max gap" in str(cdf)
    assert not (cache / "torchvision").exists()  # nothing was downloaded


def _bomb(path):
    """13000 x 13000 pixels in a few hundred kB: 500 MB of RGB once decoded."""
    from PIL import Image
    Image.new("1", (13_000, 13_000)).save(path)
    return path


class PeakRSS:
    """The peak resident memory of this process (the app runs in it) while the block runs, sampled every 5 ms."""

    def __enter__(self):
        import threading

        import psutil
        self.process, self.start, self.peak = psutil.Process(), psutil.Process().memory_info().rss, 0
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        import time
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()

    @property
    def growth_mb(self) -> float:
        return (self.peak - self.start) / 2**20


@pytest.mark.parametrize("endpoint", ["/predict", "/attack"])
def test_an_oversized_image_is_refused_by_the_api_before_it_is_decoded(client, tmp_path, endpoint):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    args = {"/predict": (MODEL, False, 8), "/attack": (MODEL, "fc", 4, 3, 100, False, 8)}[endpoint]
    bomb = handle_file(str(_bomb(tmp_path / "bomb.png")))  # written before measuring: PIL holds it while saving
    with PeakRSS() as memory, pytest.raises(AppError, match="outside the accepted range"):
        client.predict(bomb, *args, api_name=endpoint)
    assert memory.growth_mb < 300


def test_an_oversized_upload_in_the_page_is_refused_before_it_is_decoded(tmp_path):
    """The page's upload handler (the browser test sees its message; here its memory is measured)."""
    import sys

    import gradio as gr
    bomb = str(_bomb(tmp_path / "bomb.png"))
    with PeakRSS() as memory, pytest.raises(gr.Error, match="outside the accepted range"):
        sys.modules["hpm.webapp"].use_upload(bomb)
    assert memory.growth_mb < 300


def test_a_file_over_the_upload_limit_is_refused_by_the_client_and_by_the_server(client, app_url, tmp_path):
    import httpx
    from gradio_client import handle_file
    path = tmp_path / "huge.png"
    path.write_bytes(b"\x89PNG" + b"\0" * (20 * 2**20 + 1))
    with pytest.raises(ValueError, match="exceeds the maximum file size of 20971520 bytes"):
        client.predict(handle_file(str(path)), MODEL, False, 8, api_name="/predict")
    with path.open("rb") as f:  # a client that ignores the advertised limit
        response = httpx.post(f"{app_url}gradio_api/upload", files={"files": ("huge.png", f)}, timeout=60)
    assert response.status_code == 413 and "exceeded maximum allowed size of 20971520 bytes" in response.text


def test_an_animated_gif_is_classified_by_its_first_frame(client, tmp_path):
    from gradio_client import handle_file
    from PIL import Image
    frames = [Image.new("RGB", (40, 40), colour) for colour in ((230, 20, 20), (20, 230, 20), (20, 20, 230))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
    with Image.open(path) as gif:
        gif.convert("RGB").save(tmp_path / "first.png")  # the first frame, as the GIF holds it
    fc, deployed, note = client.predict(handle_file(str(path)), MODEL, False, 8, api_name="/predict")
    first = client.predict(handle_file(str(tmp_path / "first.png")), MODEL, False, 8, api_name="/predict")
    assert (fc, deployed) == first[:2] and "alone" in note


@pytest.mark.parametrize("field, value, message", [
    ("eps", None, "must be a number from 0 to 16; got None"), ("eps", "a lot", "got 'a lot'"),
    ("steps", 2.5, "APGD steps must be a whole number; got 2.5"),
    ("queries", None, "Square queries must be a whole number from 1 to 5000; got None"),
    ("context", "64", "Context size N .* got '64'")])
def test_bad_numeric_settings_get_a_message_naming_the_setting(client, image, field, value, message):
    from gradio_client.exceptions import AppError
    settings = {"eps": 4, "steps": 3, "queries": 100, "context": 8, field: value}
    with pytest.raises(AppError, match=message):
        client.predict(image, MODEL, "fc", settings["eps"], settings["steps"], settings["queries"], True,
                       settings["context"], api_name="/attack")


def test_nan_which_gradio_client_cannot_send_but_raw_json_can_gets_the_same_message():
    import sys

    import gradio as gr
    with pytest.raises(gr.Error, match="must be a number from 0 to 16; got nan"):
        sys.modules["hpm.webapp"].eps.preprocess(float("nan"))


def test_api_clients_see_integer_types_an_optional_hub_id_and_a_name_for_every_output(client):
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    params = {p["parameter_name"]: p["type"]["type"] for p in api["/attack"]["parameters"]}
    assert params["steps"] == params["queries"] == params["context_n"] == "integer" and params["eps_255"] == "number"
    hub_id, = (p for p in api["/load_model"]["parameters"] if p["parameter_name"] == "hub_id")
    assert hub_id["parameter_has_default"] and hub_id["parameter_default"] == ""
    for endpoint in api.values():  # every output has a name (Gradio calls unnamed ones value_N)
        assert all(r["label"] and not r["label"].startswith("value_") for r in endpoint["returns"])


def test_sixteen_concurrent_clients_mixing_apgd_and_square_get_their_solo_results(app_url, tmp_path):
    """Every request is a pure function of its inputs: attacks seed their own run, alone, so visitors at the
    same time do not change each other's random starts or Square's random squares."""
    import numpy as np
    from gradio_client import Client, handle_file
    from PIL import Image
    paths = []
    for i in range(4):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        paths.append(handle_file(str(path)))
    jobs = [(paths[i % 4], "square" if i % 2 else "ensemble") for i in range(16)]

    def run(client, job):
        image, attack = job
        return client.submit(image, MODEL, attack, 8, 4, 60, False, 8, api_name="/attack")

    solo_client = Client(app_url, verbose=False)
    solo = [run(solo_client, job).result() for job in jobs]
    clients = [Client(app_url, verbose=False) for _ in jobs]
    together = [job.result() for job in [run(c, j) for c, j in zip(clients, jobs)]]
    for alone, crowd in zip(solo, together):
        assert alone[5:8] == crowd[5:8]  # adversarial top-5 of both heads, and the summary
        assert Image.open(alone[0]).tobytes() == Image.open(crowd[0]).tobytes()  # the adversarial image itself


def test_an_image_removed_by_the_cache_clean_up_gets_a_message_without_the_server_path(tmp_path):
    import sys

    import gradio as gr
    gone = str(tmp_path / "gradio-cache" / "upload.png")
    with pytest.raises(gr.Error, match="no longer on the server") as failure:
        sys.modules["hpm.webapp"].predict(gone, MODEL, False, 8)
    assert str(tmp_path) not in str(failure.value)


def test_the_hub_field_loads_a_checkpoint_from_the_hub_cache_at_a_pinned_revision(client, image, tmp_path,
                                                                                   monkeypatch):
    import hpm
    from hub_cache import write_hub_cache
    main, v1 = tmp_path / "main", tmp_path / "v1"
    hpm.wrap("pyautoattack", head="hpm").save_pretrained(main)
    hpm.wrap("pyautoattack", head="ncm").save_pretrained(v1)
    write_hub_cache(tmp_path / "hub", "someone/hpm-app-demo", {"1" * 40: v1, "2" * 40: main},
                    {"main": "2" * 40, "v1": "1" * 40})
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))  # the app runs in-process
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    for hub_id, head in [("someone/hpm-app-demo", "HPM"), ("someone/hpm-app-demo@v1", "l2 (NCM)")]:
        loaded, card, *_ = client.predict("cifar10-resnet18-hpm-clean", hub_id, api_name="/load_model")
        assert loaded == hub_id and f"**head:** {head}" in card
        fc, deployed, note = client.predict(image, hub_id, False, 8, api_name="/predict")
        assert len(deployed["confidences"]) == 5 and "alone" in note


def test_an_imagenet_checkpoint_classifies_and_attacks_an_imagenet_photo(client, imagenet_hub_id, tmp_path):
    import numpy as np
    from gradio_client import handle_file
    from PIL import Image

    from pathlib import Path

    from hpm import interactive as demo
    from hpm.data import dataset_classes
    import sys
    data = sys.modules["hpm.webapp"].DATA  # the data root the app was started with
    samples = sorted((Path(data) / "imagenet-samples").glob("*.jpg")) if data else []
    photo = samples[0] if samples else tmp_path / "photo.jpg"
    if not samples:
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(photo)
    loaded, card, metrics, eps, *_ = client.predict("cifar10-resnet18-hpm-clean", imagenet_hub_id,
                                                    api_name="/load_model")
    assert "Knows the 1000 imagenet classes" in card and "224×224" in card and "not adversarially trained" in card
    assert eps == 255 * demo.UNTRAINED_EPS  # not adversarially trained (the model records no radius): a small one
    names = set(dataset_classes("imagenet"))
    fc, deployed, _ = client.predict(handle_file(str(photo)), imagenet_hub_id, False, 8, api_name="/predict")
    assert len(fc["confidences"]) == 5 and {c["label"] for c in fc["confidences"]} <= names
    adv, *_, summary, _ = client.predict(handle_file(str(photo)), imagenet_hub_id, "deployed", 4, 2, 10, False, 8,
                                         api_name="/attack")
    with Image.open(adv) as image:
        assert image.size == (224, 224)
    assert "ε = 4/255" in summary


def test_a_file_that_is_not_an_image_gets_the_decoders_message_as_the_app_is_launched_for_users(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError
    path = tmp_path / "notes.png"
    path.write_text("this is text, not a PNG")
    with pytest.raises(AppError, match="not an image file that can be read"):
        client.predict(handle_file(str(path)), MODEL, False, 8, api_name="/predict")


def test_a_shipped_mixed_classifier_shows_its_robust_branch_beside_the_mixture_and_attacks_each_branch(client, image):
    mixed = "checkpoints/cifar10-resnet20w32-fgsmrs-20ep-mixed-alpha0.8"
    loaded, card, _, eps, *_ = client.predict("cifar10-resnet20w32-fgsmrs-20ep-mixed-alpha0.8", "",
                                              api_name="/load_model")
    assert loaded == mixed and card.startswith("**Mixed classifier** (Bai et al.)") and eps == 8
    reference, mixture = client.predict(image, mixed, False, 8, api_name="/predict")[:2]
    assert len(reference["confidences"]) == 5 and len(mixture["confidences"]) == 5
    *_, summary, _ = client.predict(image, mixed, "standard", 4, 2, 10, False, 8, api_name="/attack")
    assert "APGD-CE on the standard branch alone (transfer to the mixture)" in summary
    assert "deployed mixture (α = 0.8) fooled" in summary


def test_a_shipped_adaptive_mixture_shows_the_alpha_its_mixing_network_gives_the_clean_and_the_adversarial_image(
        client, image):
    adaptive = "checkpoints/cifar10-resnet20w32-fgsmrs-20ep-mixed-adaptive"
    loaded, card, *_ = client.predict("cifar10-resnet20w32-fgsmrs-20ep-mixed-adaptive", "", api_name="/load_model")
    assert loaded == adaptive and card.startswith("**Mixed classifier** (Bai et al.)")
    note = client.predict(image, adaptive, False, 8, api_name="/predict")[2]
    assert "The mixing network weighs the robust branch α(x) = 0." in note
    *_, summary, _ = client.predict(image, adaptive, "lowest-alpha", 4, 2, 10, False, 8, api_name="/attack")
    assert "the mixture at its lowest alpha" in summary
    assert "The mixing network's weight on the robust branch, α(x): clean **0." in summary


def test_the_shipped_mixednuts_says_which_branch_decided_before_and_after_its_adaptive_attack(client, image):
    nuts = "checkpoints/cifar10-preactresnet18-fgsmrs-15ep-mixednuts"
    loaded, card, _, eps, *_ = client.predict("cifar10-preactresnet18-fgsmrs-15ep-mixednuts", "",
                                              api_name="/load_model")
    assert loaded == nuts and card.startswith("**MixedNUTS** (Bai et al., training-free)") and eps == 8
    reference, mixture, note = client.predict(image, nuts, False, 8, api_name="/predict")[:3]
    assert len(reference["confidences"]) == 5 and len(mixture["confidences"]) == 5
    assert "The mixture predicts " in note and "against the cutoff (1 − α)/α = " in note
    *_, summary, _ = client.predict(image, nuts, "adaptive", 4, 2, 10, False, 8, api_name="/attack")
    assert "MixedNUTS' adaptive attack" in summary and "On the adversarial image: The mixture predicts " in summary


def test_one_session_calls_every_kind_of_shipped_model_in_alternating_order_and_each_call_answers_for_its_model(
        client, image):
    """The API is a function of its arguments: which model this session loaded last (whose attacks the page's
    radio offers) never decides whether an attack is accepted; only the model named in the call does."""
    from gradio_client.exceptions import AppError
    hpm_model, ncm = MODEL, "checkpoints/cifar10-resnet18-ncm"
    mixture = "checkpoints/cifar10-resnet20w32-fgsmrs-20ep-mixed-alpha0.8"
    calls = [(mixture, "deployed"), (hpm_model, "ensemble"), (ncm, "fc"), (mixture, "robust"), (hpm_model, "bpda"),
             (ncm, "deployed"), (mixture, "square"), (hpm_model, "soft")]
    for load in ("cifar10-resnet20w32-fgsmrs-20ep-mixed-alpha0.8", "cifar10-resnet18-hpm-clean"):
        client.predict(load, "", api_name="/load_model")  # the session's radio now offers this model's attacks
        for model, attack in calls:
            *_, summary, _ = client.predict(image, model, attack, 2, 2, 10, False, 8, api_name="/attack")
            assert "fooled" in summary, (load, model, attack)
            fc, deployed, note = client.predict(image, model, False, 8, api_name="/predict")
            assert len(fc["confidences"]) == 5 and len(deployed["confidences"]) == 5 and "alone" in note
    with pytest.raises(AppError, match=r"the attack 'ensemble' does not apply to checkpoints/cifar10-resnet20w32-"
                                       r"fgsmrs-20ep-mixed-alpha0.8 \(mixture \(α = 0.8\)\): it accepts deployed, "
                                       r"standard, robust, square"):
        client.predict(image, mixture, "ensemble", 2, 2, 10, False, 8, api_name="/attack")
    with pytest.raises(AppError, match=r"'pgd' does not apply to .* \(no attack of that name exists\): it accepts "
                                       r"fc, soft, ensemble, bpda, square"):
        client.predict(image, hpm_model, "pgd", 2, 2, 10, False, 8, api_name="/attack")


def test_a_visitor_whose_session_the_server_dropped_loses_nothing(app_url, client, image):
    """The server keeps Gradio's per-session copies of the page for its last SESSIONS_KEPT sessions (so that memory
    stays flat over weeks); a visitor who comes back after more sessions than that gets the same answers as
    before."""
    from gradio_client import Client
    from hpm import webapp
    visitor = Client(app_url, verbose=False)
    visitor.predict("cifar10-resnet20w32-fgsmrs-20ep-mixed-alpha0.8", "", api_name="/load_model")
    before = visitor.predict(image, MODEL, False, 8, api_name="/predict")
    for _ in range(webapp.SESSIONS_KEPT + 1):
        Client(app_url, verbose=False).predict(image, MODEL, False, 8, api_name="/predict")
    assert visitor.session_hash not in webapp.app.state_holder.session_data
    assert len(webapp.app.state_holder.session_data) <= webapp.SESSIONS_KEPT
    assert visitor.predict(image, MODEL, False, 8, api_name="/predict") == before
    *_, summary, _ = visitor.predict(image, MODEL, "ensemble", 2, 2, 10, False, 8, api_name="/attack")
    assert "fooled" in summary


def test_a_session_waiting_for_an_answer_keeps_its_messages_however_many_sessions_come_after(app_url, image):
    """The server keeps the message queues of its last MESSAGE_QUEUES_KEPT idle sessions, and always those of the
    sessions with a request queued or running: here with room for 2 idle ones, 3 new visitors come and go while
    one attack runs, and the attack's answer still arrives."""
    import time

    from gradio_client import Client
    from hpm import webapp
    queues = webapp.app._queue.pending_messages_per_session
    assert isinstance(queues, webapp._SessionQueues) and queues.max_size == webapp.MESSAGE_QUEUES_KEPT
    queues.max_size = 2
    try:
        visitor = Client(app_url, verbose=False)
        job = visitor.submit(image, MODEL, "ensemble", 2, 200, 10, False, 8, api_name="/attack")
        while visitor.session_hash not in queues:
            time.sleep(0.05)
        for _ in range(3):
            Client(app_url, verbose=False).predict(image, MODEL, False, 8, api_name="/predict")
        assert not job.done()  # the attack was still running while the others came and went
        assert len([s for s in queues if s != visitor.session_hash]) <= 2
        *_, summary, _ = job.result()
        assert "fooled" in summary
    finally:
        queues.max_size = webapp.MESSAGE_QUEUES_KEPT
