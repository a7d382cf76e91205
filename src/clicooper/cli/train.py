"""``clicooper train``, ``evaluate``, ``predict``, ``plan`` and ``export``: each calls one library function.

Library imports that pull in torch (≈2–3 s) stay inside the commands ("lazy: torch"), so that
``clicooper --help`` and every other command's start-up do not pay for them.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from clicooper.cli.common import SET_HELP, config_from_options, emit_json, err, guarded, out
from clicooper.config.presets import PRESETS


def plan_table(plan: Any) -> Table:
    """A rich table of a partition plan."""
    from clicooper.models.partition import balance_warning  # lazy: torch (the caller has a plan: loaded)

    t = Table(title=f"plan: {plan.model}, {plan.topology}, {plan.trainers} trainer(s)")
    rows = [(p.party, " ".join(p.layer_names), f"{p.params:,}", f"{p.flops:,}", f"{p.flop_share:.1%}")
            for p in plan.parties]
    t.add_column("party", no_wrap=True, min_width=max(len(r[0]) for r in rows))
    t.add_column("layers", ratio=1)  # the one column that wraps when the terminal is narrow
    for i, c in enumerate(("params", "fwd+bwd FLOPs/sample", "FLOP share"), start=2):
        # numbers are never wrapped mid-digit nor cut: the column is as wide as its widest figure
        t.add_column(c, justify="right", no_wrap=True, min_width=max(len(r[i]) for r in rows))
    for r in rows:
        t.add_row(*r)
    t.caption = f"data owner's share of training FLOPs: {plan.do_flop_share:.1%}"
    if (warning := balance_warning(plan)) is not None:
        t.caption += "\n" + warning
        t.caption_style, t.caption_justify = "yellow", "left"
    return t


def presets_epilog() -> str:
    """The epilog of ``clicooper train --help``: the privacy presets and the default σ."""
    lines = ["Privacy presets (--preset NAME; all --defense clicooper, clip_norm 1; figures measured in "
             "docs/research/privacy-frontier.md at 15k rows, 3 epochs, one seed):"]
    lines += [f"{p.name}: {p.description}" for p in PRESETS.values()]
    lines.append("Without --sigma, --target-epsilon or a preset, --defense dp/clicooper uses "
                 "σ = noise_ratio/√d (d = values per sample at the cut; noise_ratio 1 unless --set dp.noise_ratio=ρ).")
    lines.append("Every other config field (optimizer, weight_decay, micro_batches, wire_dtype, data.workers, "
                 "dp.clip_norm, labels.expansion, …) is set with --set KEY=VALUE; `clicooper fields` lists them all "
                 "with their defaults and descriptions.")
    return "\n\n".join(lines)


def _preset_help() -> str:
    return (" | ".join(PRESETS) + ": named privacy preset (model, defense clicooper, σ); "
            "explicit options and config fields override it. See below.")


_MODEL_FILE_HELP = ("model.toml / model.json: your own layers (an allowlist of torch.nn types and residual "
                    "blocks; docs/reference/cli.md 'Your own model'), instead of --model")
_DATASET_HELP = ("fashion-mnist | digits | npz:PATH | cifar10:DIR | cifar100:DIR | cifar100-coarse:DIR "
                 "(official binary version) | imagefolder:DIR | csv:PATH | csv:TRAIN.csv,TEST.csv | "
                 "python:pkg.module:fn (your own function returning (x, y) tensors or a torch Dataset; with "
                 "--resume, name it again)")
_LABEL_COLUMN_HELP = ("data.label_column: the class column of a csv: dataset (required there; the other data "
                      "options: --set data.test_fraction=…, data.image_size, data.image_mode, data.workers, …)")

def _default(name: str) -> object:
    """The run config's default of field ``name``, so that --help cannot drift from it."""
    from clicooper.config import RunConfig

    return RunConfig.model_fields[name].default


def _help(name: str, default: str | None = None) -> str:
    """An option's help from its config field: the field's description and its default, so neither drifts."""
    from clicooper.config import RunConfig

    field = RunConfig.model_fields[name]
    return f"{field.description} (default {default if default is not None else field.default})"


_EPOCHS_HELP = _help("epochs")
_BATCH_SIZE_HELP = "samples per optimiser step (default 128, or 16 on datasets under 6,400 training samples)"
_LR_HELP = _help("lr", f"{_default('lr'):g}")
_TRAINERS_HELP = _help("trainers")
_CAPACITIES_HELP = "comma-separated relative trainer capacities, e.g. 1,2,1: the plan balances layers by them"
_TOPOLOGY_HELP = _help("topology")
_MODEL_HELP = "built-in model name (default fmnist-cnn); `clicooper models` lists them, one line each"

