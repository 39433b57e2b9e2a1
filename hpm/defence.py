"""What an evaluation needs to know about a model: the declaration every evaluated model makes.

The paper's evaluation (Sec. 3.7) judges every adversarial batch on the **deployed** model, which may be
non-differentiable or depend on its batch, and attacks it through differentiable **surrogates**. Every model
:func:`hpm.evaluate_model` takes answers the same small protocol, :class:`Declared`:

- ``attack_targets``: target name -> the forward modes whose summed loss APGD follows (``"hard"`` is the
  deployed model itself);
- ``batch_dependent``: one sample's scores depend on the rest of its batch;
- ``forward(x, mode="hard")``: deployed scores, or one surrogate's;
- ``describe()``: what the report records about the model.

hpm's own models declare theirs (:class:`hpm.HPMClassifier` through its head, :class:`hpm.mixed.MixedClassifier`);
any other classifier or defence is declared with :class:`Defence`, and :func:`declare` does that for a plain
``images -> logits`` callable.

Example:
    >>> defence = hpm.Defence(my_transductive_model, batch_dependent=True,
    ...                       surrogates={"per-sample": my_model_with_running_stats})
    >>> report = hpm.evaluate_model(defence, x, y)   # batch sizes 1, 16, 256, whole-batch attacks included
"""
from __future__ import annotations

import copy
import hashlib
import inspect
import json
import re
from types import MappingProxyType
from typing import Callable, Mapping, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from .callables import distinct, modules_held, modules_reached
from .devices import device_of
from .errors import HPMError
from .rng import seeded

DEPLOYED = "hard"  # the mode naming the deployed model, as hpm's heads name it
RESERVED = ("deployed", "hard", "ensemble", "bpda")  # target or mode names a surrogate cannot take
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")


@runtime_checkable
class Declared(Protocol):
    """A model that says how it is to be evaluated (see the module docstring)."""

    attack_targets: Mapping[str, tuple[str, ...]]
    batch_dependent: bool

    def describe(self) -> dict: ...

    def __call__(self, x: Tensor, mode: str = DEPLOYED) -> Tensor: ...


