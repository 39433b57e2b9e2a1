"""The web demo: attack FC vs HPM live, see batch dependence and the sensitivity analysis (Gradio Blocks).

Started by ``python app.py`` in a clone (also the Hugging Face Space's app file) or ``hpm app`` after a pip
install. All science lives in the rest of the library (:mod:`hpm.interactive` above all); this module only lays
it out. Importing it builds the app: ``gradio`` must be installed (``pip install "hybrid-prototype-mixing[app]"``).
"""
from __future__ import annotations

import functools
import os
import tempfile
import time
import warnings
from collections import OrderedDict

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Gradio's queue keeps a record of its last N events and summarises all of them (a pandas table) after each event;
# its default N of 10,000 costs memory that grows with the first 10,000 requests and time on every request
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "200")

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from . import interactive as demo  # noqa: E402
from .checkpoint import is_withheld  # noqa: E402
from .devices import best_available, set_tf32  # noqa: E402
from .errors import HPMError  # noqa: E402
from .hub import download_checkpoint, is_repo_id, shipped_checkpoints, split_revision  # noqa: E402
from .images import MAX_UPLOAD_BYTES, image_to_tensor, open_image, tensor_to_image  # noqa: E402
from .memory import limit_arenas, trim_every, unmap_above  # noqa: E402
from .model import HPMClassifier  # noqa: E402
from .plots import (angle_histogram_figure, cdf_comparison_figure, isotropic_cdf_figure,  # noqa: E402
                    perturbation_heatmap)
from .samples import samples_root  # noqa: E402

# the server runs PyTorch in Gradio's worker threads for weeks: cap glibc's per-thread arenas, give tensors mappings
# of their own and hand free pages back to the system every few seconds, so that resident memory stays flat
TRIM_SECONDS = 5.0
limit_arenas(2)
unmap_above(128 * 1024)
trim_every(TRIM_SECONDS)

DEVICE = str(best_available())
set_tf32(False)  # verdicts in plain float32, as evaluations judge (process-wide: every request shares it)
# name -> directory: the repository's checkpoints/, or the installed package's less those whose weights it leaves out
SHIPPED = {name: directory for name, directory in shipped_checkpoints().items() if not is_withheld(directory)}
CHECKPOINTS = {name: f"checkpoints/{name}" for name in SHIPPED}  # menu name -> model id
DEFAULT_MODEL = CHECKPOINTS.get(os.environ.get("HPM_DEFAULT_MODEL", demo.DEFAULT_MODEL),
                                next(iter(CHECKPOINTS.values()), None))
# test images for the gallery, the context batch and Fig. 3: the data root if one is given, else the sample set
# shipped with hpm (a Space or a pip install has no data root, and nothing is downloaded for them)
SAMPLES = samples_root()
DATA = os.environ.get("HPM_DATA_DIR") or (str(SAMPLES) if SAMPLES else None)
CACHE_HOURS = 6  # uploads and the images the app returns are deleted from the server after this long
HUB_RECHECK_SECONDS = 600  # how often a Hub id (a branch may move) is looked up again
# Gradio keeps a copy of the page's configuration for each session (about 0.1 MB, plus the last value of every
# output, figures among them), by default for the last 10,000 visitors. No endpoint of this app reads a session's
# copy (each answers from its arguments), so a visitor whose copy was dropped loses nothing: the app keeps the
# copies of as many sessions as its queue holds requests. Gradio also keeps a message queue for each session, needed
# while the session has a request queued or running (those are always kept); the app keeps those of its last 512
# idle sessions besides (_SessionQueues)
QUEUE_SIZE, CONCURRENCY = 32, 2
SESSIONS_KEPT = QUEUE_SIZE
MESSAGE_QUEUES_KEPT = 512
# HPM on the project's strongest robust backbone (a PreAct ResNet-18, FGSM-RS, 15 epochs), fine-tuned with the
# paper's full IKL recipe: the HPM checkpoint shipped for a robust comparison (its card holds its measured numbers)
ROBUST_HPM = "cifar10-preactresnet18-fgsmrs-15ep-hpm-full"

try:  # ZeroGPU Spaces: run attacks on the GPU when the `spaces` package is present
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn):
        return fn


