"""Which variables a train step updates: ``train_config.update_trainable_variables`` and ``freeze_variables``.

The OD API's TF1 loop (``model_lib``) honoured both; its TF2 loop (``model_lib_v2.eager_train_step``) applies
gradients to every trainable variable and ignores them.  odal applies them as the TF1 loop did
(``slim.filter_variables``): a variable is updated when its name (``Conv1/kernel:0``, ``block_3_expand/kernel:0``,
``BoxPredictor/ConvolutionalClassHead_0/...``) contains a match (``re.search``) of some
``update_trainable_variables`` pattern (all variables when there is none), and of no ``freeze_variables`` pattern.
Frozen variables get no gradient and no optimiser slots; as in TF1, batch-norm statistics still follow the config's
``freeze_batchnorm`` (they are not trainable variables).

The train step sees the model through :class:`TrainableView`, which is the model in every respect but its
``trainable_variables``.  The selection is made when the step is traced, after the model's variables exist.
"""

from __future__ import annotations

import re


class FreezeError(ValueError):
    """The config's patterns leave nothing to train.  (Patterns that are not regular expressions stop the daemon
    at start: ``odal.daemon.rounds.pipeline_check``.)"""


def patterns(train_config) -> tuple[list[str], list[str]]:
    """The config's (update_trainable_variables, freeze_variables) patterns; empty ones are ignored, as slim did."""
    return ([p for p in train_config.update_trainable_variables if p],
            [p for p in train_config.freeze_variables if p])


def select(variables: list, include: list[str], exclude: list[str]) -> list:
    """The variables the patterns let train, in their order."""
    return [v for v in variables
            if (not include or any(re.search(p, v.name) for p in include))
            and not any(re.search(p, v.name) for p in exclude)]


def summary(variables: list, include: list[str], exclude: list[str]) -> dict | None:
    """What the patterns did, for the round's result and log: counts, and patterns that matched no variable (a
    TF1-era name such as ``FeatureExtractor/MobilenetV2`` matches nothing in a Keras model).  None without patterns."""
    if not include and not exclude:
        return None
    chosen = select(variables, include, exclude)
    names = [v.name for v in variables]
    return {"trained": len(chosen), "frozen": len(variables) - len(chosen),
            "trained_weights": int(sum(v.shape.num_elements() for v in chosen)),
            "frozen_weights": int(sum(v.shape.num_elements() for v in variables) -
                                  sum(v.shape.num_elements() for v in chosen)),
            "unmatched": [p for p in include + exclude if not any(re.search(p, name) for name in names)]}


class TrainableView:
    """``model`` for ``model_lib_v2.eager_train_step``, whose ``trainable_variables`` are those the patterns let
    train; everything else, read or set (the step sets ``_is_training``), is the model's own."""

    def __init__(self, model, include: list[str], exclude: list[str]) -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_include", include)
        object.__setattr__(self, "_exclude", exclude)

    @property
    def trainable_variables(self) -> list:
        chosen = select(self._model.trainable_variables, self._include, self._exclude)
        if not chosen and self._model.trainable_variables:
            raise FreezeError(f"train_config: update_trainable_variables {self._include} and freeze_variables "
                              f"{self._exclude} leave no variable to train")
        return chosen

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __setattr__(self, name: str, value) -> None:
        setattr(self._model, name, value)
