"""Shared fixtures-as-functions for the attack tests (imported by the other test_attacks_* files), and
tests of the attack interface itself (registry, result JSON, informative flag).

The synthetic "run" is scikit-learn's digits upsampled to 16×16 and a four-part split CNN shaped like
``fmnist-cnn`` (head conv | T1 conv | T2 linear | tail), trained for a few seconds.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch import nn

from clicooper.attacks import base
from clicooper.attacks.base import AttackResult, LevelResult
from clicooper.attacks.views import (
    Architecture,
    AuxiliaryView,
    KnownSampleView,
    PublicInfo,
    Received,
    Truth,
    Views,
    WhiteBoxView,
    ZeroKnowledgeView,
)
from clicooper.errors import AttackError

torch.set_num_threads(1)
N_TRAIN = 1200


def make_head() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))  # (B, 8, 8, 8)


def make_t1() -> nn.Module:
    return nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))  # (B, 16, 4, 4)


def make_t2() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.ReLU())  # (B, 32)


def make_tail() -> nn.Module:
    return nn.Linear(32, 10)


ARCH = Architecture(head=make_head, segments=[make_t1, make_t2], tail=make_tail)


@lru_cache(maxsize=1)
def digits() -> SimpleNamespace:
    """Digits as a public-loader-shaped dataset: 16×16 images in [0, 1]; train = first 1,200."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1)
    y = torch.tensor(d.target, dtype=torch.long)
    return SimpleNamespace(x_train=x[:N_TRAIN], y_train=y[:N_TRAIN], x_test=x[N_TRAIN:], y_test=y[N_TRAIN:],
                           num_classes=10, input_shape=(1, 16, 16))


@lru_cache(maxsize=1)
@torch.enable_grad()
def trained_split() -> tuple[nn.Module, nn.Module, nn.Module, nn.Module]:
    """The split model trained on the digits training range (≈ 97 % test accuracy)."""
    ds = digits()
    torch.manual_seed(0)
    parts = (make_head(), make_t1(), make_t2(), make_tail())
    model = nn.Sequential(*parts)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(6):
        perm = torch.randperm(N_TRAIN, generator=g)
        for i in range(0, N_TRAIN, 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            F.cross_entropy(model(ds.x_train[idx]), ds.y_train[idx]).backward()
            opt.step()
    return parts


def record(rows: int = 1000, seed: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    """One epoch's observations of T1 and T2 on ``rows`` shuffled training samples (what a run records)."""
    head, t1, t2, tail = trained_split()
    ds = digits()
    ids = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(seed))[:rows]
    obs: dict[str, dict[str, list[torch.Tensor]]] = {"T1": {}, "T2": {}}
    for i in range(0, rows, 128):
        b = ids[i : i + 128]
        a0 = head(ds.x_train[b]).detach().requires_grad_(True)
        a1 = t1(a0)
        a1.retain_grad()
        a2 = t2(a1)
        a2.retain_grad()
        F.cross_entropy(tail(a2), ds.y_train[b]).backward()
        for p, act, grad in (("T1", a0, a1.grad), ("T2", a1, a2.grad)):
            for k, v in (("sample_ids", b), ("activations", act.detach()), ("gradients", grad)):
                obs[p].setdefault(k, []).append(v)
    return {p: {k: torch.cat(v).contiguous() for k, v in d.items()} for p, d in obs.items()}


def write_run(root: Path, *, rows: int = 1000, with_secrets: bool = True) -> Path:
    """A run directory in the documented layout (observations, model, config, secrets, keys)."""
    head, t1, t2, tail = trained_split()
    obs = record(rows)
    for p, seg in (("T1", t1), ("T2", t2)):
        (root / "observations" / p).mkdir(parents=True, exist_ok=True)
        save_file(obs[p], str(root / "observations" / p / "epoch_1.safetensors"))
        save_file({k: v.contiguous() for k, v in seg.state_dict().items()},
                  str(root / "observations" / p / "segment_epoch_1.safetensors"))
    (root / "observations" / "index.json").write_text(json.dumps(
        {"parties": ["T1", "T2"], "epochs": [1], "subset": f"fixed-{rows}", "topology": "u-shape"}))
    (root / "model").mkdir(exist_ok=True)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(root / "model" / "head.safetensors"))
    (root / "config.json").write_text(json.dumps({"dataset": "digits", "model": "tiny", "topology": "u-shape"}))
    if with_secrets:
        (root / "secrets").mkdir(exist_ok=True)
        (root / "secrets" / "noise_secret").write_bytes(b"\x01" * 32)
        (root / "secrets" / "label_key").write_bytes(b"\x02" * 32)
        (root / "keys").mkdir(exist_ok=True)
        (root / "keys" / "DO.key").write_bytes(b"\x03" * 32)
    return root


