"""RUN/privacy.json content: every ε labelled, no secret leaks into it."""

from __future__ import annotations

import json

from clicooper.privacy import (
    COVERS_DPSGD,
    COVERS_LABEL_DP,
    COVERS_QUERIES,
    COVERS_RELEASES,
    ActivationProtector,
    LabelCodec,
    QueryBudget,
    RandomizedResponse,
)
from clicooper.privacy.record import privacy_record

SECRET = bytes(range(32))
LABEL_KEY = bytes(range(100, 132))


def test_record_labels_every_epsilon_and_hides_secrets() -> None:
    codec = LabelCodec(key=LABEL_KEY, num_classes=10)
    budget = QueryBudget(sigma=20.0, delta=1e-5, epsilon_budget=1.0)
    budget.charge(2)

    record = privacy_record(
        epochs=3,
        delta=1e-5,
        activations=ActivationProtector(sigma=2.0, clip_norm=1.0, secret=SECRET),
        gradients=ActivationProtector(sigma=4.0, clip_norm=0.1, secret=SECRET),
        codec=codec,
        label_dp=RandomizedResponse(epsilon=2.0, num_classes=10, key=SECRET),
        dpsgd={"noise_multiplier": 1.0, "sample_rate": 128 / 60_000, "steps": 1407},
        query_budget=budget,
    )

    text = json.dumps(record)
    covers = [r["covers"] for r in record["reports"]]
    assert covers == [COVERS_RELEASES, COVERS_DPSGD, COVERS_RELEASES, COVERS_LABEL_DP, COVERS_QUERIES]
    assert record["reports"][0]["params"]["noise_multiplier"] == 1.0
    assert record["label_obfuscation"]["num_outputs"] == 20
    assert SECRET.hex() not in text and LABEL_KEY.hex() not in text
    assert str(list(codec.permutation)) not in text


def test_record_without_noise_is_minimal() -> None:
    record = privacy_record(epochs=1, delta=1e-5, activations=None)

    assert record["reports"] == [] and record["activation_noise"] is None
