"""The official finetuned HIPT slide models (``s_<k>_checkpoint.pt``), loaded strictly.

The official subtyping code saves ``model.state_dict()`` of ``HIPT_LGP_FC`` (ViT-4K per region,
then the global stage) or ``HIPT_GP_FC`` (the global stage on ``[M, 192]`` region features)
after the last epoch (reference/hipt.md 6.1-6.3). Its ViT-4K is wrapped in ``nn.DataParallel``
whenever a GPU was present, so its keys read ``local_vit.module.*``. Our ``hipt_lgp`` uses the
official parameter names, so these files load strictly once that one wrapper is removed.

The file says how many outputs the classifier has, and whether a ViT-4K is inside; it cannot
say the task or the class names, which the caller gives. It says nothing either about the
features it was trained on: the card records the official encoders' names, sizes and MPP, but
no checkpoint sha256 (the official files are not published with one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

from torch import Tensor

from hipt.models.card import ModelCard, ModelFileError
from hipt.models.checkpoints import load_state_dict_strict, torch_load_safe
from hipt.models.factory import Loaded, build
from hipt.models.spec import FEATS4K, FEATS256, SLIDE_HEAD

#: What the official slide models were trained on: ViT-S/16 DINO patches, ViT-4K XS regions,
#: 4096-px regions of 256-px patches at 20x (0.5 µm/px). Checkpoint sha256 are unknown.
OFFICIAL_PROVENANCE: dict[str, Any] = {
    "model_256": "vit256_small",
    "feature_dim_256": 384,
    "model_4k": "vit4k_xs",
    "feature_dim_4k": 192,
    "target_mpp": 0.5,
    "region_px": 4096,
    "patch_px": 256,
}
#: ``nn.DataParallel`` inserts ``module.`` after the wrapped attribute's name.
_WRAPPED = "local_vit.module."
_LOCAL = "local_vit."
TASKS = ("subtype", "stage", "survival", "response")


def _unwrap(key: str) -> str:
    return _LOCAL + key[len(_WRAPPED) :] if key.startswith(_WRAPPED) else key


def official_state(path: str | PathLike[str]) -> dict[str, Tensor]:
    """The state dict of an official ``s_<k>_checkpoint.pt``, ``local_vit.module.`` unwrapped.

    Raises:
        ModelFileError: not a mapping of tensors (``weights_only`` loading, nothing else is
            unpickled), or no ``classifier`` (not a slide model).
    """
    raw = torch_load_safe(path)
    if not isinstance(raw, Mapping) or not all(isinstance(v, Tensor) for v in raw.values()):
        raise ModelFileError(
            f"{path}: not a state dict of tensors (an official s_<k>_checkpoint.pt holds "
            "model.state_dict())"
        )
    state = {_unwrap(str(k)): v for k, v in raw.items()}
    if "classifier.weight" not in state or "global_phi.0.weight" not in state:
        raise ModelFileError(
            f"{path}: no classifier.* / global_phi.* keys: not an official HIPT "
            "slide model (HIPT_LGP_FC or HIPT_GP_FC)"
        )
    return state


def load_official(
    path: str | PathLike[str],
    task: str,
    classes: Sequence[str] = (),
    n_classes: int | None = None,
) -> Loaded:
    """Load an official finetuned ``HIPT_LGP_FC`` / ``HIPT_GP_FC`` into ``hipt_lgp`` (strict).

    Args:
        path: the official ``s_<k>_checkpoint.pt``.
        task: what it predicts (``subtype``, ``stage``, ``survival``, ``response``); the file
            does not say.
        classes: class names in logit order (default ``class_0``, ``class_1``, ...).
        n_classes: expected number of outputs; checked against the file's classifier.

    Returns:
        ``(model in eval mode, card)``: the card says ``feats256`` for ``HIPT_LGP_FC`` (the
        ViT-4K runs on the grids) and ``feats4k`` for ``HIPT_GP_FC``.

    Raises:
        ModelFileError: an unreadable or foreign file, an unknown task, a class count that
            differs from the file's, or any missing / unexpected / mis-shaped key.
    """
    if task not in TASKS:
        raise ModelFileError(
            f"{path}: task must be one of {', '.join(TASKS)} for an official "
            f"model (the file does not say), got {task!r}"
        )
    state = official_state(path)
    n_out = int(state["classifier.weight"].shape[0])
    if n_classes is not None and n_classes != n_out:
        raise ModelFileError(
            f"{path}: its classifier has {n_out} outputs, not n_classes={n_classes}"
        )
    has_vit4k = any(k.startswith(_LOCAL) for k in state)
    names = list(classes) or [f"class_{i}" for i in range(n_out)]
    kwargs: dict[str, Any] = {"vit4k": "vit4k_xs" if has_vit4k else None, "n_classes": n_out}
    model = build("hipt_lgp", **kwargs)
    load_state_dict_strict(model, state, str(path))
    card = ModelCard(
        architecture="hipt_lgp",
        kwargs=kwargs,
        kind=SLIDE_HEAD,
        consumes=FEATS256 if has_vit4k else FEATS4K,
        output={"task": task, "classes": names, "n_outputs": n_out},
        trained_on=dict(OFFICIAL_PROVENANCE),
        meta={
            "source": "official HIPT finetuned model",
            "file": Path(path).name,
            "official_class": "HIPT_LGP_FC" if has_vit4k else "HIPT_GP_FC",
        },
    )
    return Loaded(model.eval(), card)