def synthetic_views(acts: torch.Tensor, y: torch.Tensor, *, grads: torch.Tensor | None = None,
                    x: torch.Tensor | None = None, known_k: int = 0, num_classes: int | None = None,
                    segment: nn.Module | None = None, head: nn.Module | None = None,
                    aux: tuple[torch.Tensor, torch.Tensor] | None = None, victims: int = 500,
                    arch: Architecture | None = None, x_test: torch.Tensor | None = None,
                    y_test: torch.Tensor | None = None, predict=None, seed: int = 0) -> Views:
    """Views built directly from tensors (no run directory)."""
    c = num_classes or int(y.max()) + 1
    arch = arch or Architecture(head=lambda: nn.Identity(), segments=[lambda: nn.Identity()], tail=None)
    public = PublicInfo(num_classes=c, input_shape=tuple((x if x is not None else acts).shape[1:]), architecture=arch)
    rec = Received(party="T1", epoch=1, activations=acts, gradients=grads if grads is not None else acts)
    zero = ZeroKnowledgeView(public=public, received=rec, segment=segment or nn.Identity(), position=1)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(y.numel(), generator=gen)
    known = None
    rows = torch.empty(0, dtype=torch.long)
    if known_k:
        rows = torch.cat([perm[y[perm] == k][:known_k] for k in range(c)])
        known = KnownSampleView(rows=rows, x=(x if x is not None else acts)[rows], y=y[rows])
    mask = torch.ones(y.numel(), dtype=torch.bool)
    mask[rows] = False
    vic = torch.nonzero(mask).flatten()[:victims]
    auxv = None if aux is None else AuxiliaryView(x=aux[0], y=aux[1], source="test", range=(0, aux[0].shape[0]))
    truth = Truth(y=y, x=x, victims=vic, x_test=x_test, y_test=y_test, aux_y=None if aux is None else aux[1])
    return Views(zero=zero, truth=truth, known=known, aux=auxv,
                 white_box=None if head is None else WhiteBoxView(head=head), pooled=(zero,), predict=predict)


def gaussian_clusters(n: int = 600, c: int = 4, d: int = 20, sep: float = 8.0, seed: int = 0):
    """Well separated Gaussian clusters: features and labels."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g) * sep
    y = torch.arange(n) % c
    return centers[y] + torch.randn(n, d, generator=g), y


# ---------------------------------------------------------------------------------------------------------
# the interface


def test_registry_lists_builtin_attacks_and_rejects_unknown() -> None:
    assert {"clustering", "gradient-leak", "inversion", "extraction"} <= set(base.names())
    with pytest.raises(AttackError, match="unknown attack"):
        base.get("no-such-attack")


def test_register_refuses_duplicate_names() -> None:
    @base.register("test-dummy-attack")
    class Dummy:
        name = "test-dummy-attack"

    assert base.get("test-dummy-attack") is Dummy
    with pytest.raises(AttackError, match="already registered"):
        base.register("test-dummy-attack")(type("Other", (), {}))


def test_result_json_is_plain_and_carries_floor() -> None:
    res = AttackResult(attack="x", levels={"zero-knowledge": LevelResult(
        primary="accuracy", score=0.9, floor=0.1, metrics={"t": torch.tensor(0.5), "nan": float("nan")})})
    js = json.loads(json.dumps(res.to_json()))
    lv = js["levels"]["zero-knowledge"]
    assert lv["floor"] == 0.1 and lv["beats_floor"] is True and lv["metrics"] == {"t": 0.5, "nan": None}


def test_informative_flag_uses_direction_and_floor() -> None:
    assert base.informative({"primary": "ssim", "score": 0.5, "floor": 0.13})
    assert not base.informative({"primary": "ssim", "score": 0.035, "floor": 0.13})
    assert base.informative(LevelResult(primary="ber", score=0.1, floor=0.5, higher_is_better=False))


def test_configs_validate_with_actionable_messages() -> None:
    for name, bad in (("clustering", {"sources": ("nope",)}), ("gradient-leak", {"known_ks": (0,)}),
                      ("inversion", {"modes": ("magic",)}), ("extraction", {"steps": 0})):
        with pytest.raises(AttackError):
            base.get(name)(**bad)