# ------------------------------------------------------------------------------------------------------
@guarded
def train(
    out_dir: Path = typer.Option(None, "--out", help="new run directory (never overwritten)"),
    dataset: str = typer.Option(None, help=_DATASET_HELP),
    label_column: str = typer.Option(None, help=_LABEL_COLUMN_HELP),
    stream: bool = typer.Option(None, "--stream/--no-stream", help="data.stream: read training samples from their files per "
                                "batch with DataLoader workers (data too large for memory; same weights)"),
    model: str = typer.Option(None, help=_MODEL_HELP),
    model_file: Path = typer.Option(None, "--model-file", help=_MODEL_FILE_HELP),
    trainers: int = typer.Option(None, help=_TRAINERS_HELP),
    capacities: str = typer.Option(None, help=_CAPACITIES_HELP),
    topology: str = typer.Option(None, help=_TOPOLOGY_HELP),
    epochs: int = typer.Option(None, help=_EPOCHS_HELP),
    batch_size: int = typer.Option(None, help=_BATCH_SIZE_HELP),
    lr: float = typer.Option(None, help=_LR_HELP),
    seed: int = typer.Option(None, help="public seed (weights init, shuffling); never derives a secret"),
    provenance: bool = typer.Option(
        None, "--provenance/--no-provenance", help="keep the signed ledger and watermark (default on). Its "
        "watermark keys are fresh secrets, so two runs differ; with --no-provenance and --defense none the same "
        "--seed gives the same weights (docs/reference/cli.md 'Which runs are reproducible')",
    ),
    train_range: str = typer.Option(None, help="START:END slice of the training split the DO trains on"),
    record_observations: bool = typer.Option(None, "--record-observations/--no-record-observations", help="record what trainers receive "
                                             "(for `clicooper report`; --set observe=all|subset, observe_count, "
                                             "observe_dtype choose how much)"),
    device: str = typer.Option(None, help="auto | cpu | cuda (per party: --set party_devices.T1=cuda)"),
    defense: str = typer.Option(None, help="none | dp | labels | clicooper"),
    defense_specs: list[str] = typer.Option(
        None, "--with", help="a defence by its spec, KIND[:key=value,…], repeatable: any registered kind, "
        "including installed packages' (e.g. --with keyed-noise:sigma=0.1 --with nopeek:weight=0.5 --with "
        "head-dpsgd:noise_multiplier=1); `clicooper fields` lists each kind's settings",
    ),
    preset: str = typer.Option(None, help=_preset_help()),
    sigma: float = typer.Option(None, help="dp.sigma: noise std / clip norm; 0 = clip only (ε = ∞)"),
    target_epsilon: float = typer.Option(
        None, help="dp.target_epsilon: choose the smallest σ with this per-release ε (head fixed) after --epochs"
    ),
    max_epsilon: float = typer.Option(
        None, help="stop cleanly (saved, resumable) before an epoch that would take any ε of privacy.json above "
        "this; a limit of this invocation: resume with a larger one to continue",
    ),
    config_file: Path = typer.Option(None, "--config", help="run.toml / run.json with the same fields"),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
    resume: Path = typer.Option(None, "--resume", help="continue an interrupted run directory"),
    dismiss_detection: bool = typer.Option(
        False, "--dismiss-detection", help="with --resume: continue past a detection stop, live detection off "
        "for this invocation (the DO reviewed the accusation; docs/malicious.md)",
    ),
    threads: int = typer.Option(
        None, "--threads", help="torch's intra-op CPU threads for this invocation (default: torch's own, one per "
        "core); recorded in metrics.json beside the background workers (transcript hashing, noise prefetch)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object as the last stdout line"),
) -> None:
    """Train a model cooperatively (data owner + K trainers) and write a run directory."""
    from clicooper import rundir  # lazy: torch

    cfg, data = None, None
    if dismiss_detection and resume is None:
        raise typer.BadParameter("--dismiss-detection continues a run stopped by a detection: use it with --resume")
    if resume is not None:
        if sets:
            raise typer.BadParameter("--resume continues the run's own config; drop --set")
        data = dataset  # the run's own python: data, named again (never run from its config.json)
    else:
        if out_dir is None:
            raise typer.BadParameter("--out RUN is required (or --resume RUN)")
        cfg = config_from_options(
            config_file, dataset=dataset, label_column=label_column, stream=stream, model=model,
            model_file=model_file, trainers=trainers, capacities=capacities, topology=topology, epochs=epochs,
            batch_size=batch_size, lr=lr, seed=seed, provenance=provenance, train_range=train_range,
            record_observations=record_observations, device=device, defense=defense, defense_specs=defense_specs,
            preset=preset, sigma=sigma, target_epsilon=target_epsilon, sets=sets,
        )
        if dataset is not None and dataset.startswith("python:"):
            data = dataset  # named on this command line: the DO's own function runs (never from --config)
    run = _train_with_progress(cfg, out_dir, resume, max_epsilon, dismiss_detection, data, threads)
    metrics = rundir.read_json(run.path / rundir.METRICS)
    if not as_json:
        err.print(plan_table(run.plan))
    summary, noise = _train_summary(run, metrics)
    if as_json:
        emit_json(summary)
    else:
        _print_train_summary(summary, noise, run.path)
    if (summary.get("stopped") or {}).get("reason") == "detection":
        raise typer.Exit(3)  # stopped by the DO's live detection: saved, resumable (docs/malicious.md)


