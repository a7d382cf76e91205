"""Model inversion by the first trainer T1: from what T1 receives back to the DO's input image.

* **white-box** — the head leaked: a decoder is trained on auxiliary images passed through the head
  (He et al. 2019, "Model Inversion Attacks against Collaborative Inference", ACSAC, §4 "inverse
  network"), then refined per victim by optimising the image so the head reproduces what T1 received
  (§3 "rMLE", with a total-variation prior). With activation protection on, the attacker simulates the
  public noise distribution (σ and clip from ``config.json``) on its training pairs — never the secret
  noise values.
* **known-plaintext** — k of the DO's own images with what T1 received for them (no head): a decoder
  fitted to the k pairs, with weight decay, dropout, early stopping on held-out pairs and, for conv heads,
  shift augmentation that moves the image and its activation map together (translation equivariance).
* **auxiliary-data black-box** — the head's architecture is public, its weights are not:
  (i) a shadow head trained with a decoder as an auto-encoder on auxiliary data, optionally aligned to
  the received distribution (sliced Wasserstein distance); (ii) UnSplit (Erdogan et al. 2022, "UnSplit:
  Data-Oblivious Model Inversion, Model Stealing, and Label Inference Attacks Against Split Learning",
  WPES, §4): jointly optimise the victims' images and a clone head so that the clone maps the images to
  what T1 received, with a TV prior; (iii) a decoder trained on auxiliary data through the UnSplit clone.

Scored on ≥ 500 victims from the DO's training rows, disjoint from every pair the attacker holds: mean
SSIM (docs/design/metrics.md#attacks-and-metrics settings), PSNR, MSE, and the global / class floors on the same victims.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from clicooper.attacks import metrics
from clicooper.attacks.base import AttackResult, LevelResult, budget_points, convergence, register, require
from clicooper.attacks.nets import Decoder, batched, fit, reinit
from clicooper.attacks.views import NoiseSpec, Views

MODES = ("white-box", "known-plaintext", "shadow", "unsplit")


@dataclass(frozen=True)
class InversionConfig:
    """Settings of :class:`InversionAttack`. ``steps`` are decoder minibatches (``known_steps``, when > 0, those
    of the known-plaintext decoders, which converge more slowly); ``unsplit_rounds`` × ``unsplit_inner`` the
    UnSplit alternations; ``refine_steps`` the white-box per-victim optimisation."""

    modes: tuple[str, ...] = MODES
    known_counts: tuple[int, ...] = (100, 1000)
    victims: int = 500
    width: int = 32
    steps: int = 800
    known_steps: int = 0
    batch: int = 64
    lr: float = 1e-3
    refine_steps: int = 200
    tv_weight: float = 0.01
    align_weight: float = 1.0
    unsplit_rounds: int = 40
    unsplit_inner: int = 10
    grid: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        bad = set(self.modes) - set(MODES)
        require(not bad, f"unknown inversion modes {sorted(bad)}; choose from {MODES}")
        require(all(k >= 2 for k in self.known_counts), "known_counts must be ≥ 2 (pairs per attack)")
        require(self.victims >= 1 and self.steps >= 1 and self.batch >= 1, "victims, steps and batch must be ≥ 1")
        require(self.known_steps >= 0, "known_steps must be ≥ 0 (0: the same as steps)")
        require(self.lr > 0 and self.tv_weight >= 0 and self.align_weight >= 0, "lr > 0, weights ≥ 0")
        require(self.width >= 4 and self.width % 2 == 0, "width must be an even number ≥ 4")


def tv(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per pixel (a smoothness prior on images)."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def sliced_wasserstein(a: torch.Tensor, b: torch.Tensor, projections: int = 64,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Sliced Wasserstein-2 distance between two samples of vectors (equal counts)."""
    a, b = a.flatten(1), b.flatten(1)
    p = torch.randn(a.shape[1], projections, generator=generator)
    p = p / p.norm(dim=0, keepdim=True)
    pa, pb = (a @ p).sort(0).values, (b @ p).sort(0).values
    return ((pa - pb) ** 2).mean()


