"""A training run's resumable state: a resumed run must follow the recipe the interrupted one followed."""
import json
from dataclasses import asdict, dataclass

import pytest
import torch

from hpm.errors import HPMError
from hpm.train.finetune import FREE_WHEN_RESUMING, AdversarialConfig
from hpm.train.mixer import MixerConfig
from hpm.train.scratch import BackboneConfig
from hpm.train.state import load_state, recipe, save_state


@dataclass
class Recipe:
    lr: float = 0.1
    epochs: int = 2
    save_every: int = 100


def test_a_state_resumes_under_its_recipe_and_options_added_since_take_their_defaults(tmp_path):
    save_state({"config": json.dumps({"lr": 0.1}), "weights": torch.ones(2)}, tmp_path / "state.pt")
    assert torch.equal(load_state(tmp_path / "state.pt", Recipe(), "cpu")["weights"], torch.ones(2))
    assert not (tmp_path / "state.pt.tmp").exists()


def test_a_changed_option_is_named_with_its_value_then_and_now(tmp_path):
    save_state({"config": recipe(Recipe())}, tmp_path / "state.pt")
    with pytest.raises(HPMError, match=r"different recipe \(epochs 2 then, 3 now; the schedule\); resume with the "
                                       r"same options or use a new run directory"):
        load_state(tmp_path / "state.pt", Recipe(epochs=3), "cpu", why="the schedule")


def test_options_free_to_change_are_not_compared_whether_or_not_the_state_recorded_them(tmp_path):
    for written in (recipe(Recipe()), recipe(Recipe(), free=["save_every"])):
        save_state({"config": written}, tmp_path / "state.pt")
        load_state(tmp_path / "state.pt", Recipe(save_every=5), "cpu", free=["save_every"])


@pytest.mark.parametrize("config, written, free", [
    (BackboneConfig(), json.dumps(asdict(BackboneConfig()), sort_keys=True), ()),
    (MixerConfig(save_seconds=60), json.dumps(asdict(MixerConfig()), sort_keys=True), ("save_seconds",)),
    (AdversarialConfig(), json.dumps({k: v for k, v in asdict(AdversarialConfig()).items()
                                      if k not in FREE_WHEN_RESUMING}, sort_keys=True), FREE_WHEN_RESUMING),
], ids=["backbone", "mixer", "finetune"])
def test_states_the_trainers_wrote_before_they_shared_this_module_still_resume(tmp_path, config, written, free):
    save_state({"config": written}, tmp_path / "state.pt")
    load_state(tmp_path / "state.pt", config, "cpu", free=free)