def _train_with_progress(cfg: Any, out_dir: Path | None, resume: Path | None, max_epsilon: float | None,
                         dismiss_detection: bool = False, data: str | None = None, threads: int | None = None) -> Any:
    """Run training with a progress bar and one line per epoch on stderr; returns the run handle."""
    from clicooper.training import train as run_train  # lazy: torch

    prog = Progress(
        TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"), console=err, transient=False,
    )
    task = prog.add_task("train", total=None, epoch="-", info="")

    def progress(epoch: int, step: int, steps: int) -> None:
        prog.start()  # shown from the first step on (idempotent): an error before training prints its line alone
        prog.update(task, completed=step, total=steps, epoch=epoch)

    def on_epoch(m: dict[str, Any]) -> None:
        prog.start()
        prog.update(task, info=f"loss {m['loss']:.4f} test acc {m['test_acc']:.4f}")
        prog.console.print(
            f"epoch {m['epoch']}: loss {m['loss']:.4f}  train acc {m['train_acc']:.4f}  "
            f"test acc {m['test_acc']:.4f}  {m['samples_per_s']:.0f} samples/s"
        )

    try:
        return run_train(cfg, out=out_dir, resume=resume, progress=progress, on_epoch=on_epoch,
                         max_epsilon=max_epsilon, dismiss_detection=dismiss_detection, data=data, threads=threads)
    finally:
        if prog.live.is_started:  # never started: nothing to close (and no blank line)
            prog.stop()


