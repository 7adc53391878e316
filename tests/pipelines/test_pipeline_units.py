"""Units of the pipeline: step ordering from reads/writes, heatmap picks, fold intervals."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from hipt.errors import ConfigError
from hipt.pipeline.engine import Step, order_steps
from hipt.pipeline.plan import as_args
from hipt.pipeline.report import t_interval
from hipt.pipeline.runner import pick_patients
from hipt.tasks.base import task_from_state


def _s(name: str, reads: tuple[str, ...], writes: tuple[str, ...]) -> Step:
    return Step(name, name, name, [], Path(name), "done", reads=reads, writes=writes)


def test_order_follows_reads_and_writes_whatever_the_declared_order():
    """Declared backwards, the steps still come out writer-before-reader; a given input is its
    own upstream name (so its digest enters the key)."""
    steps = [_s("finetune", ("feats4k", "cohort"), ("model",)),
             _s("encode", ("feats256", "vit4k"), ("feats4k",)),
             _s("pretrain", ("feats256",), ("vit4k",)),
             _s("extract", ("tiles",), ("feats256",)),
             _s("tile", ("slides",), ("tiles",))]  # fmt: skip
    ordered = order_steps(steps, given=("slides", "cohort"))
    assert [s.name for s in ordered] == ["tile", "extract", "pretrain", "encode", "finetune"]
    assert ordered[-1].upstream == ["encode", "cohort"]
    assert ordered[0].upstream == ["slides"]


def test_order_refuses_a_missing_input_two_writers_and_a_cycle():
    with pytest.raises(ConfigError, match="reads tiles, which no step makes"):
        order_steps([_s("extract", ("tiles",), ("f",))])
    with pytest.raises(ConfigError, match="both write 'f'"):
        order_steps([_s("a", (), ("f",)), _s("b", (), ("f",))])
    with pytest.raises(ConfigError, match="a cycle"):
        order_steps([_s("a", ("y",), ("x",)), _s("b", ("x",), ("y",))])


def test_stage_settings_become_the_stages_key_value_arguments():
    """Nested settings flatten to dotted keys; lists, booleans and None in OmegaConf's spelling."""
    args = as_args({"model": {"name": "x", "freeze_4k": True}, "heads": [0, 1], "dir": None})
    assert args == ["model.name=x", "model.freeze_4k=true", "heads=[0,1]", "dir=null"]


def test_heatmap_picks_are_the_extremes_of_the_task_score():
    """Ranked by the task's own score: survival by risk, response by the probability of
    responding (its predictions carry no other probability), subtype by the predicted class'
    probability; the top and bottom n patients, each once."""
    surv = task_from_state({"task": "survival", "classes": [], "n_outputs": 4})
    df = pd.DataFrame({"patient_id": list("abcd"), "risk": [0.1, 2.0, -1.0, 0.5]})
    assert pick_patients(df, 1, surv)["patient_id"].tolist() == ["b", "c"]
    assert sorted(pick_patients(df, 3, surv)["patient_id"]) == list("abcd")
    resp = task_from_state({"task": "response", "classes": ["non-responder", "responder"],
                            "n_outputs": 1})  # fmt: skip
    df = pd.DataFrame({"patient_id": list("abc"), "prob_responder": [0.2, 0.9, 0.05],
                       "pred": ["non-responder", "responder", "non-responder"]})  # fmt: skip
    assert pick_patients(df, 1, resp)["patient_id"].tolist() == ["b", "c"]
    sub = task_from_state({"task": "subtype", "classes": ["A", "B"], "n_outputs": 2})
    df = pd.DataFrame({"patient_id": list("abc"), "pred": ["A", "B", "A"],
                       "prob_A": [0.9, 0.45, 0.6], "prob_B": [0.1, 0.55, 0.4]})  # fmt: skip
    assert pick_patients(df, 1, sub)["patient_id"].tolist() == ["a", "b"]


def test_fold_interval_matches_the_t_distribution_closed_form():
    """Two folds 0.6 and 0.8: mean 0.7 ± t(1, 0.975)=12.7062 x sd 0.14142 / sqrt(2)."""
    low, high = t_interval(pd.Series([0.6, 0.8]))
    half = 12.706204736 * math.sqrt(0.02) / math.sqrt(2)
    assert low == pytest.approx(0.7 - half, abs=1e-6) and high == pytest.approx(
        0.7 + half, abs=1e-6
    )
    assert all(math.isnan(v) for v in t_interval(pd.Series([0.7])))
