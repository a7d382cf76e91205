"""Watermark removal (docs/design/metrics.md, issue 6): an outsider holding the delivered model and 10 % of the data attacks
the dynamic chained marks; the owners then try to prove ownership of what is left.

The **attacker** reads only what an outsider with a leaked model has: ``config.json``, ``plan.json`` and
``RUN/model/*.safetensors`` (via :func:`clicooper.load_run`), plus its own labelled slice of the data — the
*last* ``fraction`` of the DO's training range (e.g. ``0:20000`` → samples 18,000–19,999): in distribution and
seen in training, the attacker's best case. It never opens ``keys/`` or ``secrets/``.

The **owners** (the evaluator) then reveal the stages whose marks they expect in the final weights
(:func:`clicooper.provenance.delivered.final_retained_stages`, with their own key files) and run
:func:`clicooper.provenance.prove` per marked segment on the attacked model (aligned to the committed weights
when the alignment is strong). For every attack we report the attacked model's test accuracy and, per marked
position, the pooled verdict (wrong bits / N, τ, p-value). "Destroyed" = more than ``destroyed_drop`` (10 pt)
of accuracy lost: a mark that dies only there costs the attacker the model.

Attacks: fine-tuning ``epochs`` epochs (last layer only / all layers / last layer re-initialised and
retrained), magnitude pruning (global and per layer, weights only, biases kept), int8 per-tensor symmetric
quantisation (dequantised), unit permutation + per-channel positive rescaling across every ReLU (function
preserving; checked), and overwriting with the attacker's own mark (a fresh
:class:`~clicooper.provenance.Identity`, the same capacity plan and scheme, embedded while fine-tuning on its
data, then ``embed_until_zero``). Plus the false-claim check: ``unrelated`` models of the same architecture,
independently initialised and trained briefly on the attacker's data, proven against the owners' reveals
(target: none passes, mean BER ≈ 0.5).

Entry point: ``RemovalAttack(**config).run(run_dir)`` or :func:`run_removal` (writes JSON if asked)."""

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

from clicooper import rundir
from clicooper.attacks.base import AttackResult, LevelResult, register, require
from clicooper.errors import ConfigError, LedgerError
from clicooper.models import zoo
from clicooper.models.blueprint import num_outputs_for
from clicooper.models.partition import split_model
from clicooper.provenance import Identity, derive_stage_key, embed_until_zero, load_identity, read_ledger
from clicooper.provenance.delivered import final_retained_stages, load_segments
from clicooper.provenance.reveal import make_reveal, prove
from clicooper.provenance.watermark import Mark, module_errors, module_layout, plan_capacity, watermark_loss
from clicooper.runs import load_run

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


def _positions(handle: Any) -> dict[int, str]:
    return {pp.position: pp.party for pp in handle.plan.parties}


def _split_states(model: nn.Sequential, handle: Any) -> dict[int, dict[str, torch.Tensor]]:
    """Per-position state dicts of a (copied) full model, keys as in ``RUN/model/*.safetensors``."""
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
        for group in ([w] for w in ws) if per_layer else [ws]:
            allw = torch.cat([w.abs().flatten() for w in group])
            k = int(round(level * allw.numel()))
            if k:
                thr = allw.kthvalue(k).values
                for w in group:
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


@dataclass
class Owners:
    """What the owners use to prove: reveals per marked position, the ledger and the committed segments."""

    ledger: Path
    reveals: dict[int, dict[str, Any]]  # position → reveal file object of the position's owner
    reference: dict[int, dict[str, torch.Tensor]]
    plan: dict[str, Any]  # plan.json extra["watermark"]

    @classmethod
    def load(cls, run_dir: Path) -> Owners:
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
        out: dict[str, Any] = {}
        for pos, rv in sorted(self.reveals.items()):
            try:
                rep = prove([rv], self.ledger, suspect, reference=self.reference, align=align)
            except (ConfigError, LedgerError) as e:
                out[str(pos)] = {"error": str(e), "verdict": False}
                continue
            wm = self.plan.get(str(pos), {})
            out[str(pos)] = {"verdict": rep.verdict, "wrong_bits": rep.wrong_bits, "n_bits": rep.n_bits,
                             "ber": rep.ber, "tau": rep.tau, "p_value": rep.p_value,
                             "false_claim_probability": rep.false_claim_probability, "aligned": rep.aligned,
                             "robust": bool(wm.get("robust", False)), "num_params": wm.get("num_params")}
        return out


