"""Builds the DO's privacy mechanisms for a run from its config (see :mod:`clicooper.privacy.runtime`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from clicooper.config import RunConfig
from clicooper.data import Dataset

#: default of ``build_privacy(prefetch=)``: draw the next batch's noise on a background thread (True),
#: never (False), or when a CPU core is left over by torch's intra-op threads (None: a background thread
#: on an oversubscribed CPU only competes with the step it is meant to overlap)
PREFETCH_NOISE: bool | None = None


def spare_core() -> bool:
    """Whether this process may use more CPU cores than torch's intra-op threads take."""
    import torch

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return cores > torch.get_num_threads()


def build_privacy(
    config: RunConfig, run_dir: Path, dataset: Dataset, *, new_run: bool, prefetch: bool | None = None
) -> dict[str, Any]:
    """Return ``{"protector", "grad_protector", "label_encoder", "label_noiser", "epsilon_after", …}``.

    With activation protection, the cut shape comes from the run's plan (to derive an unset σ and record
    the noise/signal ratio), and with ``prefetch`` (default :data:`PREFETCH_NOISE`: when a core is spare)
    the protector prefetches the noise of the DO's next batch, predicted from the public epoch order
    (``training.loop.epoch_order``). The values are the same either way. Call ``result["close"]()`` (when
    not ``None``) at the end of training, also on error, to stop the prefetch thread.
    """
    from clicooper.privacy.runtime import mechanisms_for_run

    cut_shape = schedule = None
    if config.protect_activations:
        from clicooper.privacy.defaults import cut_shape_for

        cut_shape = cut_shape_for(config, dataset)
        if prefetch is None:
            prefetch = spare_core() if PREFETCH_NOISE is None else PREFETCH_NOISE
        if prefetch and config.batch_size is not None:
            from clicooper.privacy.prefetch import EpochSchedule
            from clicooper.training.loop import epoch_order

            train_ids = dataset.train_ids(config.train_range)
            seed = config.seed

            def order_of(r: int) -> Any:
                return epoch_order(train_ids, seed=seed, epoch=r)

            schedule = EpochSchedule(order_of, batch_size=config.batch_size, epochs=config.epochs)
    return mechanisms_for_run(
        config, run_dir, dataset.num_classes, new_run=new_run, cut_shape=cut_shape, schedule=schedule
    )
