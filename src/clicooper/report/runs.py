"""The two runs a report compares: their header facts (config, accuracy, DO FLOP share, ε reports) and
whether the baseline is a fair undefended counterpart of the run (docs/design/metrics.md#informative-figures: same data and seed).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from clicooper import jsonbound
from clicooper.config.defenses import defense_kinds_of, defense_summary
from clicooper.errors import ConfigError, RunDirError

#: Config fields that must match between a run and its baseline (docs/design/metrics.md#informative-figures: same data and seed). The model
#: may differ only on request (``baseline_model``: e.g. a private architecture against the undefended
#: reference ``fmnist-cnn``, issue 5); the report then says so in its header.
MUST_MATCH = ("dataset", "seed")
#: Fields that should match; a difference is reported as a warning.
SHOULD_MATCH = ("trainers", "topology", "epochs", "train_range", "observe", "observe_count", "batch_size", "lr",
                "lr_schedule", "optimizer", "weight_decay", "momentum")

Progress = Callable[[str], None]


def read_json(path: Path) -> Any:
    """Parsed JSON of a run-directory file; :class:`RunDirError` when it is missing or unreadable."""
    try:
        return jsonbound.load_file(path)
    except FileNotFoundError:
        raise RunDirError(f"{path} not found; is {path.parent} a complete run directory?") from None
    except (OSError, ValueError) as e:
        raise RunDirError(f"{path} is unreadable ({e}); the run directory is corrupt") from e


def run_summary(run_dir: Path) -> dict[str, Any]:
    """Header facts of a run: config, accuracy, DO FLOP share, ε reports (each with its 'covers')."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} not found")
    cfg = read_json(run_dir / "config.json")
    plan = read_json(run_dir / "plan.json")
    metrics = read_json(run_dir / "metrics.json") if (run_dir / "metrics.json").is_file() else {}
    epochs = metrics.get("epochs") or []
    acc = metrics.get("final_test_acc", epochs[-1].get("test_acc") if epochs else None)
    privacy = read_json(run_dir / "privacy.json") if (run_dir / "privacy.json").is_file() else None
    eps = []
    for r in (privacy or {}).get("reports", []):
        eps.append({"epsilon": r.get("epsilon"), "delta": r.get("delta"), "covers": r.get("covers"),
                    "released": r.get("released"), "accountant": r.get("accountant")})
    return {
        "run": str(run_dir), "dataset": cfg.get("dataset"), "model": cfg.get("model"),
        "trainers": cfg.get("trainers"), "topology": cfg.get("topology"), "epochs": cfg.get("epochs"),
        "seed": cfg.get("seed"), "defense": defense_summary(defense_kinds_of(cfg)),
        "defenses": defense_kinds_of(cfg), "train_range": cfg.get("train_range"),
        "test_acc": acc, "acc_per_epoch": {int(m["epoch"]): m.get("test_acc") for m in epochs if "epoch" in m},
        "do_flop_share": plan.get("do_flop_share"), "epsilon": eps,
        "privacy_note": (privacy or {}).get("note"), "config": cfg,
    }


def check_comparable(run: dict[str, Any], base: dict[str, Any], baseline_model: str | None = None) -> list[str]:
    """Raise :class:`ConfigError` unless ``base`` is the undefended counterpart of ``run`` (same data, seed
    and model or ``baseline_model``); return warnings for the :data:`SHOULD_MATCH` fields that differ."""
    bad = [k for k in MUST_MATCH if run["config"].get(k) != base["config"].get(k)]
    want_model = baseline_model or run["config"].get("model")
    if base["config"].get("model") != want_model:
        bad.append("model")
    if bad:
        raise ConfigError(
            "the baseline must be trained with the same data and seed and the same model (or the one given "
            "as the baseline model); they differ in "
            + ", ".join(f"{k} ({run['config'].get(k)!r} vs {base['config'].get(k)!r})" for k in bad)
            + " — retrain the baseline or omit --baseline to train one")
    if defense_kinds_of(base["config"]):
        raise ConfigError(f"the baseline {base['run']} has defences {', '.join(defense_kinds_of(base['config']))}; "
                          "it must be undefended (no defences) — omit --baseline to train one")
    return [f"run and baseline differ in {k}: {run['config'].get(k)!r} vs {base['config'].get(k)!r}"
            for k in SHOULD_MATCH if run["config"].get(k) != base["config"].get(k)]