class _Scene:
    """What the attacks work on: the leaked model and its accuracy, the attacker's slice of the DO's
    training range (its last ``fraction``), the test split, and the owners who prove afterwards."""

    def __init__(self, run_dir: Path, cfg: RemovalConfig) -> None:
        self.handle = handle = load_run(run_dir)  # config.json, plan.json, model/*.safetensors: what leaked
        require(not handle.config.obfuscate_labels, "removal attack: runs with obfuscated labels are not "
                                                    "supported (the attacker would need the label codec)")
        ds = handle.dataset()
        ids = ds.train_ids(handle.config.train_range)
        self.k = max(1, int(round(cfg.fraction * len(ids))))
        self.a_ids = ids[-self.k:]
        self.xa, self.ya = ds.x_train[self.a_ids], ds.y_train[self.a_ids]
        self.xt, self.yt = ds.x_test, ds.y_test
        self.owners = Owners.load(run_dir)
        self.base = handle.full_model()
        self.base_acc = _accuracy(self.base, self.xt, self.yt)
        self.destroyed_drop = cfg.destroyed_drop

    def row(self, attack: str, setting: Any, model: nn.Sequential, **extra: Any) -> dict[str, Any]:
        """One result row: the attacked model's test accuracy and the owners' verdict per marked position."""
        acc = _accuracy(model, self.xt, self.yt)
        v = self.owners.verdicts(_split_states(model, self.handle))
        return {"attack": attack, "setting": setting, "test_acc": acc, "acc_drop": self.base_acc - acc,
                "destroyed": self.base_acc - acc > self.destroyed_drop, "positions": v, **extra}


