"""``make bench``: throughput of centralized vs in-process CliCooper split training, measured side by side.

``python -m benchmarks.inprocess [--threads 1]``.

Each repeat trains the same model for the same steps on the same batches, interleaving the variants
(centralized, split, split + defenses …) so machine noise hits all of them alike; we report the median of
``--repeats`` samples/s and the ratios. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from clicooper.config import RunConfig, make_config
from clicooper.config.presets import PRESETS
from clicooper.core.privacy import build_privacy
from clicooper.core.setup import resolve_run
from clicooper.data import epoch_order, load_dataset
from clicooper.models.blueprint import blueprint_for
from clicooper.privacy.runtime import NO_PRIVACY
from clicooper.training import Session
from clicooper.training.provenance_hooks import default_hooks


def _centralized(cfg: Any, ds: Any, batches: list[torch.Tensor]) -> float:
    model = blueprint_for(cfg, ds.input_shape, ds.num_classes).model
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    t0 = time.perf_counter()
    for ids in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(ds.x_train[ids]), ds.y_train[ids]).backward()
        opt.step()
    return sum(len(b) for b in batches) / (time.perf_counter() - t0)


def _split(cfg: Any, ds: Any, batches: list[torch.Tensor], run_dir: Path) -> tuple[float, dict[str, int]]:
    cfg, bp = resolve_run(cfg, num_train=len(ds.train_ids(cfg.train_range)), input_shape=ds.input_shape,
                          num_classes=ds.num_classes)
    privacy = build_privacy(cfg, run_dir, ds, bp, new_run=True) if cfg.defense != "none" else NO_PRIVACY
    s = Session(cfg, ds, run_dir, blueprint=bp, privacy=privacy)
    hooks = None
    if cfg.provenance:
        hooks = default_hooks(cfg, run_dir, s, new_run=True)
        if hooks is not None:
            hooks.on_round_start(0, s.parties)
    s.net.take_bytes()
    t0 = time.perf_counter()
    for step, ids in enumerate(batches):
        s.net.send_all(s.do.start_step(0, step, ids))
        s.net.run_until_idle()
    rate = sum(len(b) for b in batches) / (time.perf_counter() - t0)
    return rate, s.net.take_bytes()


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.inprocess", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--model", default="fmnist-cnn")
    ap.add_argument("--trainers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--preset", default="private-accurate",
                    help="also time this privacy preset, undefended and defended on its own model ('' to skip)")
    return ap


def variants(args: argparse.Namespace) -> dict[str, RunConfig]:
    """The split configurations timed beside the centralized reference (``preset_*`` with ``--preset``)."""
    base = dict(dataset=args.dataset, model=args.model, trainers=args.trainers, batch_size=args.batch_size,
                device="cpu", provenance=False)
    out = {
        "split": make_config(**base),
        "split_clicooper_defense": make_config(**base, defense="clicooper", dp={"sigma": 0.5, "clip_norm": 1.0}),
        "split_provenance": make_config(**(base | {"provenance": True})),
    }
    if args.preset:
        if args.preset not in PRESETS:
            raise SystemExit(f"unknown preset {args.preset!r}; choose from {', '.join(PRESETS)}")
        preset_model = PRESETS[args.preset].model
        # the preset's model without any defense, then the preset itself (model, σ, labels)
        out["preset_model_split"] = make_config(**(base | {"model": preset_model}))
        out["preset_defended"] = make_config(**(base | {"model": preset_model}), preset=args.preset)
    return out


def measure(configs: dict[str, RunConfig], ds: Any, batches: list[torch.Tensor], repeats: int,
            ) -> tuple[dict[str, list[float]], dict[str, int]]:
    """samples/s of every repeat, centralized then each split variant in turn; the plain split's bytes per cut."""
    cfg0 = configs["split"]
    rates: dict[str, list[float]] = {"centralized": []} | {k: [] for k in configs}
    nbytes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        _centralized(cfg0, ds, batches[:3])  # warm-up
        for rep in range(repeats):
            rates["centralized"].append(_centralized(cfg0, ds, batches))
            for name, cfg in configs.items():
                r, b = _split(cfg, ds, batches, Path(tmp) / f"{name}-{rep}")
                rates[name].append(r)
                if name == "split":
                    nbytes = b
    return rates, nbytes


def summary(args: argparse.Namespace, rates: dict[str, list[float]], nbytes: dict[str, int], n: int,
            preset_model: str | None) -> dict[str, Any]:
    """Medians and the ratios the README quotes (``n``: samples per repeat)."""
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {
        "model": args.model, "dataset": args.dataset, "trainers": args.trainers, "batch_size": args.batch_size,
        "steps_per_repeat": args.steps, "repeats": args.repeats, "threads": torch.get_num_threads(),
        "samples_per_s_median": med, "samples_per_s_all": rates,
        "split_vs_centralized": med["split"] / med["centralized"],
        "defended_vs_split": med["split_clicooper_defense"] / med["split"],
        "provenance_vs_split": med["split_provenance"] / med["split"],
        "bytes_per_sample_per_cut": {k: v / n for k, v in nbytes.items()},
    }
    if preset_model is not None:
        result |= {
            "preset": args.preset, "preset_model": preset_model,
            # what the preset's mechanisms (keyed noise, clip, label codec) cost on its own architecture
            "preset_defended_vs_preset_model_split": med["preset_defended"] / med["preset_model_split"],
            # the preset as shipped against the undefended reference split
            "preset_defended_vs_split": med["preset_defended"] / med["split"],
        }
    return result


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print JSON."""
    args = _parser().parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    configs = variants(args)  # first: an unknown preset is refused before any data is loaded
    torch.manual_seed(0)
    ds = load_dataset(args.dataset)
    order = epoch_order(ds.train_ids(None), seed=0, epoch=0)
    batches = [order[i * args.batch_size : (i + 1) * args.batch_size] for i in range(args.steps)]
    rates, nbytes = measure(configs, ds, batches, args.repeats)
    preset_model = PRESETS[args.preset].model if args.preset else None
    print(json.dumps(summary(args, rates, nbytes, sum(len(b) for b in batches), preset_model), indent=2))


if __name__ == "__main__":
    main()
