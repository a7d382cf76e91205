"""The DO's privacy mechanisms for a run, wired to its data order (:mod:`clicooper.privacy.runtime`)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from clicooper.config import RunConfig
from clicooper.data import Dataset, epoch_order
from clicooper.models.blueprint import Blueprint
from clicooper.privacy.prefetch import EpochSchedule
from clicooper.privacy.runtime import PrivacyMechanisms, mechanisms_for_run

#: default of ``build_privacy(prefetch=)``: draw the next batch's noise on a background thread (True),
#: never (False), or when a CPU core is left over by torch's intra-op threads (None: a background thread
#: on an oversubscribed CPU only competes with the step it is meant to overlap)
PREFETCH_NOISE: bool | None = None


def spare_core() -> bool:
    """Whether this process may use more CPU cores than torch's intra-op threads take."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return cores > torch.get_num_threads()


def build_privacy(
    config: RunConfig, run_dir: Path, dataset: Dataset, blueprint: Blueprint, *, new_run: bool,
    prefetch: bool | None = None,
) -> PrivacyMechanisms:
    """The DO's mechanisms for ``config`` (resolved: batch size and σ).

    The cut shape comes from the run's blueprint (recorded with the noise/signal ratio), and with
    ``prefetch`` (default :data:`PREFETCH_NOISE`: when a core is spare) the protector prefetches the noise
    of the DO's next batch, predicted from the public epoch order (:func:`clicooper.data.epoch_order`).
    The values are the same either way. Call ``.close()`` at the end of training, also on error.
    """
    schedule = None
    if config.protect_activations:
        if prefetch is None:
            prefetch = spare_core() if PREFETCH_NOISE is None else PREFETCH_NOISE
        if prefetch and config.batch_size is not None:
            train_ids, seed = dataset.train_ids(config.train_range), config.seed

            def order_of(r: int) -> torch.Tensor:
                return epoch_order(train_ids, seed=seed, epoch=r)

            schedule = EpochSchedule(order_of, batch_size=config.batch_size, epochs=config.epochs)
    cut = blueprint.cut_shape if config.protect_activations else None
    return mechanisms_for_run(config, run_dir, dataset.num_classes, new_run=new_run, cut_shape=cut, schedule=schedule)
