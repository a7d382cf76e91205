"""Model extraction: pooled trainer segments (k = 0, 10) and a query client, cross-checked against ART."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from clicooper.attacks import ExtractionAttack
from clicooper.attacks.extraction import build_model
from clicooper.attacks.views import build_view
from test_attacks_common import ARCH, digits, synthetic_views, trained_split, write_run


def _victim() -> nn.Module:
    return nn.Sequential(*trained_split()).eval()


def _predict(x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.softmax(_victim()(x), 1)


def _query_views(n_query: int = 1200):
    ds = digits()
    # query data: unlabelled images the victim was trained on (a cross-check of the query client only)
    xq = ds.x_train[:n_query]
    return synthetic_views(torch.zeros(10, 1), torch.arange(10), arch=ARCH, aux=(xq, ds.y_train[:n_query]),
                           x_test=ds.x_test, y_test=ds.y_test, predict=_predict)


def test_query_surrogate_approaches_victim_and_pure_noise_victim_gives_chance() -> None:
    res = ExtractionAttack(modes=("query",), steps=300).run(_query_views())
    for tag in ("query-soft", "query-hard"):
        lv = res.levels[tag]
        assert lv.score > 0.7 and lv.metrics["fidelity"] > 0.7, (tag, lv)
        assert lv.score > lv.floor
    views = _query_views()
    noise = views.__class__(**{**views.__dict__, "predict": lambda x: torch.full((x.shape[0], 10), 0.1)})
    assert ExtractionAttack(modes=("query",), steps=100).run(noise).levels["query-hard"].score < 0.2


def test_query_client_agrees_with_art_copycat() -> None:
    from art.attacks.extraction import CopycatCNN
    from art.estimators.classification import PyTorchClassifier

    ds = digits()
    xq, x_test, y_test = ds.x_train[:1200], ds.x_test, ds.y_test.numpy()

    def wrap(model: nn.Module) -> PyTorchClassifier:
        return PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(), input_shape=(1, 16, 16), nb_classes=10,
                                 optimizer=torch.optim.Adam(model.parameters(), lr=1e-3), clip_values=(0.0, 1.0))

    torch.manual_seed(0)
    thief = build_model(ARCH, (1, 16, 16), 10, seed=0)
    stolen = CopycatCNN(classifier=wrap(_victim()), batch_size_fit=64, batch_size_query=256, nb_epochs=16,
                        nb_stolen=1200).extract(xq.numpy(), thieved_classifier=wrap(thief))
    art_acc = float((stolen.predict(x_test.numpy()).argmax(1) == y_test).mean())
    ours = ExtractionAttack(modes=("query",), steps=300, batch=64).run(_query_views()).levels["query-hard"].score
    assert art_acc > 0.6 and abs(ours - art_acc) < 0.12, (ours, art_acc)


@pytest.fixture(scope="module")
def pool_views(tmp_path_factory: pytest.TempPathFactory):
    root = write_run(tmp_path_factory.mktemp("run"), rows=1000)
    return build_view(root, "pool", ("zero", "known", "aux"), architecture=ARCH, dataset=digits(), known_k=10,
                      aux_range=(0, 300))


def test_pooled_segments_with_one_label_per_class_beat_scratch(pool_views) -> None:
    assert [v.received.party for v in pool_views.pooled] == ["T1", "T2"]
    lv = ExtractionAttack(modes=("pooled",), ks=(1,), steps=300).run(pool_views).levels["pooled-k1"]
    assert lv.score > 0.7 and lv.metrics["advantage"] > 0.1, lv
    assert lv.floor == max(lv.metrics["chance"], lv.metrics["scratch_accuracy"])


def test_pooled_segments_without_labels(pool_views) -> None:
    lv = ExtractionAttack(modes=("pooled",), ks=(0,), steps=300).run(pool_views).levels["pooled-k0"]
    assert lv.score > lv.floor + 0.2, lv  # Hungarian-matched: the frozen segments carry the task


def test_skips_levels_it_cannot_run() -> None:
    res = ExtractionAttack(ks=(1,), steps=10).run(_query_views().without("query"))
    assert not res.levels and set(res.info["skipped"]) == {"pooled-k1", "query"}
    assert np.isfinite(len(res.info["skipped"]))


def test_holdout_rows_are_never_trained_on_and_pick_the_returned_state() -> None:
    import torch
    from torch import nn

    from clicooper.attacks.extraction import train_classifier

    torch.manual_seed(0)
    x, y = torch.randn(50, 4), torch.randint(0, 3, (50,))
    seen: list[set[int]] = []

    def extra(m: nn.Module, rows: torch.Tensor) -> torch.Tensor:
        seen.append({int(r) for r in rows})
        return torch.zeros(())

    train_classifier(nn.Linear(4, 3), x, y, soft=False, steps=40, batch=8, lr=1e-2, max_shift=0, seed=0,
                     extra=extra, holdout=0.2)
    held = [s for s in seen if len(s) == 10]  # the validation calls: the same 10 rows each time
    trained = set().union(*(s for s in seen if len(s) != 10))
    assert len(held) == 20 and all(h == held[0] for h in held)  # read 20 times along the run
    assert not (held[0] & trained) and len(trained) == 40
    seen.clear()
    train_classifier(nn.Linear(4, 3), x[:40], y[:40], soft=False, steps=10, batch=8, lr=1e-2, max_shift=0, seed=0,
                     extra=extra, holdout=0.2)  # 8 rows held out would be < 10: no holdout
    assert set().union(*seen) == set(range(40)) and all(len(s) == 8 for s in seen)