@register("removal")
class RemovalAttack:
    """Watermark removal by an outsider with the model and 10 % of the data (see module docstring)."""

    name: ClassVar[str] = "removal"
    knowledge: ClassVar[tuple[str, ...]] = ("model+10%-data",)

    def __init__(self, **config: Any) -> None:
        tuples = ("prune_levels", "attacks")
        self._config = RemovalConfig(**{k: tuple(v) if k in tuples else v for k, v in config.items()})

    @property
    def config(self) -> RemovalConfig:
        """The validated config."""
        return self._config

    def run(self, views: Any) -> AttackResult:
        """Run every configured removal attack on the run directory ``views`` (a path)."""
        cfg, t0, run_dir = self.config, time.perf_counter(), Path(views)
        sc = _Scene(run_dir, cfg)
        rows = [row for attack in cfg.attacks for row in self._attack(attack, sc)]
        unrelated = self._unrelated(sc) if cfg.unrelated else None
        info = {"run_dir": str(run_dir), "base_test_acc": sc.base_acc,
                "attacker_data": {"range": [int(sc.a_ids[0]), int(sc.a_ids[-1]) + 1], "samples": sc.k,
                                  "note": f"the last {cfg.fraction:.0%} of the DO's training range"},
                "owners": {str(p): [s["round"] for s in rv["stages"]] for p, rv in sc.owners.reveals.items()},
                "rows": rows, "unrelated": unrelated, "config": asdict(cfg),
                "seconds": time.perf_counter() - t0}
        return AttackResult("removal", _levels(rows, unrelated), info)

    def _attack(self, attack: str, sc: _Scene) -> list[dict[str, Any]]:
        """The result rows of one removal attack (one per setting)."""
        cfg, base = self.config, sc.base
        if attack == "none":
            return [sc.row("none", None, base)]
        if attack in ("finetune-last", "finetune-all", "retrain-last"):
            m = copy.deepcopy(base)
            last = m[_linear_layers(m)[-1]]
            if attack == "retrain-last":
                torch.manual_seed(cfg.seed)
                last.reset_parameters()
            params = list(m.parameters()) if attack == "finetune-all" else list(last.parameters())
            _train(m, params, sc.xa, sc.ya, epochs=cfg.epochs, lr=cfg.lr, bs=cfg.batch_size, seed=cfg.seed)
            return [sc.row(attack, {"epochs": cfg.epochs, "lr": cfg.lr, "samples": sc.k}, m)]
        if attack in ("prune-global", "prune-layer"):
            return [sc.row(attack, lvl, prune(base, lvl, per_layer=attack == "prune-layer"))
                    for lvl in cfg.prune_levels]
        if attack == "int8":
            return [sc.row("int8", "per-tensor symmetric", quantize_int8(base))]
        if attack == "permute-rescale":
            m = permute_rescale(base, cfg.seed)
            with torch.no_grad():
                base.eval(), m.eval()
                diff = float((base(sc.xt[:2048]) - m(sc.xt[:2048])).abs().max())
            return [sc.row("permute-rescale", "all hidden layers, scales in [1/4, 4]", m, max_logit_diff=diff,
                           unaligned=sc.owners.verdicts(_split_states(m, sc.handle), align=False))]
        m, own = self._overwrite(sc)  # "overwrite" (attacks are validated)
        return [sc.row("overwrite", {"epochs": cfg.epochs, "lambda": cfg.overwrite_lambda}, m, attacker_mark=own)]

    def _overwrite(self, sc: _Scene) -> tuple[nn.Sequential, dict[str, Any]]:
        """The attacker's own mark (:func:`_attacker_marks`), embedded while fine-tuning on its data, then
        driven to zero errors."""
        cfg, lam = self.config, self.config.overwrite_lambda
        m = copy.deepcopy(sc.base)
        marks = _attacker_marks(split_model(m, sc.handle.plan), sc.handle, lam)

        def wm() -> torch.Tensor:
            return sum(watermark_loss(seg, mk, lam=lam) for seg, mk in marks.values())

        _train(m, list(m.parameters()), sc.xa, sc.ya, epochs=cfg.epochs, lr=cfg.lr, bs=cfg.batch_size,
               seed=cfg.seed, extra_loss=wm)
        own: dict[str, Any] = {}
        for pos, (seg, mk) in marks.items():
            opt = torch.optim.Adam(seg.parameters(), lr=cfg.lr)
            try:
                steps = embed_until_zero(seg, mk, lam=max(1.0, lam), optimizer=opt, max_steps=500)
            except Exception as e:  # noqa: BLE001 - reported, not fatal
                steps = f"failed: {e}"
            wrong, total = module_errors(seg, mk)
            own[str(pos)] = {"bits": total, "wrong": wrong, "extra_steps": steps}
        return m, own

    def _unrelated(self, sc: _Scene) -> dict[str, Any]:
        """False claims: independently initialised models trained on the attacker's data, proven against
        the owners' reveals."""
        cfg, handle = self.config, sc.handle
        per_model = []
        for i in range(cfg.unrelated):
            s = cfg.seed + 1000 + i
            m = zoo.build_model(handle.config.model, handle.config.model_spec, tuple(handle.plan.input_shape),
                                num_outputs_for(handle.config, handle.plan_num_classes), seed=s)
            _train(m, list(m.parameters()), sc.xa, sc.ya, epochs=cfg.unrelated_epochs, lr=cfg.lr,
                   bs=cfg.batch_size, seed=s)
            v = sc.owners.verdicts(_split_states(m, handle))
            per_model.append({"seed": s, "test_acc": _accuracy(m, sc.xt, sc.yt), "positions": v})
        bers = [p["ber"] for r in per_model for p in r["positions"].values() if "ber" in p]
        passes = sum(any(p.get("verdict") for p in r["positions"].values()) for r in per_model)
        by_pos: dict[str, Any] = {}
        for pos in sc.owners.reveals:
            col = [r["positions"][str(pos)] for r in per_model]
            b = [c["ber"] for c in col if "ber" in c]
            by_pos[str(pos)] = {"mean_ber": sum(b) / len(b) if b else None, "min_ber": min(b) if b else None,
                                "passes": sum(bool(c.get("verdict")) for c in col),
                                "aligned": sum(bool(c.get("aligned")) for c in col)}
        mean = sum(bers) / len(bers) if bers else float("nan")
        return {"models": cfg.unrelated, "epochs": cfg.unrelated_epochs, "passes": passes, "mean_ber": mean,
                "std_ber": (sum((b - mean) ** 2 for b in bers) / max(1, len(bers) - 1)) ** 0.5 if bers else None,
                "by_position": by_pos, "per_model": per_model}


def _attacker_marks(mods: dict[str, nn.Module], handle: Any, lam: float) -> dict[int, tuple[nn.Module, list[Mark]]]:
    """The overwriting attacker's marks per position: a fresh identity, the same capacity plan and scheme."""
    me = Identity.generate()  # the attacker's fresh identity
    fake_run, fake_anchor = "ab" * 32, "cd" * 32
    marks: dict[int, tuple[nn.Module, list[Mark]]] = {}
    for pos, party in _positions(handle).items():
        seg = mods[party]
        n = sum(p.numel() for p in seg.parameters())
        cap = plan_capacity(n, planned_rounds=handle.config.epochs, lam=lam) if n else None
        if cap is None or not cap.enabled:
            continue
        lay = module_layout(seg)
        marks[pos] = (seg, [Mark.derive(derive_stage_key(me, fake_run, r, pos, fake_anchor), cap.mark_params(lay, r))
                            for r in range(cap.retained_rounds)])
    return marks


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
    obj = RemovalAttack(**config).run(Path(run_dir)).to_json()
    if out is not None:
        Path(out).write_text(json.dumps(obj, indent=1) + "\n", "utf-8")
    return obj


__all__ = ["Owners", "RemovalAttack", "RemovalConfig", "permute_rescale", "prune", "quantize_int8", "run_removal"]