class Defence(nn.Module):
    """Any classifier or defence, declared for evaluation.

    Args:
        deployed: the model as deployed, ``images [B, C, H, W] in [0, 1] -> scores [B, k]`` (an ``nn.Module`` or any
            callable); every adversarial batch is judged on it. It need not be differentiable: if its output
            carries no gradient, APGD attacks only the surrogates, and Square the deployed model.
        surrogates: ``{name: callable}``, differentiable stand-ins with the same inputs and classes; APGD (CE,
            DLR, and APGD-T) attacks each, and their ensemble (summed losses) when there are two or more.
        batch_dependent: True when one image's scores depend on the other images of its batch (BatchNorm on
            test-batch statistics, test-time adaptation, any transductive defence): the evaluation then runs
            every batch size it is given, keeps the evaluation order, and adds whole-batch attacks on request.
        name: what reports call it (default: the deployed module's class name).
        input_size: ``(C, H, W)`` of its inputs; inputs are checked against it (default: the deployed module's
            ``input_size`` attribute, if any).
        num_classes: checked against the labels where given (default: the deployed module's ``num_classes``).
        dataset, classes: recorded (default: the deployed module's).
        deployed_differentiable: whether APGD may differentiate the deployed model; None: found out once, from
            one forward and backward pass on two of the evaluation's images (:meth:`probe`; a defence with
            randomness may need to say).
    """

    def __init__(self, deployed: Callable[[Tensor], Tensor], *,
                 surrogates: Mapping[str, Callable[[Tensor], Tensor]] | None = None, batch_dependent: bool = False,
                 name: str | None = None, input_size: tuple[int, int, int] | None = None,
                 num_classes: int | None = None, dataset: str | None = None, classes: list[str] | None = None,
                 deployed_differentiable: bool | None = None):
        super().__init__()
        if is_declared(deployed):
            raise HPMError(f"{type(deployed).__name__} declares how it is evaluated already; pass it as it is")
        if not callable(deployed):
            raise HPMError(f"deployed must be an nn.Module or a callable images -> scores; got "
                           f"{type(deployed).__name__}")
        if not isinstance(batch_dependent, bool):
            raise HPMError(f"batch_dependent must be True or False; got {batch_dependent!r}")
        surrogates = dict(surrogates or {})
        for key, fn in surrogates.items():
            if not isinstance(key, str) or not _NAME.match(key) or key in RESERVED:
                hint = f" (e.g. {key}-surrogate)" if isinstance(key, str) and key in RESERVED else ""
                raise HPMError(f"surrogate name {key!r}: use lower-case letters, digits, '-', '_' or '.', and none of "
                               f"{', '.join(RESERVED)}{hint}")
            if not callable(fn):
                raise HPMError(f"surrogate {key!r} must be an nn.Module or a callable images -> scores; got "
                               f"{type(fn).__name__}")
        self.deployed = _as_module(deployed)
        self.surrogates = nn.ModuleDict({k: _as_module(fn) for k, fn in surrogates.items()})
        self.batch_dependent = batch_dependent
        self.name = name or _describe_callable(deployed)
        self.input_size = tuple(input_size) if input_size is not None else _attr(deployed, "input_size", tuple)
        self.num_classes = num_classes if num_classes is not None else _attr(deployed, "num_classes", int)
        self.dataset = dataset or getattr(deployed, "dataset", None)
        self.classes = classes or getattr(deployed, "classes", None)
        self._differentiable = deployed_differentiable

    @property
    def deployed_differentiable(self) -> bool:
        """Whether the deployed model's scores have a non-zero input gradient (declared, or probed once: on the
        evaluation's images by :meth:`probe`, else on two random images of ``input_size``)."""
        if self._differentiable is None:
            self.probe(torch.rand(2, *(self.input_size or (3, 32, 32))))
        return self._differentiable

    def probe(self, x: Tensor) -> None:
        """Check the deployed model and every surrogate on the images ``x`` before an evaluation: each returns
        finite scores ``[B, k]`` with the same ``k``, each surrogate has an input gradient; and find out whether
        the deployed model has one (unless declared).

        Raises:
            HPMError: a model that fails on ``x`` or returns something else, in words that name the fix.
        """
        found = _probe(self.deployed, x, f"{self.name}: the deployed model")
        if self._differentiable is None:
            self._differentiable = found[1]
        for name, surrogate in self.surrogates.items():
            k, differentiable = _probe(surrogate, x, f"surrogate {name!r}")
            if k != found[0]:
                raise HPMError(f"surrogate {name!r} scores {k} classes, the deployed model {found[0]}: a surrogate "
                               "must score the same classes in the same order")
            if not differentiable:
                raise HPMError(f"surrogate {name!r} has no input gradient (does it run under torch.no_grad, or "
                               "detach its output?): APGD could not attack it")

    @property
    def attack_targets(self) -> Mapping[str, tuple[str, ...]]:
        """The deployed model (when differentiable), each surrogate, and the surrogates' ensemble."""
        targets = {"deployed": (DEPLOYED,)} if self.deployed_differentiable else {}
        targets |= {name: (name,) for name in self.surrogates}
        if len(self.surrogates) > 1:
            targets["ensemble"] = tuple(self.surrogates)
        if not targets:
            raise HPMError(f"{self.name}: the deployed model has no input gradient and no surrogate was declared, so "
                           "no gradient attack applies; declare surrogates={'name': differentiable_model} (or "
                           "--surrogate NAME=file.py:factory), or deployed_differentiable=True if the probe was wrong")
        return MappingProxyType(targets)

    @property
    def targeted_on(self) -> tuple[str, ...]:
        """The targets APGD-T attacks in the default plan: every one but the ensemble."""
        return tuple(t for t in self.attack_targets if t != "ensemble")

    @property
    def target_descriptions(self) -> Mapping[str, str]:
        out = {"deployed": f"the deployed model ({self.name}) end to end"}
        out |= {name: f"the declared surrogate {name!r}" for name in self.surrogates}
        out["ensemble"] = "the surrogates' summed losses"
        return MappingProxyType({k: v for k, v in out.items() if k in self.attack_targets})

    def describe(self) -> dict:
        """What an evaluation report records: the model and what was declared about it."""
        return {"head": self.name, "backbone": "declared defence", "dataset": self.dataset,
                "batch_dependent": self.batch_dependent,
                "declared": {"batch_dependent": self.batch_dependent, "surrogates": list(self.surrogates),
                             "deployed_attacked_by_gradient": self.deployed_differentiable,
                             "input_size": list(self.input_size) if self.input_size else None}}

    def forward(self, x: Tensor, mode: str = DEPLOYED) -> Tensor:
        """The deployed model's scores (``mode="hard"``) or a surrogate's (``mode=NAME``)."""
        if mode == DEPLOYED:
            return self.deployed(x)
        if mode not in self.surrogates:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join([DEPLOYED, *self.surrogates])}")
        return self.surrogates[mode](x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, batch_dependent={self.batch_dependent}, surrogates={list(self.surrogates)}"


class _Function(nn.Module):
    """A plain callable as a module. The modules it holds (a bound method's object, a partial's arguments, a
    callable object's attributes: :func:`hpm.callables.modules_held`) are its submodules, so that a copy copies
    them with it and ``eval()`` reaches them; what a function reaches by name is neither."""

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        super().__init__()
        self.fn = fn
        self.held = nn.ModuleList(modules_held(fn))

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return _describe_callable(self.fn)


def _as_module(fn: Callable[[Tensor], Tensor]) -> nn.Module:
    return fn if isinstance(fn, nn.Module) else _Function(fn)


def modules_closed_over(model: nn.Module) -> list[nn.Module]:
    """The modules that plain functions inside ``model`` reach by name (:func:`hpm.callables.modules_reached`): hpm
    can neither copy them nor switch them to eval mode, so an evaluation runs them as they are."""
    functions = (m.fn for m in model.modules() if isinstance(m, _Function))
    return distinct(reached for function in functions for reached in modules_reached(function))


def _describe_callable(fn) -> str:
    return type(fn).__name__ if isinstance(fn, nn.Module) else getattr(fn, "__qualname__", type(fn).__name__)


def _attr(obj, name: str, kind: type):
    value = getattr(obj, name, None)
    try:
        return kind(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _probe(fn: nn.Module, images: Tensor, what: str) -> tuple[int, bool]:
    """``(k, differentiable)``: the number of classes ``fn`` scores on ``images``, and whether its scores have a
    non-zero input gradient (on a copy, so that a module's buffers, e.g. BatchNorm's running statistics in training
    mode, are left as they are).

    Raises:
        HPMError: ``fn`` fails on ``images`` or returns anything but finite float scores ``[B, k]``, k >= 2.
    """
    probe = copy_module(fn, what)
    given = images.detach().to(device_of(probe), copy=True)
    x = given.clone().requires_grad_(True)  # a model that writes its input writes a copy
    with torch.enable_grad():
        try:
            out = probe(x)
        except Exception as e:  # the caller's model: say where it failed, keep its traceback
            raise HPMError(f"{what} failed on float32 images of shape {tuple(x.shape)} ({type(e).__name__}: {e}); "
                           "hpm passes float32 images [N, C, H, W] in [0, 1]: a model in another precision needs "
                           ".float(), a model for another image size an input_size attribute, and a model that "
                           "changes its input in place (x.clamp_()) the out-of-place operation (x.clamp())") from e
        if not torch.equal(x.detach(), given):
            raise HPMError(f"{what} changed its input images in place (an operation such as x.clamp_() or "
                           "x.mul_()): attacks and judging would see other images than they passed; use the "
                           "out-of-place operation (x.clamp())")
        problem = scores_problem(out, len(x))
        if problem:
            raise HPMError(f"{what} returned {problem}")
        if out.requires_grad and looks_like_probabilities(out):
            raise HPMError(f"{what} returned probabilities (scores in [0, 1], each row summing to 1): return logits or "
                           "log-probabilities (the scores before softmax, or torch.log(p.clamp_min(1e-30)): a "
                           "confident model's probabilities round to 0 and 1); attacks on probabilities saturate, "
                           "and the robust accuracy they leave is overstated")
        if not out.requires_grad:
            return out.shape[1], False
        # A fixed random weighting of the scores: log-probabilities' logsumexp is constant, so its gradient is
        # zero though the scores have one; a weighted sum moves with any score.
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.device)
        grad, = torch.autograd.grad((out.float() * weights).sum(), x, allow_unused=True)
    return out.shape[1], grad is not None and bool(torch.isfinite(grad).all()) and bool(grad.abs().sum() > 0)


def scores_problem(out, n: int) -> str | None:
    """What is wrong with ``out`` as a classifier's scores of ``n`` images, in words that follow "the model
    returned" and name the fix; None for finite float32 (or float64) scores ``[n, k]``, k >= 2."""
    if not isinstance(out, Tensor):
        return (f"a {type(out).__name__}, not a tensor of scores [B, k] (a model that returns a tuple or an output "
                "object: wrap it, e.g. lambda x: model(x).logits)")
    if out.ndim != 2 or len(out) != n or out.shape[1] < 2 or not out.is_floating_point():
        return (f"{out.dtype} of shape {tuple(out.shape)} for {n} images; it must return float scores [{n}, k], "
                "one row per image, k >= 2 classes")
    if out.dtype not in (torch.float32, torch.float64):
        return (f"{out.dtype} scores; return float32 scores (.float() at the end of its forward): the attacks and "
                "the judging compare scores in float32")
    if not bool(torch.isfinite(out).all()):
        return "NaN or infinite scores"
    return None


def looks_like_probabilities(scores: Tensor) -> bool:
    """Whether ``scores`` [B, k] are soft probabilities (each in [0, 1], each row summing to 1, not all of them 0 or
    1) rather than logits; a one-hot hard decision, straight-through gradient or not, is not."""
    scores = scores.detach()
    in_range = bool(((scores >= 0) & (scores <= 1)).all())
    one_hot = bool(((scores == 0) | (scores == 1)).all())
    sums_to_one = torch.allclose(scores.double().sum(1), torch.ones(len(scores), dtype=torch.float64), atol=1e-3)
    return in_range and sums_to_one and not one_hot


def copy_module(module: nn.Module, what: str = "the model") -> nn.Module:
    """A deep copy of ``module``, or an :class:`HPMError` saying why it cannot be copied."""
    try:
        return copy.deepcopy(module)
    except Exception as e:
        raise HPMError(f"{what} cannot be copied ({type(e).__name__}: {e}); hpm evaluates a copy so that your "
                       "module stays as it was: keep locks, open files and generators out of its attributes") from e


def is_declared(model) -> bool:
    """True for a model that makes the :class:`Declared` declarations itself (looked up without running them)."""
    return all(_missing is not inspect.getattr_static(model, name, _missing)
               for name in ("attack_targets", "batch_dependent", "describe"))


_missing = object()


def _same_device(a: torch.device, b: torch.device) -> bool:
    """``cuda`` and ``cuda:0`` (the current device) are the same device."""
    def index(d: torch.device) -> int | None:
        return d.index if d.index is not None or d.type != "cuda" else torch.cuda.current_device()
    return a.type == b.type and index(a) == index(b)


def declare(model, *, batch_dependent: bool | None = None,
            surrogates: Mapping[str, Callable[[Tensor], Tensor]] | None = None) -> Declared:
    """``model`` as a :class:`Declared` model: itself when it declares its own (hpm's models, a :class:`Defence`),
    else a :class:`Defence` with ``batch_dependent`` (default False) and ``surrogates``.

    Raises:
        HPMError: a model that declares its own given other declarations; a model that is not callable.
    """
    if batch_dependent not in (None, True, False):
        raise HPMError(f"batch_dependent must be True, False or None; got {batch_dependent!r}")
    if is_declared(model):
        mismatch = batch_dependent is not None and bool(batch_dependent) != bool(model.batch_dependent)
        if surrogates or mismatch:
            raise HPMError(f"{type(model).__name__} declares its own attack targets and batch dependence "
                           f"(batch_dependent={model.batch_dependent}, targets {', '.join(model.attack_targets)}); "
                           "drop batch_dependent/surrogates, or wrap its deployed forward in hpm.Defence(...)")
        return model
    return Defence(model, surrogates=surrogates, batch_dependent=bool(batch_dependent))


def evaluation_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """The copy an evaluation works on, in eval mode on ``device`` without parameter gradients: the caller's
    module keeps its training flag, ``requires_grad``, buffers and device (the copy is made once; a copy is not
    copied again). Modules are copied; a plain function is used as it is (what it closes over cannot be copied)."""
    if getattr(model, "_hpm_evaluation_copy", False) and _same_device(device_of(model), device):
        return model
    copied = copy_module(model).eval().to(device)
    for parameter in copied.parameters():
        if parameter.is_leaf:  # a traced (TorchScript) module may hold non-leaf parameters
            parameter.requires_grad_(False)
    copied._hpm_evaluation_copy = True
    return copied


PROBE_IMAGES = 4  # the evaluation's first images, whose scores a resumed evaluation compares


@torch.no_grad()
def probe_scores(model: nn.Module, x: Tensor) -> Tensor | None:
    """The deployed scores of a copy of ``model`` (the model itself keeps whatever state a call changes) on the
    images ``x`` with the global random generators seeded alike (:func:`hpm.rng.seeded`: alone, and restored after).

    A resumed evaluation compares them with the stored run's: a digest of parameters (:func:`model_fingerprint`)
    cannot see what a function closes over or what a module keeps in plain attributes.

    Returns:
        The scores (float32, on the CPU), or None when two such passes differ (a model drawing from elsewhere).
    """
    probe = copy_module(model)
    passes = []
    for _ in range(2):  # a randomized model draws the same noise in both, so its noise's size is compared too
        with seeded(0, x.device):
            passes.append(probe(x.clone()))
    return passes[0].float().cpu() if torch.equal(*passes) else None


def same_scores(a: Tensor | None, b: Tensor | None) -> bool:
    """Whether two :func:`probe_scores` are of one model: both None (two seeded passes differed in both), or both
    scores agreeing to float rounding (:func:`agree_to_rounding`)."""
    if a is None or b is None:
        return a is None and b is None
    return agree_to_rounding(a, b)


def rounding_tolerance(reference: Tensor) -> float:
    """How far two outputs of one model on the same images may differ by float rounding alone (another device,
    thread count, kernel or batch): 1e-3 of their scale, ``reference``'s largest magnitude (at least 1)."""
    return 1e-3 * max(1.0, float(reference.abs().max()))


def agree_to_rounding(a: Tensor, b: Tensor) -> bool:
    """Whether two outputs of one model on the same images (:func:`probe_scores`, features) agree up to float
    rounding (:func:`rounding_tolerance`)."""
    return a.shape == b.shape and bool(((a - b).abs() <= rounding_tolerance(b)).all())


def model_fingerprint(model: nn.Module) -> str:
    """A digest of a model's parameters and buffers and of what it declares itself to be (``describe()``: a
    mixture's α, a map's constants, a mixing network's evaluation constants; a module that declares nothing: its
    class); not where it was loaded from, so that the same model loaded from elsewhere keeps its fingerprint."""
    describe = getattr(model, "describe", None)
    declared = describe() if callable(describe) else type(model).__qualname__
    digest = hashlib.sha256(json.dumps(declared, sort_keys=True, default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{t.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:32]