def _user_errors(fn):
    """Show library errors (bad uploads, offline Hub, bad settings) as messages, not tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HPMError as e:
            raise gr.Error(str(e)) from None
    return wrapper


def _source(model_id: str) -> str:
    """What to load for a model field: a shipped checkpoint (``checkpoints/NAME``) or a Hub repo id
    ``owner/name``, optionally pinned to a revision (``owner/name@REVISION``: a branch, tag or commit).
    Anything else is refused without saying anything about the server's files."""
    if model_id in CHECKPOINTS.values():
        return str(SHIPPED[model_id.removeprefix("checkpoints/")])
    repo_id, revision = split_revision(model_id)
    if is_repo_id(repo_id) and not repo_id.startswith("checkpoints/"):
        return _hub_snapshot(repo_id, revision, int(time.time() // HUB_RECHECK_SECONDS))
    raise HPMError("choose a shipped checkpoint or give a Hugging Face Hub repo id of the form owner/name")


@functools.lru_cache(maxsize=8)
def _hub_snapshot(repo_id: str, revision: str | None, period: int) -> str:
    """The downloaded (or cached) snapshot of a Hub repo at a revision, never a server path of that name. Looked
    up once per ``period`` (a branch may move on the Hub; a model loaded from a snapshot stays cached by path)."""
    return str(download_checkpoint(repo_id, revision=revision))


def _model(model_id: str):
    """The model of a model field, loaded once. Errors name the model field, never the server's copy of it."""
    source = _source(model_id)
    try:
        return demo.load_cached(source, DEVICE)
    except HPMError as e:
        raise HPMError(str(e).replace(source, model_id)) from None


def _png(image: np.ndarray, stem: str) -> str:
    """``image`` as a PNG file of its own, for an image output. Gradio writes arrays of equal content to one shared
    cache file, in place, so two requests returning the same image at once could serve it half-written; a file
    returned by path is not rewritten. It lies in Gradio's cache folder, which ``delete_cache`` cleans."""
    folder = os.path.join(gr.utils.get_upload_folder(), "hpm-outputs")
    os.makedirs(folder, exist_ok=True)
    with tempfile.NamedTemporaryFile(prefix=f"{stem}-", suffix=".png", dir=folder, delete=False) as file:
        Image.fromarray(image).save(file, format="PNG")
    return file.name


def _dataset(model) -> str:
    return model.dataset or "cifar10"


@functools.lru_cache(maxsize=8)
def _missing_samples(dataset: str) -> str:
    """Empty when this server has test images of ``dataset`` (a data root or the shipped samples, else a download
    when online); otherwise what that means, written for a web visitor."""
    try:
        demo.gallery_samples(dataset, demo.GALLERY_SIZE, DATA)
    except HPMError:
        return (f"This server has no {dataset} test images, so the sample gallery and the context batch are off: "
                "upload an image of your own to classify and attack it.")
    return ""


def _context_shown(model) -> bool:
    """Whether the context controls are shown (and the box ticked): for a batch-dependent head when test images
    exist."""
    return demo.batch_dependent(model) and not _missing_samples(_dataset(model))


def _eps_255(model) -> float:
    """The ε slider's value for a model, on first paint and on every load: its default radius, ×1/255."""
    return round(demo.default_eps(model) * 255, 2)


def _context(model_id: str, use_context: bool, n: int) -> demo.Context:
    if not use_context:
        return demo.no_context()
    dataset = _dataset(_model(model_id))
    if _missing_samples(dataset):
        raise HPMError(f"a context batch needs {dataset} test images, which this server does not have: classify "
                       "the image alone (untick the context box; API: use_context=false)")
    return demo.dataset_context(_source(model_id), int(n), DEVICE, DATA)


def _decoded(path: str | None, missing: str) -> Image.Image:
    """An image file of this app (an upload, a gallery sample), decoded by the one guarded path every entry point
    shares: limits checked on the file and its header before any pixel is decoded."""
    if path is None:
        raise HPMError(missing)
    if not os.path.isfile(path):  # removed by the upload cache's clean-up; the server path is not shown
        raise HPMError(f"the image is no longer on the server (files are kept for {CACHE_HOURS} h): upload it "
                       "or pick it again")
    return open_image(path)


def _image_tensor(path: str | None, model) -> torch.Tensor:
    """The current image at the model's input size."""
    return image_to_tensor(_decoded(path, "choose an image first: upload one or click a gallery sample"),
                           model.input_size)


def _checked(slider: gr.Slider, *, integer: bool = False) -> gr.Slider:
    """``slider`` with its value, from the page or an API client, checked before Gradio's own range check, so that
    null, text, NaN and fractional counts get a message naming the setting. (The check wraps the instance's
    ``preprocess``: a subclass of a Gradio component would make Gradio write a stub file beside this module.)"""
    gradio_preprocess = slider.preprocess

    def preprocess(payload):
        try:
            value = demo.setting(payload, slider.label, slider.minimum, slider.maximum, integer=integer)
        except HPMError as e:
            raise gr.Error(str(e)) from None
        return gradio_preprocess(value)

    slider.preprocess = preprocess
    return slider


class _SessionQueues(OrderedDict):
    """Gradio's per-session message queues (its queue's ``pending_messages_per_session``), at most ``max_size``
    besides those of sessions with a request queued or running. Gradio's own store drops the oldest session's
    queue beyond 2,000, even while that session waits for an answer; this one drops only idle sessions' queues (and
    their empty sets of pending requests), the oldest first. A session whose queue was dropped gets a new one with
    its next request, as on its first."""

    def __init__(self, pending: dict[str, set], max_size: int):
        super().__init__()
        self.pending, self.max_size = pending, max_size  # pending: Gradio's session -> ids of its requests

    def __setitem__(self, session: str, queue) -> None:
        if session not in self and len(self) >= self.max_size:
            idle = [s for s in self if not self.pending.get(s)]
            for s in idle[:max(0, len(self) + 1 - self.max_size)]:
                del self[s]
                self.pending.pop(s, None)
        super().__setitem__(session, queue)


def _keep_message_queues(blocks: gr.Blocks, n: int) -> bool:
    """Give Gradio's queue a :class:`_SessionQueues` of ``n`` idle sessions; True when it applied. Another Gradio
    version may keep its queues elsewhere: then a warning, and its own bound holds."""
    queue = getattr(blocks, "_queue", None)
    queues, pending = (getattr(queue, name, None) for name in ("pending_messages_per_session",
                                                               "pending_event_ids_session"))
    if not (isinstance(queues, dict) and isinstance(pending, dict)):
        warnings.warn(f"this Gradio version ({gr.__version__}) keeps its per-session message queues where hpm does "
                      "not look; they stay bounded by Gradio's own limit", RuntimeWarning, stacklevel=2)
        return False
    queue.pending_messages_per_session = kept = _SessionQueues(pending, n)
    kept.update(queues)
    return True


@_user_errors
def load_model(choice: str, hub_id: str):
    """Load a shipped checkpoint or a Hub repo id; returns the model id, its card (summary and all metrics), the
    radius it was trained for, the attacks that apply to it, the four output panels named for it (the reference
    view: an FC head or a mixture's robust branch; the deployed model's panels hidden when the deployed head is
    the FC layer, whose panels are already shown) and the context controls (shown only for a batch-dependent
    head, and only when the server has test images to build the context from).

    Only the page's own controls change here (the attack radio, the panels, the context column): the inputs of
    the API endpoints are never replaced by a session's copy, so /predict and /attack answer for the model named
    in each call, whatever the client loaded before."""
    model_id = hub_id.strip() or CHECKPOINTS.get(choice, choice)
    model = _model(model_id)
    choices = demo.attack_choices(model)
    reference, deployed = demo.panel_labels(model)
    separate = not demo.deployed_is_reference(model)
    shown = _context_shown(model)
    return (model_id, demo.card_summary(model), demo.card_metrics(model), _eps_255(model),
            gr.Radio(choices=choices, value=demo.default_attack(choices),
                     info=ATTACK_INFO if isinstance(model, HPMClassifier) else demo.attack_legend(model)),
            gr.Label(label=f"{reference}, clean"), gr.Label(label=f"{reference}, adversarial"),
            gr.Label(label=f"{deployed}, clean", visible=separate),
            gr.Label(label=f"{deployed}, adversarial", visible=separate),
            shown, gr.Column(visible=shown))


def _preview(path: str | None, missing: str) -> gr.Image:
    """The preview of an image file: its decoded pixels, enlarged without smoothing, labelled with its size."""
    pixels, label = demo.preview(np.asarray(_decoded(path, missing)))
    return gr.Image(_png(pixels, "current"), label=label, format="png")


@_user_errors
def use_upload(path: str | None) -> tuple[gr.Image, str]:
    """Make an uploaded file the current image (any format PIL reads; bad files get a message): the decoded
    pixels to show, and the file itself, which Classify and Run attack decode again by the same path."""
    return _preview(path, "no file received"), path


def gallery_items(model_id: str | None):
    """The loaded model's test samples for the gallery, or, when the server has none, the gallery hidden and a
    note saying so."""
    if model_id is None:
        return gr.Gallery(visible=False), "No model."
    dataset = _dataset(_model(model_id))
    if missing := _missing_samples(dataset):
        return gr.Gallery(visible=False), missing
    x, y, classes = demo.gallery_samples(dataset, demo.GALLERY_SIZE, DATA)
    return gr.Gallery([(tensor_to_image(img), classes[int(label)]) for img, label in zip(x, y)], visible=True), ""


@_user_errors
def use_gallery(evt: gr.SelectData) -> tuple[gr.Image, str]:
    """Make a gallery sample the current image: the lossless PNG the gallery shows, as file and as preview."""
    path = evt.value["image"]["path"]
    return _preview(path, "no sample received"), path


@_user_errors
def predict(image: str | None, model_id: str, use_context: bool, context_n: int):
    """Top-5 of the reference view (FC head, or a mixture's robust branch) and of the deployed model for the current
    image, alone or inside the context batch."""
    model = _model(model_id)
    context = _context(model_id, use_context, context_n)
    x = _image_tensor(image, model).to(DEVICE)
    out = demo.classify(model, x, context)
    alpha = demo.adaptive_alpha(model, x)
    mixing = "" if alpha is None else f" The mixing network weighs the robust branch α(x) = {alpha:.3f}."
    decision = demo.nuts_decision(model, x)
    mixing += f" {decision}" if decision else ""
    return out["fc"], out["deployed"], f"Classified {context.description}.{mixing}"


@gpu
@_user_errors
def attack(image: str | None, model_id: str, attack_name: str, eps_255: float, steps: int, queries: int,
           use_context: bool, context_n: int, progress=gr.Progress()):
    """Run one attack and show clean vs adversarial predictions of both views (Square spends ``queries``, the
    white-box attacks ``steps``), the adversarial image beside the clean model input, at the same size."""
    model = _model(model_id)
    demo.check_attack_name(attack_name, model, model_id)
    deployed = demo.panel_labels(model)[1]
    context = _context(model_id, use_context, context_n)
    progress(0, desc=demo.attack_description(model, attack_name))
    budget = queries if attack_name == "square" else steps
    result = demo.attack_image(model, _image_tensor(image, model), attack=attack_name, eps=eps_255 / 255,
                               steps=budget, context=context,
                               on_step=lambda done, total: progress(done / total, desc=f"step {done}/{total}"))
    amplified, magnitude = demo.perturbation_views(result)
    heat = perturbation_heatmap(magnitude, result.eps)
    verdict = {True: "yes", False: "no", None: "n/a (black-box attack)"}
    unit = "queries" if attack_name == "square" else "steps"
    summary = (f"**{demo.attack_description(model, attack_name)}**, ε = {eps_255:g}/255, {budget} {unit}, "
               f"classified {context.description}.\n\n"
               f"‖δ‖∞ = {result.linf * 255:.2f}/255 · ‖δ‖₂ = {result.l2:.3f} · attacked label: "
               f"**{model.classes[result.label]}** (the deployed model's clean prediction)\n\n"
               f"Surrogate (the model the attack followed) fooled: **{verdict[result.surrogate_fooled]}** · "
               f"deployed {deployed} fooled: "
               f"**{verdict[result.deployed_fooled]}** · transferred to {deployed}: "
               f"**{verdict[result.transferred]}**")
    if (decision := demo.nuts_decision(model, result.x_adv)) is not None:
        summary += f"\n\nOn the adversarial image: {decision}"
    if result.alpha is not None:
        summary += ("\n\nThe mixing network's weight on the robust branch, α(x): clean **{:.3f}** → adversarial "
                    "**{:.3f}**".format(*result.alpha))
    return (_png(tensor_to_image(result.x_adv), "adversarial"), _png(amplified, "perturbation"), heat,
            result.clean["fc"], result.clean["deployed"],
            result.adversarial["fc"], result.adversarial["deployed"], summary,
            _png(tensor_to_image(result.x), "clean-input"))


_ANGLE_REPORTS: dict[str, object] = {}  # model id -> its Fig. 3 statistics, measured once (the last few models)


@_user_errors
def angle_plots(model_id: str, progress=gr.Progress()):
    """Fig. 3 for the loaded model: angles of test features (the first 1000 of a data root, or the shipped samples)
    to its FC vectors and its l2 prototypes (measured on the first click for a model, then kept)."""
    report = _ANGLE_REPORTS.get(model_id)
    if report is None:
        model = _model(model_id)
        if missing := _missing_samples(_dataset(model)):
            raise HPMError(f"Fig. 3 is measured on test images. {missing}")
        report = demo.angle_report(model, DATA, on_step=lambda done, total: progress(
            done / total, desc=f"features of {done}/{total} test images"))
        _ANGLE_REPORTS[model_id] = report
        for old in list(_ANGLE_REPORTS)[:-4]:  # the four measured last stay
            _ANGLE_REPORTS.pop(old, None)
    return angle_histogram_figure(report), cdf_comparison_figure(report)


def isotropic_plot(dims: list[str]):
    """Fig. 2 for the ticked feature dimensions (512 when none is ticked)."""
    return isotropic_cdf_figure([int(d) for d in dims] or [512])


INTRO = """
**What this does:** attacks an image with AutoAttack's own APGD or Square and shows how a model's FC head and its
HPM head (the paper's l2 re-classifier) classify it before and after. **Try this first:** (1) click a test sample
in the gallery (or upload an image); (2) press **Run attack** with the defaults; (3) compare the four panels, then
load the robust comparison checkpoint from the menu and attack the same image again.
"""
ATTACK_INFO = ("what the white-box APGD attack follows: fc = the FC head (an oracle of HPM's prediction) · "
               "soft = HPM made differentiable · ensemble = both at once (the paper's Mixed Surrogate Attack) · "
               "bpda = straight through HPM's own hard choice · deployed = the model itself · "
               "square = black box, scores only")

CONTEXT_INFO = ("this head's prediction depends on the other images in its batch: ticked, your image is classified "
                "and attacked together with the first N test images, as in an evaluation batch (they stay fixed; "
                "only your image moves); unticked, alone, a batch of one")

SENSITIVITY = """
**P(S_c ≥ sup S_d)** is the probability that a random feature perturbation moves the FC score of a class
(its relative sensitivity S_c, Eq. 3) at least as much as it can possibly move the l2 distance to a prototype
(sup S_d, Eq. 5): how much more sensitive, and so more discriminative and more vulnerable, the FC head is than
an l2 head. It holds whenever |cos θ_c| / |sin θ_d| ≤ |cos γ| (Eq. 8), γ being the angle between the
perturbation and the class vector. **Fig. 2** gives its probability for features spread evenly in d dimensions
(Eq. 11); **Fig. 3** measures the angles θ_c (to the FC vectors) and θ_d (to the prototypes) on the loaded
model's test features and compares the modelled probability (Eq. 13) with the measured one.
"""

ABOUT = """
**Sensitivity as a Double-Edged Sword.** A fully connected (FC) classifier's logits are very sensitive to
feature perturbations — that makes it discriminative, and vulnerable. An l2 distance classifier is less
sensitive — robust, but less discriminative. **Hybrid Prototype Mixing (HPM)** re-classifies with the l2
distance to prototypes that mix stable, EMA dataset-level class means with batch-level class means built
from the FC prediction through a straight-through estimator (Eq. 14-18). Because the batch prototypes
come from the whole batch, **a prediction depends on the other images in the batch** — this demo lets you
classify an image alone or inside a fixed context batch.

Such a dynamic, discontinuous model masks gradients, so it must be evaluated with the **Mixed Surrogate
Attack**: APGD on the FC oracle, on the soft-hybrid surrogate and on their ensemble, APGD through the
straight-through gradient (BPDA), and the black-box Square attack, every adversarial image judged on the
deployed model. Each button here runs one of those attacks on your image.

Library, CLI and evaluation reports: the `hpm` package (`pip install hybrid-prototype-mixing`, `hpm --help`).
"""


with gr.Blocks(title="hpm: Hybrid Prototype Mixing", delete_cache=(3600, CACHE_HOURS * 3600)) as app:
    gr.Markdown("# Hybrid Prototype Mixing — attack FC vs HPM live")
    with gr.Row():
        choice = gr.Dropdown(list(CHECKPOINTS), value=DEFAULT_MODEL and DEFAULT_MODEL.removeprefix("checkpoints/"),
                             label="Shipped checkpoint",
                             info=f"FC vs HPM on a robust backbone: {ROBUST_HPM}" if ROBUST_HPM in CHECKPOINTS
                             else None)
        hub_id = gr.Textbox("", label="…or a Hub repo id", placeholder="owner/name[@revision] (needs network)")
        load_btn = gr.Button("Load model")
        model_id = gr.Textbox(DEFAULT_MODEL, label="Loaded model", interactive=False)
    gr.Markdown(INTRO)
    card = gr.Markdown(demo.card_summary(_model(DEFAULT_MODEL)) if DEFAULT_MODEL else "No model.", label="Model card")
    with gr.Accordion("Everything this checkpoint's card records", open=False):
        metrics = gr.Markdown(demo.card_metrics(_model(DEFAULT_MODEL)) if DEFAULT_MODEL else "",
                              label="Measured metrics")
    with gr.Tab("Attack"):
        with gr.Row():
            with gr.Column(scale=1):
                upload = gr.File(label="Upload an image", file_types=["image"], type="filepath")
                gallery_note = gr.Markdown(label="Gallery note")
                gallery = gr.Gallery(label="…or pick a test sample", columns=6, height=260, allow_preview=False,
                                     elem_id="gallery", format="png")
                preview = gr.Image(label="Current image", type="numpy", interactive=False, height=200,
                                   elem_id="current-image", format="png", elem_classes="pixels")
                # the current image as a file: what Classify and Run attack (and API clients) send
                image_file = gr.File(visible=False, type="filepath")
            with gr.Column(scale=1):
                first_attacks = demo.attack_choices(_model(DEFAULT_MODEL)) if DEFAULT_MODEL else list(demo.KNOWN_ATTACKS)
                attack_radio = gr.Radio(first_attacks, value=demo.default_attack(first_attacks), label="Attack",
                                        info=ATTACK_INFO)
                # what Run attack (and an API client) sends: the radio's choice, copied in the browser. The radio's
                # choices follow the model loaded in the page; the API checks the name against the model it is given
                attack_name = gr.Textbox(attack_radio.value, visible=False, label="attack_name")
                eps = _checked(gr.Slider(0, 16, step=1, label="ε (×1/255, ℓ∞)",
                                         value=_eps_255(_model(DEFAULT_MODEL)) if DEFAULT_MODEL else 8,
                                         info="how far each pixel may move, in 8-bit levels (the images are 8-bit: "
                                              "a level moves by 1/255 or not at all)"))
                steps = _checked(gr.Slider(1, demo.STEPS_MAX, value=demo.STEPS_DEFAULT, step=1, precision=0,
                                           label="APGD steps"), integer=True)
                queries = _checked(gr.Slider(1, demo.QUERIES_MAX, value=demo.QUERIES_DEFAULT, step=1, precision=0,
                                             label="Square queries",
                                             info="one forward pass each; AutoAttack's evaluations use 5000"),
                                   integer=True)
                shown = bool(DEFAULT_MODEL) and _context_shown(_model(DEFAULT_MODEL))
                with gr.Column(visible=shown) as context_controls:
                    use_context = gr.Checkbox(shown, label="Classify inside a context batch", info=CONTEXT_INFO)
                    context_n = _checked(gr.Slider(1, demo.CONTEXT_MAX, value=demo.CONTEXT_DEFAULT, step=1,
                                                   precision=0, label="Context size N (test images)"), integer=True)
                with gr.Row():
                    predict_btn = gr.Button("Classify")
                    attack_btn = gr.Button("Run attack", variant="primary")
        summary = gr.Markdown(elem_id="attack-summary", label="Result")
        with gr.Row():
            fc_clean = gr.Label(num_top_classes=5, label="FC, clean")
            hpm_clean = gr.Label(num_top_classes=5, label="HPM, clean")
            fc_adv = gr.Label(num_top_classes=5, label="FC, adversarial")
            hpm_adv = gr.Label(num_top_classes=5, label="HPM, adversarial")
        with gr.Row():
            clean_input = gr.Image(label="Clean model input (what the model sees)", interactive=False, height=200,
                                   format="png", elem_classes="pixels")
            adv_image = gr.Image(label="Adversarial image (as judged, lossless)",
                                 interactive=False, height=200, format="png", elem_classes="pixels")
            pert_image = gr.Image(label="Perturbation (amplified)", interactive=False, height=200, format="png",
                                  elem_classes="pixels")
            heatmap = gr.Plot(label="Perturbation heatmap")
    with gr.Tab("Sensitivity"):
        gr.Markdown(SENSITIVITY)
        dims = gr.CheckboxGroup(["2", "8", "32", "128", "512", "2048", "8192"], value=["2", "8", "32", "128", "512",
                                "2048"], label="Feature dimensions d")
        iso = gr.Plot(value=isotropic_plot(["2", "8", "32", "128", "512", "2048"]), label="Fig. 2")
        angles_btn = gr.Button("Measure the loaded model's angle statistics (Fig. 3)")
        with gr.Row():
            hist = gr.Plot(label="angle histograms")
            cdf = gr.Plot(label="modelled vs empirical CDF")
    with gr.Tab("About"):
        gr.Markdown(ABOUT)

    load_btn.click(load_model, [choice, hub_id], [model_id, card, metrics, eps, attack_radio, fc_clean, fc_adv,
                                                  hpm_clean, hpm_adv, use_context, context_controls],
                   api_name="load_model").then(gallery_items, model_id, [gallery, gallery_note], api_visibility="private")
    attack_radio.change(None, attack_radio, attack_name, js="(name) => name", api_visibility="private")
    upload.upload(use_upload, upload, [preview, image_file], api_visibility="private")
    gallery.select(use_gallery, None, [preview, image_file], api_visibility="private")
    predict_btn.click(predict, [image_file, model_id, use_context, context_n], [fc_clean, hpm_clean, summary],
                      api_name="predict")
    attack_btn.click(attack, [image_file, model_id, attack_name, eps, steps, queries, use_context, context_n],
                     [adv_image, pert_image, heatmap, fc_clean, hpm_clean, fc_adv, hpm_adv, summary, clean_input],
                     api_name="attack", show_progress_on=summary)  # earlier results stay visible meanwhile
    dims.change(isotropic_plot, dims, iso, api_name="isotropic_cdf")
    angles_btn.click(angle_plots, model_id, [hist, cdf], api_name="angle_statistics")
    app.load(gallery_items, model_id, [gallery, gallery_note], api_visibility="private")

app.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
_keep_message_queues(app, MESSAGE_QUEUES_KEPT)
# How the app is launched, for users and for its tests alike. Library errors reach the visitor as messages
# (gr.Error); any other exception shows only Gradio's generic notice, so no server detail leaks. Uploads are
# refused above the size the image decoder accepts, and small images are enlarged without smoothing, so each
# pixel the model saw stays a visible square.
LAUNCH = dict(max_file_size=MAX_UPLOAD_BYTES, state_session_capacity=SESSIONS_KEPT,
              css=".pixels img { image-rendering: pixelated; width: 100% !important; height: 100% !important; "
                  "object-fit: contain; }")
