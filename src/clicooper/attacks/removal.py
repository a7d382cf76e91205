"""Watermark removal (DESIGN §7, issue 6): an outsider holding the delivered model and 10 % of the data
attacks the dynamic chained marks; the owners then try to prove ownership of what is left.

The **attacker** reads only what an outsider with a leaked model has: ``config.json``, ``plan.json`` and
``RUN/model/*.safetensors`` (via :func:`clicooper.load_run`), plus its own labelled slice of the data —
the *last* ``fraction`` of the DO's training range (e.g. ``0:20000`` → samples 18,000–19,999): in
distribution and seen in training, the attacker's best case. It never opens ``keys/`` or ``secrets/``.

The **owners** (the evaluator) then reveal the stages whose marks they expect in the final weights
(:func:`clicooper.cli_provenance.final_retained_stages`, with their own key files) and run
:func:`clicooper.provenance.prove` per marked segment on the attacked model (aligned to the committed
weights when the alignment is strong). For every attack we report the attacked model's test accuracy and,
per marked position, the pooled verdict (wrong bits / N, τ, p-value). "Destroyed" = more than
``destroyed_drop`` (10 pt) of accuracy lost: a mark that dies only there costs the attacker the model.

Attacks: fine-tuning ``epochs`` epochs (last layer only / all layers / last layer re-initialised and
retrained), magnitude pruning (global and per layer, weights only, biases kept), int8 per-tensor
symmetric quantisation (dequantised), unit permutation + per-channel positive rescaling across every
ReLU (function preserving; checked), and overwriting with the attacker's own mark (a fresh
:class:`~clicooper.provenance.Identity`, the same capacity plan and scheme, embedded while fine-tuning on
its data, then ``embed_until_zero``). Plus the false-claim check: ``unrelated`` models of the same
architecture, independently initialised and trained briefly on the attacker's data, proven against the
owners' reveals (target: none passes, mean BER ≈ 0.5).

Entry point: ``RemovalAttack(**config).run(run_dir)`` or :func:`run_removal` (writes JSON if asked).
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from clicooper.attacks.base import AttackResult, LevelResult, register, require

PRUNE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.65, 0.7, 0.8, 0.9)
ALL_ATTACKS = ("none", "finetune-last", "finetune-all", "retrain-last", "prune-global", "prune-layer",
               "int8", "permute-rescale", "overwrite")


@dataclass(frozen=True)
class RemovalConfig:
    """Settings of the removal attack (validated)."""

    fraction: float = 0.1  # attacker's share of the DO's training range (its last part)
    epochs: int = 5  # fine-tuning epochs
    lr: float = 1e-3  # Adam
    batch_size: int = 64
    prune_levels: tuple[float, ...] = PRUNE_LEVELS
    attacks: tuple[str, ...] = ALL_ATTACKS
    unrelated: int = 20  # independently trained models for the false-claim check (0: skip)
    unrelated_epochs: int = 1
    overwrite_lambda: float = 1.0  # λ of the attacker's own mark (≥ the owners' 0.1: a stronger overwrite)
    destroyed_drop: float = 0.10  # accuracy loss that counts as "model destroyed"
    seed: int = 1234

    def __post_init__(self) -> None:
        require(0.0 < self.fraction <= 1.0, "fraction must be in (0, 1], e.g. 0.1")
        require(self.epochs >= 0 and self.unrelated >= 0 and self.unrelated_epochs >= 1,
                "epochs/unrelated must be ≥ 0 and unrelated_epochs ≥ 1")
        require(all(0.0 < p < 1.0 for p in self.prune_levels), "prune_levels must lie in (0, 1)")
        bad = [a for a in self.attacks if a not in ALL_ATTACKS]
        require(not bad, f"unknown removal attacks {bad}; choose from {', '.join(ALL_ATTACKS)}")


# ----------------------------------------------------------------------------------------- helpers


def _positions(handle: Any) -> dict[int, str]:
    return {pp.position: pp.party for pp in handle.plan.parties}


def _split_states(model: nn.Sequential, handle: Any) -> dict[int, dict[str, torch.Tensor]]:
    """Per-position state dicts of a (copied) full model, keys as in ``RUN/model/*.safetensors``."""
    from clicooper.models.partition import split_model

    mods = split_model(model, handle.plan)
    return {pos: {k: v.detach().clone() for k, v in mods[party].state_dict().items()}
            for pos, party in _positions(handle).items()}


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int = 2048) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x[i:i + bs]).argmax(1) == y[i:i + bs]).sum()) for i in range(0, len(x), bs))
    return hits / max(1, len(y))


def _linear_layers(model: nn.Sequential) -> list[int]:
    return [i for i, m in enumerate(model) if isinstance(m, nn.Linear | nn.Conv2d)]


def _train(model: nn.Module, params: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor, *, epochs: int,
           lr: float, bs: int, seed: int, extra_loss: Any = None) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(params, lr=lr)
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), bs):
            idx = order[i:i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            if extra_loss is not None:
                loss = loss + extra_loss()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def prune(model: nn.Sequential, level: float, *, per_layer: bool) -> nn.Sequential:
    """Copy of ``model`` with the ``level`` share of smallest-magnitude weights (not biases) set to zero,
    over all layers together (global) or in each layer separately."""
    out = copy.deepcopy(model)
    ws = [out[i].weight for i in _linear_layers(out)]
    with torch.no_grad():
        if per_layer:
            for w in ws:
                k = int(round(level * w.numel()))
                if k:
                    thr = w.abs().flatten().kthvalue(k).values
                    w[w.abs() <= thr] = 0.0
        else:
            allw = torch.cat([w.abs().flatten() for w in ws])
            k = int(round(level * allw.numel()))
            if k:
                thr = allw.kthvalue(k).values
                for w in ws:
                    w[w.abs() <= thr] = 0.0
    return out


def quantize_int8(model: nn.Module) -> nn.Module:
    """Per-tensor symmetric int8 quantisation of every parameter, dequantised back to float32."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            s = p.abs().max() / 127.0
            if s > 0:
                p.copy_(torch.clamp(torch.round(p / s), -127, 127) * s)
    return out


def permute_rescale(model: nn.Sequential, seed: int, *, scale_range: float = 4.0) -> nn.Sequential:
    """Function-preserving copy: every hidden layer's units permuted and scaled by a log-uniform positive
    factor in [1/scale_range, scale_range], the next layer's inputs permuted and divided accordingly
    (valid across ReLU, MaxPool and Flatten)."""
    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    layers = _linear_layers(out)
    with torch.no_grad():
        for a, b in zip(layers[:-1], layers[1:], strict=True):
            la, lb = out[a], out[b]
            units = la.weight.shape[0]
            perm = torch.randperm(units, generator=gen)
            s = torch.exp((torch.rand(units, generator=gen) * 2 - 1) * math.log(scale_range))
            shape = [-1] + [1] * (la.weight.dim() - 1)
            la.weight.copy_(la.weight[perm] * s[perm].reshape(shape))
            if la.bias is not None:
                la.bias.copy_(la.bias[perm] * s[perm])
            w = lb.weight
            if w.dim() == 4 or w.shape[1] == units:
                shp = [1, units] + [1] * (w.dim() - 2)
                w.copy_(w[:, perm] / s[perm].reshape(shp))
            else:  # Flatten after a conv: channel c owns a block of consecutive columns
                block = w.shape[1] // units
                w3 = w.reshape(w.shape[0], units, block)[:, perm] / s[perm].reshape(1, units, 1)
                w.copy_(w3.reshape(w.shape[0], -1))
    return out


# ----------------------------------------------------------------------------------------- owners' side


@dataclass
class Owners:
    """What the owners use to prove: reveals per marked position, the ledger and the committed segments."""

    ledger: Path
    reveals: dict[int, dict[str, Any]]  # position → reveal file object of the position's owner
    reference: dict[int, dict[str, torch.Tensor]]
    plan: dict[str, Any]  # plan.json extra["watermark"]

    @classmethod
    def load(cls, run_dir: Path) -> Owners:
        from clicooper import rundir
        from clicooper.cli_provenance import final_retained_stages, load_segments
        from clicooper.provenance import load_identity, make_reveal
        from clicooper.provenance.ledger import read_ledger

        ledger = run_dir / rundir.LEDGER
        require(ledger.is_file(), f"{ledger} not found: train the run with provenance on")
        entries, _ = read_ledger(ledger)
        reveals: dict[int, dict[str, Any]] = {}
        for party in entries[0].parties:  # type: ignore[union-attr]
            stages = final_retained_stages(ledger, party.name)
            if not stages:
                continue
            ident = load_identity(run_dir / rundir.KEYS / f"{party.name}.key")
            for pos in sorted({p for _, p in stages}):
                reveals[pos] = make_reveal(ident, ledger, [s for s in stages if s[1] == pos])
        plan = rundir.read_json(run_dir / rundir.PLAN)["extra"].get("watermark", {})
        return cls(ledger, reveals, load_segments(run_dir), plan)

    def verdicts(self, suspect: dict[int, dict[str, torch.Tensor]], *, align: bool = True) -> dict[str, Any]:
        """Per marked position: pooled prove verdict of that position's owner on ``suspect``."""
        from clicooper.errors import ConfigError, LedgerError
        from clicooper.provenance import prove

        out: dict[str, Any] = {}
        for pos, rv in sorted(self.reveals.items()):
            try:
                rep = prove([rv], self.ledger, suspect, reference=self.reference, align=align)
            except (ConfigError, LedgerError) as e:
                out[str(pos)] = {"error": str(e), "verdict": False}
                continue
            out[str(pos)] = {"verdict": rep.verdict, "wrong_bits": rep.wrong_bits, "n_bits": rep.n_bits,
                             "ber": rep.ber, "tau": rep.tau, "p_value": rep.p_value,
                             "false_claim_probability": rep.false_claim_probability, "aligned": rep.aligned,
                             "robust": bool(self.plan.get(str(pos), {}).get("robust", False)),
                             "num_params": self.plan.get(str(pos), {}).get("num_params")}
        return out


# ----------------------------------------------------------------------------------------- the attack


@register("removal")
class RemovalAttack:
    """Watermark removal by an outsider with the model and 10 % of the data (see module docstring)."""

    name: ClassVar[str] = "removal"
    knowledge: ClassVar[tuple[str, ...]] = ("model+10%-data",)

    def __init__(self, **config: Any) -> None:
        if "prune_levels" in config:
            config["prune_levels"] = tuple(config["prune_levels"])
        if "attacks" in config:
            config["attacks"] = tuple(config["attacks"])
        self._config = RemovalConfig(**config)

    @property
    def config(self) -> RemovalConfig:
        """The validated config."""
        return self._config

    def run(self, views: Any) -> AttackResult:
        """Run every configured removal attack on the run directory ``views`` (a path)."""
        from clicooper.runs import load_run

        cfg = self.config
        t0 = time.perf_counter()
        run_dir = Path(views)
        handle = load_run(run_dir)  # config.json, plan.json, model/*.safetensors: what leaked
        require(not handle.config.obfuscate_labels, "removal attack: runs with obfuscated labels are not "
                                                    "supported (the attacker would need the label codec)")
        ds = handle.dataset()
        ids = ds.train_ids(handle.config.train_range)
        k = max(1, int(round(cfg.fraction * len(ids))))
        a_ids = ids[-k:]
        xa, ya = ds.x_train[a_ids], ds.y_train[a_ids]
        xt, yt = ds.x_test, ds.y_test
        owners = Owners.load(run_dir)
        base = handle.full_model()
        base_acc = _accuracy(base, xt, yt)
        rows: list[dict[str, Any]] = []

        def record(attack: str, setting: Any, model: nn.Sequential, **extra: Any) -> None:
            acc = _accuracy(model, xt, yt)
            v = owners.verdicts(_split_states(model, handle))
            rows.append({"attack": attack, "setting": setting, "test_acc": acc, "acc_drop": base_acc - acc,
                         "destroyed": base_acc - acc > cfg.destroyed_drop, "positions": v, **extra})

        seed = cfg.seed
        for attack in cfg.attacks:
            if attack == "none":
                record("none", None, base)
            elif attack in ("finetune-last", "finetune-all", "retrain-last"):
                m = copy.deepcopy(base)
                last = m[_linear_layers(m)[-1]]
                if attack == "retrain-last":
                    torch.manual_seed(seed)
                    last.reset_parameters()
                params = list(m.parameters()) if attack == "finetune-all" else list(last.parameters())
                _train(m, params, xa, ya, epochs=cfg.epochs, lr=cfg.lr, bs=cfg.batch_size, seed=seed)
                record(attack, {"epochs": cfg.epochs, "lr": cfg.lr, "samples": k}, m)
            elif attack in ("prune-global", "prune-layer"):
                for lvl in cfg.prune_levels:
                    record(attack, lvl, prune(base, lvl, per_layer=attack == "prune-layer"))
            elif attack == "int8":
                record("int8", "per-tensor symmetric", quantize_int8(base))
            elif attack == "permute-rescale":
                m = permute_rescale(base, seed)
                with torch.no_grad():
                    base.eval(), m.eval()
                    diff = float((base(xt[:2048]) - m(xt[:2048])).abs().max())
                record("permute-rescale", "all hidden layers, scales in [1/4, 4]", m, max_logit_diff=diff,
                       unaligned=owners.verdicts(_split_states(m, handle), align=False))
            elif attack == "overwrite":
                m, own = self._overwrite(base, handle, xa, ya, seed)
                record("overwrite", {"epochs": cfg.epochs, "lambda": cfg.overwrite_lambda}, m,
                       attacker_mark=own)
        unrelated = self._unrelated(handle, owners, xa, ya, xt, yt) if cfg.unrelated else None
        info = {"run_dir": str(run_dir), "base_test_acc": base_acc,
                "attacker_data": {"range": [int(a_ids[0]), int(a_ids[-1]) + 1], "samples": k,
                                  "note": f"the last {cfg.fraction:.0%} of the DO's training range"},
                "owners": {str(p): [s["round"] for s in rv["stages"]] for p, rv in owners.reveals.items()},
                "rows": rows, "unrelated": unrelated, "config": asdict(cfg),
                "seconds": time.perf_counter() - t0}
        levels = _levels(rows, unrelated)
        return AttackResult("removal", levels, info)

    # overwrite: the attacker's own mark, same scheme ---------------------------------------------------
    def _overwrite(self, base: nn.Sequential, handle: Any, xa: torch.Tensor, ya: torch.Tensor,
                   seed: int) -> tuple[nn.Sequential, dict[str, Any]]:
        from clicooper.models.partition import split_model
        from clicooper.provenance import Identity, derive_stage_key, embed_until_zero, module_errors
        from clicooper.provenance.watermark import Mark, module_layout, plan_capacity, watermark_loss

        cfg = self.config
        m = copy.deepcopy(base)
        mods = split_model(m, handle.plan)
        me = Identity.generate()  # the attacker's fresh identity
        fake_run, fake_anchor = "ab" * 32, "cd" * 32
        marks: dict[int, tuple[nn.Module, list[Mark]]] = {}
        for pos, party in _positions(handle).items():
            seg = mods[party]
            n = sum(p.numel() for p in seg.parameters())
            if not n:
                continue
            cap = plan_capacity(n, planned_rounds=handle.config.epochs, lam=cfg.overwrite_lambda)
            if not cap.enabled:
                continue
            lay = module_layout(seg)
            mk = [Mark.derive(derive_stage_key(me, fake_run, r, pos, fake_anchor), cap.mark_params(lay, r))
                  for r in range(cap.retained_rounds)]
            marks[pos] = (seg, mk)

        def wm() -> torch.Tensor:
            return sum(watermark_loss(seg, mk, lam=cfg.overwrite_lambda) for seg, mk in marks.values())

        _train(m, list(m.parameters()), xa, ya, epochs=cfg.epochs, lr=cfg.lr, bs=cfg.batch_size, seed=seed,
               extra_loss=wm)
        own: dict[str, Any] = {}
        for pos, (seg, mk) in marks.items():
            opt = torch.optim.Adam(seg.parameters(), lr=cfg.lr)
            try:
                steps = embed_until_zero(seg, mk, lam=max(1.0, cfg.overwrite_lambda), optimizer=opt,
                                         max_steps=500)
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                steps = f"failed: {e}"
            wrong, total = module_errors(seg, mk)
            own[str(pos)] = {"bits": total, "wrong": wrong, "extra_steps": steps}
        return m, own

    # false claims ---------------------------------------------------------------------------------------
    def _unrelated(self, handle: Any, owners: Owners, xa: torch.Tensor, ya: torch.Tensor, xt: torch.Tensor,
                   yt: torch.Tensor) -> dict[str, Any]:
        from clicooper.models import zoo
        from clicooper.runs import num_outputs_for

        cfg = self.config
        per_model = []
        for i in range(cfg.unrelated):
            s = cfg.seed + 1000 + i
            m = zoo.build(handle.config.model, tuple(handle.plan.input_shape),
                          num_outputs_for(handle.config, handle.plan_num_classes), seed=s)
            _train(m, list(m.parameters()), xa, ya, epochs=cfg.unrelated_epochs, lr=cfg.lr, bs=cfg.batch_size,
                   seed=s)
            v = owners.verdicts(_split_states(m, handle))
            per_model.append({"seed": s, "test_acc": _accuracy(m, xt, yt), "positions": v})
        bers = [p["ber"] for r in per_model for p in r["positions"].values() if "ber" in p]
        passes = sum(any(p.get("verdict") for p in r["positions"].values()) for r in per_model)
        by_pos: dict[str, Any] = {}
        for pos in owners.reveals:
            b = [r["positions"][str(pos)]["ber"] for r in per_model if "ber" in r["positions"][str(pos)]]
            by_pos[str(pos)] = {"mean_ber": sum(b) / len(b) if b else None,
                                "min_ber": min(b) if b else None,
                                "passes": sum(bool(r["positions"][str(pos)].get("verdict")) for r in per_model),
                                "aligned": sum(bool(r["positions"][str(pos)].get("aligned")) for r in per_model)}
        mean = sum(bers) / len(bers) if bers else float("nan")
        return {"models": cfg.unrelated, "epochs": cfg.unrelated_epochs, "passes": passes, "mean_ber": mean,
                "std_ber": (sum((b - mean) ** 2 for b in bers) / max(1, len(bers) - 1)) ** 0.5 if bers else None,
                "by_position": by_pos, "per_model": per_model}


def _levels(rows: list[dict[str, Any]], unrelated: dict[str, Any] | None) -> dict[str, LevelResult]:
    """Headline per attack: the share of (setting, marked position) pairs where ownership is still shown
    among the settings that did not destroy the model (floor 1.0: every one should survive)."""
    levels: dict[str, LevelResult] = {}
    for attack in dict.fromkeys(r["attack"] for r in rows):
        rs = [r for r in rows if r["attack"] == attack]
        kept = [(r, p) for r in rs if not r["destroyed"] for p in r["positions"].values() if p.get("robust")]
        share = sum(bool(p["verdict"]) for _, p in kept) / len(kept) if kept else float("nan")
        levels[attack] = LevelResult("survival_share", share, 1.0, True, {
            "settings": len(rs), "checks_not_destroyed": len(kept),
            "mark_dies_before_model": [r["setting"] for r in rs if not r["destroyed"]
                                       and not all(p["verdict"] for p in r["positions"].values() if p.get("robust"))]})
    if unrelated is not None:
        levels["unrelated"] = LevelResult("false_claims", float(unrelated["passes"]), 0.0, False,
                                          {"mean_ber": unrelated["mean_ber"], "models": unrelated["models"]})
    return levels


def run_removal(run_dir: str | Path, out: str | Path | None = None, **config: Any) -> dict[str, Any]:
    """Run the removal attack on ``run_dir``; write the JSON to ``out`` when given. Never writes into
    the run directory itself."""
    res = RemovalAttack(**config).run(Path(run_dir))
    obj = res.to_json()
    if out is not None:
        Path(out).write_text(json.dumps(obj, indent=1) + "\n", "utf-8")
    return obj


__all__ = ["RemovalAttack", "RemovalConfig", "permute_rescale", "prune", "quantize_int8", "run_removal",
           "Owners"]