def _train_summary(run: Any, metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The JSON summary of a finished (or stopped) training run, and its activation noise record."""
    summary = {
        "run": str(run.path), "test_acc": metrics.get("final_test_acc"), "epochs": len(metrics["epochs"]),
        "do_flop_share": run.plan.do_flop_share, "defense": run.config.defense,
    }
    if "privacy" in (metrics["epochs"][-1] if metrics["epochs"] else {}):
        summary["privacy"] = metrics["epochs"][-1]["privacy"]
    summary["preset"] = run.config.preset
    if metrics.get("stopped"):
        summary["stopped"] = metrics["stopped"]
    noise = _activation_noise(run.path)
    if noise is not None:
        summary["sigma"] = noise.get("sigma_derivation") or {"sigma": noise.get("sigma")}
    return summary, noise


def _print_train_summary(summary: dict[str, Any], noise: dict[str, Any] | None, run_path: Path) -> None:
    """The human form of the summary: how σ was chosen, why training stopped, the test accuracy."""
    if noise is not None and noise.get("sigma_derivation"):
        from clicooper.privacy.defaults import describe_sigma  # lazy: dp_accounting + scipy (≈1 s)

        err.print(describe_sigma(noise["sigma_derivation"]), highlight=False)
    st = summary.get("stopped")
    if st and st.get("reason") == "detection":
        err.print(f"stopped by the DO's live detection in epoch {st['before_epoch']} (step {st['step']}): "
                  f"{st['detector']} flagged {', '.join(st['suspects'])}: {st['evidence'].get('summary', '')}. "
                  f"{st['completed_epochs']} epoch(s) are saved; the signed accusation is in the ledger "
                  f"(clicooper verify {run_path}); continue with: clicooper train --resume {run_path} "
                  "[--dismiss-detection]", highlight=False)
    elif st:
        err.print(
            f"stopped before epoch {st['before_epoch']}: ε ({st['covers']}) would reach "
            f"{st['epsilon_after_next_epoch']:.4g} > --max-epsilon {st['max_epsilon']:g}. "
            f"{st['completed_epochs']} epoch(s) are saved; continue with: clicooper train --resume "
            f"{run_path} --max-epsilon LARGER", highlight=False)
    if summary["test_acc"] is not None:
        out.print(f"test accuracy {summary['test_acc']:.4f}  (run: {run_path})")


def _activation_noise(run_dir: Path) -> dict[str, Any] | None:
    """``activation_noise`` of ``RUN/privacy.json`` (σ, clip norm, how σ was chosen), if any."""
    from clicooper import rundir  # lazy: torch

    f = Path(run_dir) / rundir.PRIVACY
    if not f.is_file():
        return None
    noise = rundir.read_json(f).get("activation_noise")
    return noise if isinstance(noise, dict) else None


_RUN_DATASET_HELP = "the run's own python:pkg.module:fn data, named again (never run from its config.json)"


@guarded
def evaluate(
    run_dir: Path = typer.Argument(..., help="run directory"),
    dataset: str = typer.Option(None, "--dataset", help=_RUN_DATASET_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Test accuracy of a run from its saved files alone (local inference path, no noise)."""
    from clicooper.runs import load_run  # lazy: torch

    run = load_run(run_dir, data=dataset)
    ds = run.dataset()
    acc = run.accuracy(ds.x_test, ds.y_test)
    res = {"run": str(run_dir), "test_acc": acc, "n_test": len(ds.y_test), "inference_path": "local"}
    if as_json:
        emit_json(res)
    else:
        out.print(f"test accuracy {acc:.4f} on {len(ds.y_test)} samples (local path: no noise needed)")


@guarded
def predict(
    run_dir: Path = typer.Argument(...),
    input_file: Path = typer.Option(..., "--input", help="what to predict: a .npy / .npz array (N, *input_shape) "
                                    "or one sample; raw rows of a .csv (csv: runs: encoded as in training); a "
                                    "folder of image files (imagefolder: runs: decoded as in training)"),
    key: str = typer.Option(None, "--key", help="the array of a .npz that holds several"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Predict classes through the run's own preprocessing (local path; labels decoded automatically)."""
    from clicooper.runs import load_run  # lazy: torch

    run = load_run(run_dir)
    x, names = run.read_inputs(input_file, key=key)
    probs = run.predict(x)
    pred = probs.argmax(1).tolist()
    named = run.config.dataset != "digits" and run.config.dataset.partition(":")[0] not in ("python", "given")
    classes = run.dataset().class_names if named else None  # the DO's own data is not reopened for its names
    res: dict[str, Any] = {"predictions": pred,
                           "probabilities": [[round(float(v), 6) for v in row] for row in probs]}
    if input_file.is_dir():
        res["files"] = names
    if classes:
        res["class_names"] = [classes[i] for i in pred]
    if as_json:
        emit_json(res)
    else:
        for i, p in enumerate(pred):
            out.print(f"{names[i]}: class {p}" + (f" ({classes[p]})" if classes else "") + f"  p={float(probs[i, p]):.3f}",
                      highlight=False)


@guarded
def plan(
    dataset: str = typer.Option("fashion-mnist", help=_DATASET_HELP),
    label_column: str = typer.Option(None, help=_LABEL_COLUMN_HELP),
    model: str = typer.Option(None, help=_MODEL_HELP),
    model_file: Path = typer.Option(None, "--model-file", help=_MODEL_FILE_HELP),
    trainers: int = typer.Option(2, help=_TRAINERS_HELP),
    capacities: str = typer.Option(None, help=_CAPACITIES_HELP),
    topology: str = typer.Option("u-shape", help=_TOPOLOGY_HELP),
    defense: str = typer.Option("none", help="none | dp | labels | clicooper"),
    out_file: Path = typer.Option(None, "--out", help="also write the plan as JSON here"),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Show the partition plan only (layers, parameters, counted FLOPs per party)."""
    from clicooper import rundir  # lazy: torch, with the two below
    from clicooper.data.given import dataset_from
    from clicooper.models.blueprint import blueprint_for
    from clicooper.provenance.commitments import stamp_architecture

    cfg = config_from_options(None, dataset=dataset, model=model, model_file=model_file, trainers=trainers,
                              capacities=capacities, topology=topology, defense=defense, label_column=label_column,
                              sets=sets)
    ds = dataset_from(cfg.dataset, options=cfg.data)  # a python: name on this command line is the user's own
    bp = blueprint_for(cfg, ds.input_shape, ds.num_classes)
    stamp_architecture(bp.plan.extra, bp.model)  # as in a run's plan.json
    p = bp.plan
    if out_file:
        rundir.write_json(out_file, asdict(p))
    if as_json:
        emit_json(asdict(p))
    else:
        out.print(plan_table(p))


@guarded
def export(
    run_dir: Path = typer.Argument(...),
    out_file: Path = typer.Option(..., "--out", help="model.safetensors to write (not overwritten)"),
) -> None:
    """Export the delivered model as one plain PyTorch state dict (safetensors)."""
    from clicooper.export import export_run  # lazy: torch

    info = export_run(run_dir, out_file)
    out.print(f"wrote {out_file}: {info}")