def _shift_pair(z: torch.Tensor, x: torch.Tensor, factor: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Roll a batch of activation maps by (dy, dx) ∈ {-1, 0, 1}² and the images by ``factor`` × that."""
    dy, dx = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
    return torch.roll(z, (dy, dx), (2, 3)), torch.roll(x, (dy * factor, dx * factor), (2, 3))


def train_decoder(z: torch.Tensor | None, x: torch.Tensor, *, cfg: InversionConfig,
                  encode: nn.Module | None = None, noise: NoiseSpec | None = None,
                  augment_shift: int = 0, weight_decay: float = 0.0, dropout: float = 0.0,
                  seed: int = 0, in_shape: tuple[int, ...] | None = None,
                  on_checkpoint: Callable[[int, nn.Module], None] | None = None) -> Decoder:
    """Fit a decoder to pairs ``(z, x)``, or to ``(noise(encode(x)), x)`` when ``encode`` is given.

    10 % of the pairs (at least 2) are held out for early stopping. ``on_checkpoint(step, decoder)`` is
    called at ¼ and ½ of ``cfg.steps`` (:func:`clicooper.attacks.base.budget_points`).
    """
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    n_val = max(2, n // 10) if n >= 20 else 0
    perm = torch.randperm(n, generator=gen)
    val, tr = perm[:n_val], perm[n_val:]
    shape = in_shape if in_shape is not None else tuple((z if z is not None else batched(encode, x[:2])).shape[1:])  # type: ignore[arg-type]
    torch.manual_seed(seed)
    dec = Decoder(shape, tuple(x.shape[1:]), width=cfg.width, dropout=dropout)

    def inputs(idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xb = x[idx]
        if encode is not None:
            with torch.no_grad():
                zb = encode(xb)
        else:
            zb = z[idx]  # type: ignore[index]
        if noise is not None:
            zb = noise.simulate(zb, gen)
        return zb, xb

    def loss(model: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        zb, xb = inputs(tr[idx])
        if augment_shift:
            zb, xb = _shift_pair(zb, xb, augment_shift, gen)
        return F.mse_loss(model(zb), xb)

    def val_loss(model: nn.Module) -> float:
        zb, xb = inputs(val)
        return float(F.mse_loss(batched(model, zb), xb))

    return fit(dec, loss, tr.numel(), steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, weight_decay=weight_decay,
               seed=seed, val=val_loss if n_val else None, val_every=max(1, cfg.steps // 10),
               checkpoints=budget_points(cfg.steps)[:-1], on_checkpoint=on_checkpoint)  # type: ignore[return-value]


def decoder_series(z: torch.Tensor | None, x: torch.Tensor, z_eval: torch.Tensor, *, cfg: InversionConfig,
                   **kw: Any) -> list[torch.Tensor]:
    """Reconstructions of ``z_eval`` by a decoder trained as :func:`train_decoder` does, read at ¼, ½ and
    all of ``cfg.steps`` along one run (the figure's convergence, issue 14)."""
    got: dict[int, torch.Tensor] = {}
    dec = train_decoder(z, x, cfg=cfg, on_checkpoint=lambda s, m: got.__setitem__(s, batched(m, z_eval)), **kw)
    final = batched(dec, z_eval)
    return [got.get(p, final) for p in budget_points(cfg.steps)[:-1]] + [final]


def refine(head: nn.Module, z: torch.Tensor, x0: torch.Tensor, *, steps: int, tv_weight: float,
           lr: float = 0.01, clip: float | None = None) -> torch.Tensor:
    """Optimise images so ``head(x) ≈ z`` from ``x0`` (He et al. rMLE with a TV prior), images in [0, 1].

    ``clip``: the public per-sample clip norm of activation protection; the head's output is clipped the same
    way before it is compared with what T1 received (the noise itself is zero-mean and left to the MSE)."""
    logit = torch.logit(x0.clamp(1e-3, 1 - 1e-3)).detach().requires_grad_(True)
    opt = torch.optim.Adam([logit], lr=lr * 10)
    for p in head.parameters():
        p.requires_grad_(False)
    for _ in range(steps):
        opt.zero_grad()
        x = torch.sigmoid(logit)
        out = head(x)
        if clip is not None:
            flat = out.flatten(1)
            out = (flat * (clip / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)).view_as(out)
        loss = F.mse_loss(out, z) + tv_weight * tv(x)
        loss.backward()
        opt.step()
    return torch.sigmoid(logit).detach()


def unsplit(head: nn.Module, z: torch.Tensor, x0: torch.Tensor, *, rounds: int, inner: int,
            tv_weight: float, seed: int,
            on_checkpoint: Callable[[int, torch.Tensor, nn.Module], None] | None = None,
            ) -> tuple[torch.Tensor, nn.Module]:
    """UnSplit (Erdogan et al. 2022, Alg. 1): alternate image and clone-head updates minimising
    ``‖clone(x) − z‖² + λ·TV(x)``. Returns the images and the fitted clone; ``on_checkpoint(round, images,
    clone copy)`` sees them at ¼ and ½ of ``rounds``."""
    marks = set(budget_points(rounds)[:-1]) if on_checkpoint is not None else set()
    torch.manual_seed(seed)
    logit = torch.logit(x0.clamp(1e-3, 1 - 1e-3)).detach().requires_grad_(True)
    opt_x = torch.optim.Adam([logit], lr=0.05)
    opt_h = torch.optim.Adam(head.parameters(), lr=1e-3)
    head.train()
    for r in range(rounds):
        for opt in (opt_x, opt_h):
            for _ in range(inner):
                opt_x.zero_grad()
                opt_h.zero_grad()
                x = torch.sigmoid(logit)
                loss = F.mse_loss(head(x), z) + tv_weight * tv(x)
                loss.backward()
                opt.step()
        if r + 1 in marks:
            on_checkpoint(r + 1, torch.sigmoid(logit).detach(), copy.deepcopy(head).eval())  # type: ignore[misc]
    return torch.sigmoid(logit).detach(), head.eval()


@dataclass
class Scoreboard:
    """The victims of one inversion run and what it found: per-level results, grids, skipped modes."""

    x: torch.Tensor  # (V, C, H, W) the victims' true images
    z: torch.Tensor  # (V, …) what T1 received for them
    floors: dict[str, float]
    grid: int  # victims shown in each reconstruction grid
    levels: dict[str, LevelResult] = field(default_factory=dict)
    grids: dict[str, torch.Tensor] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def score(self, tag: str, series: dict[str, list[torch.Tensor]], budget: list[int],
              extra: dict[str, Any] | None = None, units: dict[str, tuple[list[int], str]] | None = None) -> None:
        """Score every reconstruction method of level ``tag`` (each read at ¼, ½ and the full ``budget``
        of steps, or the ``units`` entry of that method); the best full-budget SSIM is the level's figure,
        and its three readings its convergence."""
        by = {k: metrics.image_scores(r[-1], self.x) for k, r in series.items()}
        best = max(by, key=lambda k: by[k]["ssim"])
        values = [metrics.image_scores(r, self.x)["ssim"] for r in series[best][:-1]] + [by[best]["ssim"]]
        budget, unit = (units or {}).get(best, (budget, "steps"))
        self.levels[tag] = LevelResult(primary="ssim", score=by[best]["ssim"], floor=self.floors["global_floor"],
                                       metrics={**by[best], **self.floors, "best_method": best, "by_method": by,
                                                "victims": int(self.x.shape[0]), **(extra or {})},
                                       convergence=convergence(values, budget, what=unit,
                                                               training=(extra or {}).get("training")))
        self.grids[f"grid/{tag}"] = torch.stack([self.x[: self.grid], series[best][-1][: self.grid].float()])


def floor_reference(views: Views) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels the floors are computed from: the auxiliary data, else the held-out data."""
    truth = views.truth
    if views.aux is not None and truth.aux_y is not None:
        return views.aux.x, truth.aux_y
    require(truth.x_test is not None, "floors need auxiliary or held-out images")
    return truth.x_test, truth.y_test  # type: ignore[return-value]


def victim_board(views: Views, victims: int, grid: int) -> Scoreboard:
    """The scoreboard of the first ``victims`` victims of ``views``: their images, what the attacking
    party received for them, and the floors (auxiliary or held-out mean images) on the same victims."""
    truth, view = views.truth, views.zero
    require(truth.x is not None, "inversion needs the victims' true images in the truth to score")
    vic = truth.victims[:victims]
    require(vic.numel() >= 1, "no victims left after removing the known rows; record more rows")
    z_vic, x_vic, y_vic = view.received.activations[vic], truth.x[vic].float(), truth.y[vic]  # type: ignore[index]
    ref_x, ref_y = floor_reference(views)
    return Scoreboard(x=x_vic, z=z_vic, floors=metrics.inversion_floors(x_vic, y_vic, ref_x.float(), ref_y),
                      grid=min(grid, vic.numel()))


@register("inversion")
class InversionAttack:
    """Model inversion by T1 at the white-box, known-plaintext and auxiliary-data levels."""

    name: ClassVar[str] = "inversion"
    knowledge: ClassVar[tuple[str, ...]] = ("zero", "known", "aux", "white-box")
    known_k: ClassVar[int] = 100

    def __init__(self, **config: Any) -> None:
        self.config = InversionConfig(**config)

    def run(self, views: Views) -> AttackResult:
        """Reconstruct the victims' images at every knowledge level the views allow."""
        cfg, view, truth = self.config, views.zero, views.truth
        require(truth.x is not None, "inversion needs the victims' true images in the truth to score")
        require(view.position == 1, f"inversion is T1's attack; this view is {view.received.party}'s")
        board = victim_board(views, cfg.victims, cfg.grid)
        vic = truth.victims[: cfg.victims]
        aux_x = views.aux.x.float() if views.aux is not None else None
        if "white-box" in cfg.modes:
            self._white_box(views, board, aux_x)
        if "known-plaintext" in cfg.modes:
            self._known_plaintext(views, board)
        if "shadow" in cfg.modes or "unsplit" in cfg.modes:
            self._aux(views, board, aux_x)
        noise = view.public.noise
        return AttackResult(attack=self.name, levels=board.levels, artifacts=board.grids,
                            info={"party": view.received.party, "epoch": view.received.epoch,
                                  "victims": int(vic.numel()), "skipped": board.skipped,
                                  "noise_simulated": None if noise is None else noise.__dict__,
                                  "config": cfg.__dict__})

    def _white_box(self, views: Views, board: Scoreboard, aux_x: torch.Tensor | None) -> None:
        """Leaked head: a decoder trained on auxiliary images through the head, then rMLE refinement."""
        cfg, noise = self.config, views.zero.public.noise
        if views.white_box is None or aux_x is None:
            board.skipped["white-box"] = "needs the leaked head and auxiliary data"
            return
        head = views.white_box.head.eval()
        r0 = decoder_series(None, aux_x, board.z, cfg=cfg, encode=head, noise=noise, seed=cfg.seed)
        series = {"decoder": r0}
        if cfg.refine_steps:  # the budget fraction applies to the decoder's steps and the rMLE steps alike
            series["decoder+rMLE"] = [
                refine(head, board.z, r, steps=s, tv_weight=cfg.tv_weight, clip=None if noise is None else noise.clip)
                for r, s in zip(r0, budget_points(cfg.refine_steps), strict=True)]
        board.score("white-box", series, budget_points(cfg.steps),
                    {"refine_budget": budget_points(cfg.refine_steps) if cfg.refine_steps else None})

    def _known_plaintext(self, views: Views, board: Scoreboard) -> None:
        """Known pairs: one decoder per count of known samples, fitted to those pairs only."""
        cfg, view = self.config, views.zero
        cfg = replace(cfg, steps=cfg.known_steps or cfg.steps)
        if views.known is None:
            board.skipped["known-plaintext"] = "needs known samples"
            return
        z_all, x_shape = view.received.activations, tuple(board.x.shape[1:])
        factor = x_shape[-1] // z_all.shape[-1] if z_all.dim() == 4 and x_shape[-1] % z_all.shape[-1] == 0 else 0
        c = view.public.num_classes
        for count in cfg.known_counts:
            per = count // c
            if per < 1 or per > views.known.k:
                board.skipped[f"known-plaintext-{count}"] = f"the view holds {views.known.k} known samples per class"
                continue
            kn = views.known.per_class(per)
            series = decoder_series(z_all[kn.rows], kn.x.float(), board.z, cfg=cfg, augment_shift=factor,
                                    weight_decay=1e-4, dropout=0.1, seed=cfg.seed)
            board.score(f"known-plaintext-{count}", {"decoder": series}, budget_points(cfg.steps),
                        {"pairs": int(kn.rows.numel())})

    def _aux(self, views: Views, board: Scoreboard, aux_x: torch.Tensor | None) -> None:
        """Auxiliary data, black-box head: shadow heads (plain and aligned) and UnSplit (+ a decoder)."""
        cfg, view = self.config, views.zero
        if aux_x is None:
            board.skipped["aux"] = "needs auxiliary data"
            return
        arch, noise, z_all = view.public.architecture, view.public.noise, view.received.activations
        series: dict[str, list[torch.Tensor]] = {}
        if "shadow" in cfg.modes:
            for tag, w in (("shadow", 0.0), ("shadow-aligned", cfg.align_weight)):
                series[tag] = self._shadow(arch.head, aux_x, z_all, board.z, noise, w)
        units: dict[str, tuple[list[int], str]] = {}
        if "unsplit" in cfg.modes:
            series.update(self._unsplit(arch.head, aux_x, board, noise))
            units["unsplit"] = (budget_points(cfg.unsplit_rounds), "rounds")
            units["unsplit+decoder"] = (budget_points(cfg.unsplit_rounds), "rounds (and decoder steps)")
        board.score("aux", series, budget_points(cfg.steps), {}, units)

    def _unsplit(self, make_head: Any, aux_x: torch.Tensor, board: Scoreboard,
                 noise: NoiseSpec | None) -> dict[str, list[torch.Tensor]]:
        """UnSplit's images, and a decoder trained on aux data through its clone head, at ¼, ½ and all of
        the rounds (the decoder through the ¼-round clone gets ¼ of the decoder steps, and so on)."""
        cfg = self.config
        x0 = aux_x.mean(0, keepdim=True).expand_as(board.x).clone()
        marks: dict[int, tuple[torch.Tensor, nn.Module]] = {}
        xs, clone = unsplit(reinit(make_head(), cfg.seed), board.z, x0, rounds=cfg.unsplit_rounds,
                            inner=cfg.unsplit_inner, tv_weight=cfg.tv_weight, seed=cfg.seed,
                            on_checkpoint=lambda r, x, h: marks.__setitem__(r, (x, h)))
        points = budget_points(cfg.unsplit_rounds)
        stages = [marks.get(r, (xs, clone)) for r in points[:-1]] + [(xs, clone)]
        decoded = []
        for (_, head), steps in zip(stages, budget_points(cfg.steps), strict=True):
            dec = train_decoder(None, aux_x, cfg=replace(cfg, steps=steps), encode=head, noise=noise, seed=cfg.seed)
            decoded.append(batched(dec, board.z))
        return {"unsplit": [x for x, _ in stages], "unsplit+decoder": decoded}

    def _shadow(self, make_head: Any, aux_x: torch.Tensor, z_all: torch.Tensor, z_vic: torch.Tensor,
                noise: NoiseSpec | None, align: float) -> list[torch.Tensor]:
        """Shadow head + decoder trained as an auto-encoder on aux data; with ``align`` > 0 the shadow
        head's outputs are also pulled towards the distribution of what T1 received. Reconstructions of
        ``z_vic`` at ¼, ½ and all of ``cfg.steps``."""
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        shadow = reinit(make_head(), cfg.seed + 1)
        z_shape = tuple(z_all.shape[1:])
        torch.manual_seed(cfg.seed)
        model = nn.ModuleDict({"head": shadow, "dec": Decoder(z_shape, tuple(aux_x.shape[1:]), width=cfg.width)})

        def loss(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
            xb = aux_x[idx]
            zb = m["head"](xb)  # type: ignore[index]
            zn = noise.simulate(zb, gen) if noise is not None else zb
            out = F.mse_loss(m["dec"](zn), xb)  # type: ignore[index]
            if align:
                ridx = torch.randint(0, z_all.shape[0], (idx.numel(),), generator=gen)
                out = out + align * sliced_wasserstein(zn, z_all[ridx], generator=gen)
            return out

        got: dict[int, torch.Tensor] = {}
        fit(model, loss, aux_x.shape[0], steps=cfg.steps, batch=cfg.batch, lr=cfg.lr, seed=cfg.seed,
            checkpoints=budget_points(cfg.steps)[:-1],
            on_checkpoint=lambda s, m: got.__setitem__(s, batched(m["dec"], z_vic)))  # type: ignore[index]
        final = batched(model["dec"], z_vic)  # type: ignore[arg-type]
        return [got.get(p, final) for p in budget_points(cfg.steps)[:-1]] + [final]
