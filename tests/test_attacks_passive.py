"""Issue 14: the strongest published passive attacks (FORA, SDAR, model completion), the paper's own label
metrics, and the convergence record every trained attack carries (its figure at ¼, ½ and the full budget).

Digits upsampled to 16×16 through the split CNN of ``test_attacks_common`` (trained for a few seconds);
each attack first has to beat its floor by a wide margin on this undefended "run".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clicooper.attacks import CompletionAttack, ForaAttack, PaperMetricsAttack, SdarAttack, base
from clicooper.attacks.adversarial import mk_mmd
from clicooper.attacks.nets import fit
from clicooper.attacks.views import build_view
from clicooper.errors import AttackError
from test_attacks_common import ARCH, digits, gaussian_clusters, synthetic_views, trained_split, write_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("passive"), rows=1000)


# -- convergence -----------------------------------------------------------------------------------------


def test_budget_points_and_convergence_record() -> None:
    assert base.budget_points(800) == [200, 400, 800] and base.budget_points(2) == [1, 1, 2]
    c = base.convergence([0.5, 0.8, 0.805], [200, 400, 800])
    assert c["converged"] and c["last_doubling"] == pytest.approx(0.005) and c["fractions"] == [0.25, 0.5, 1.0]
    assert not base.convergence([0.2, 0.3, 0.4])["converged"]
    lv = base.LevelResult(primary="ssim", score=0.4, floor=0.1, convergence=c)
    js = lv.to_json()
    assert js["converged"] is True and js["convergence"]["values"] == [0.5, 0.8, 0.805]
    assert base.converged(js) is True and base.converged({"score": 1}) is None
    with pytest.raises(AttackError, match="¼, ½"):
        base.convergence([0.1, 0.2])


def test_checkpoint_along_one_run_equals_a_shorter_run() -> None:
    """Reading the model at ¼ of the steps is the same as training for ¼ of the steps (no early stopping)."""
    x, y = gaussian_clusters(n=200, c=4, d=6)

    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Linear(6, 4)

    def loss(m: nn.Module, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(m(x[idx]), y[idx])

    seen: dict[int, torch.Tensor] = {}
    long = fit(make(), loss, 200, steps=40, batch=32, checkpoints=[10, 20],
               on_checkpoint=lambda s, m: seen.__setitem__(s, m.weight.detach().clone()))
    short = fit(make(), loss, 200, steps=10, batch=32)
    assert set(seen) == {10, 20} and torch.allclose(seen[10], short.weight)
    assert not torch.allclose(seen[10], long.weight)


def test_mk_mmd_separates_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g)
    assert abs(float(mk_mmd(a, b))) < 0.05 < float(mk_mmd(a, b + 2.0))


# -- FORA, SDAR, model completion on the undefended digits run ---------------------------------------------


def _strong(lv: base.LevelResult) -> None:
    assert lv.score > lv.metrics["class_floor"] + 0.1 > lv.floor + 0.1, lv
    assert lv.convergence is not None and len(lv.convergence["values"]) == 3


@pytest.mark.slow
def test_fora_reconstructs_from_distribution_matching(run_dir: Path) -> None:
    views = build_view(run_dir, "T1", ("zero", "aux"), architecture=ARCH, dataset=digits(), victims=100)
    res = ForaAttack(steps=150, width=16, victims=100).run(views)
    _strong(res.levels["fora"])
    assert res.levels["fora"].metrics["training"]["fitted"]  # its inverse network fits its own auxiliary images
    assert res.artifacts["grid/fora"].shape == (2, 8, 1, 16, 16)
    with pytest.raises(AttackError, match="auxiliary"):
        ForaAttack(steps=2).run(views.without("aux"))


@pytest.mark.slow
def test_sdar_inverts_and_infers_labels_in_the_u_shape(run_dir: Path) -> None:
    views = build_view(run_dir, "pool", ("zero", "aux"), architecture=ARCH, dataset=digits(), victims=100)
    res = SdarAttack(steps=150, width=16, victims=100).run(views)
    _strong(res.levels["sdar"])
    assert res.levels["sdar"].metrics["training"]["fitted"]
    labels = res.levels["sdar-labels"]
    assert labels.score > labels.floor + 0.3 and labels.metrics["rows"] == 1000
    assert res.info["parties"] == ["T1", "T2"]


def test_model_completion_beats_the_same_architecture_alone(run_dir: Path) -> None:
    views = build_view(run_dir, "T2", ("zero", "known"), architecture=ARCH, dataset=digits(), known_k=10)
    res = CompletionAttack(ks=(1, 10, 100), steps=300).run(views)
    lv = res.levels["k10"]
    assert lv.score > lv.floor and lv.metrics["advantage"] > 0.01 and lv.score > 0.85
    assert set(lv.metrics["by_method"]) == {"passive", "active"} and lv.convergence is not None
    assert "k100" in res.info["skipped"]  # the view holds 10 per class


# -- the paper's metrics -------------------------------------------------------------------------------------


def _open_tail_views(relabel: np.ndarray, m: int = 2) -> object:
    feats, y = gaussian_clusters(n=400, c=4, d=12, sep=6.0)
    sub = torch.randint(0, m, (400,), generator=torch.Generator().manual_seed(1))
    received = torch.as_tensor(relabel)[y] * m + sub  # the obfuscated label the last trainer receives
    views = synthetic_views(feats, y, known_k=5, segment=nn.Linear(12, 4 * m))
    rec = views.zero.received.__class__(party="T2", epoch=1, activations=feats, gradients=None, labels=received)
    torch.manual_seed(0)
    seg = nn.Sequential(nn.Linear(12, 4 * m))
    return views.__class__(**{**views.__dict__, "zero": views.zero.__class__(
        public=views.zero.public, received=rec, segment=seg, position=2)})


def test_cluster_naming_fails_under_a_secret_relabelling_but_not_with_labelled_samples() -> None:
    cfg = {"steps": 5}
    plain = PaperMetricsAttack(**cfg).run(_open_tail_views(np.arange(4))).levels["cluster-naming"]
    deranged = PaperMetricsAttack(**cfg).run(_open_tail_views(np.array([1, 2, 3, 0]))).levels["cluster-naming"]
    assert plain.score == 1.0 and plain.metrics["outputs_per_class"] == 2
    assert deranged.score == 0.0 < deranged.floor  # the paper's "0 %": names wrong by construction
    assert deranged.metrics["strong"]["score"] > 0.95  # 5 labelled samples per class name every cluster
    assert "grouping" in deranged.metrics["why"]


def test_surrogate_in_the_obfuscated_space_reads_at_chance_until_named() -> None:
    head, t1, t2, tail = trained_split()
    teacher = nn.Sequential(head, t1, t2, tail).eval()
    perm = torch.tensor([3, 0, 1, 2, 5, 4, 7, 8, 9, 6])  # a secret derangement of the outputs

    def raw(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return teacher(x).softmax(1)[:, perm.argsort()]  # output perm[c] carries class c

    ds = digits()
    x, y = ds.x_train[:600], ds.y_train[:600]
    views = synthetic_views(head(x).detach(), y, x=x, known_k=10, arch=ARCH, aux=(ds.x_test[:300], ds.y_test[:300]),
                            x_test=ds.x_test[300:], y_test=ds.y_test[300:], predict=raw)
    res = PaperMetricsAttack(steps=200, queries=300).run(views)
    lv = res.levels["surrogate-obfuscated"]
    assert lv.score < 0.2 and lv.metrics["strong"]["score"] > 0.7
    assert "cluster-naming" in res.info["skipped"]  # no labels reach the trainer here
