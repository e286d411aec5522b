"""Fitting `rtdiar-joint`: two fused judgements weighed into one, on the dev people's pairings.

Each member (`rtdiar-lrasd`, `rtdiar-distilled`) scores the same pairings it was fitted on alone
(`sync_training.dev_pairings`: each dev sound with its speaker and 6 faces talking on mute, the
same seed, so the same faces on the same frames); a logistic regression over both members' speaking
logit and relative sync score (those the recipe asks for) is the joint fusion. Nothing else is
trained: the members' files hold their networks.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rtdiar.config import PROJECT_ROOT, Config, load_config
from rtdiar.errors import RtdiarError
from rtdiar.lab.distillation import dev_frontends
from rtdiar.lab.sync_training import Pairing, build_recipe, dev_pairings, fit_fusion, fused_cv, writable
from rtdiar.scorers.inference import load_scorer
from rtdiar.scorers.sync_head import MEMBERS
from rtdiar.scorers.syncnet import build_model, save_weights

DEFAULT_RECIPE = PROJECT_ROOT / "configs" / "train_joint.yaml"


@dataclass
class JointRecipe:
    """configs/train_joint.yaml (`arch: joint` names it)."""

    arch: str
    members: list[str]  # registry names of fused judgements
    logits: list[bool]  # per member: does the fusion read its speaking logit (else its sync score alone)
    dev: str  # dev/wild: the fit
    out: str
    cohort_shifts: list[int]  # the members' own (their files say it)
    faces_per_sound: int
    seed: int


def load_recipe(path: Path | None) -> JointRecipe:
    recipe = build_recipe(JointRecipe, path or DEFAULT_RECIPE)
    if len(recipe.members) != MEMBERS or len(recipe.logits) != MEMBERS:
        raise RtdiarError(f"a joint judgement weighs {MEMBERS} members: the recipe names {len(recipe.members)} "
                          f"and {len(recipe.logits)} logit choices")
    return recipe


def read_columns(recipe: JointRecipe) -> list[int]:
    """The joint features the fusion reads: each member's sync score, and its logit where asked."""
    return [2 * k + j for k, logit in enumerate(recipe.logits) for j in ((0, 1) if logit else (1,))]


def member_pairings(name: str, recipe: JointRecipe, config: Config) -> list[Pairing]:
    """The dev pairings with the member's features, scored as it scores them alone."""
    scorer = load_scorer(dataclasses.replace(config, model=dataclasses.replace(config.model, weights=name, arch="auto")))
    with torch.no_grad():
        dev = dev_frontends(recipe.dev, config, scorer.model)
        return dev_pairings(scorer.model, scorer.head, dev, recipe, config.asd.window_frames)


def joint_pairings(recipe: JointRecipe, config: Config) -> list[Pairing]:
    """The same pairings with every member's features side by side."""
    each = [member_pairings(name, recipe, config) for name in recipe.members]
    if any([(p.sound, p.face, len(p.features)) for p in part] != [(p.sound, p.face, len(p.features)) for p in each[0]]
           for part in each[1:]):
        raise RtdiarError("the members paired different faces or frames: they must read the same crops and cohort")
    return [Pairing(group[0].sound, group[0].face, np.concatenate([p.features for p in group], axis=1), group[0].voiced)
            for group in zip(*each)]


def fit_joint(recipe: JointRecipe, out: Path | None = None, overwrite: bool = False) -> dict:
    """The joint fusion fitted on dev people, reported cross-validated by person beside each member
    alone, and its file (atomic; an existing one only with `overwrite`). Returns the figures."""
    out = writable(out or PROJECT_ROOT / recipe.out, overwrite)
    pairings = joint_pairings(recipe, load_config())
    columns = read_columns(recipe)
    read = [dataclasses.replace(p, features=p.features[:, columns]) for p in pairings]
    figures = {"joint": fused_cv(read)}
    for k, name in enumerate(recipe.members):
        alone = [dataclasses.replace(p, features=p.features[:, 2 * k:2 * k + 2]) for p in pairings]
        figures[name] = fused_cv(alone)
    fitted = fit_fusion(read)
    fusion = build_model("joint")  # a feature the fusion does not read keeps weight 0
    fusion.weights[columns] = torch.from_numpy(fitted[:-1])
    fusion.weights[-1] = float(fitted[-1])
    print("right person on dev voiced frames, one speaker against "
          f"{recipe.faces_per_sound} faces talking on mute (5 folds by person): joint {figures['joint']:.1%}, "
          + ", ".join(f"{name} alone {figures[name]:.1%}" for name in recipe.members)
          + f"; fusion {[round(w, 3) for w in fusion.weights.tolist()]}")
    save_weights(fusion, out, "joint", {"members": ",".join(recipe.members), "right_person_cv": f"{figures['joint']:.4f}"})
    print(f"wrote {out}")
    return figures
