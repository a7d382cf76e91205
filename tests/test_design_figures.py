"""The figures that the design pages (docs/design/) state are the code's: read from the page, recomputed here,
so that the design cannot drift from what the code does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DESIGN = Path(__file__).resolve().parents[1] / "docs" / "design"


def _table(page: str, header: str) -> list[list[str]]:
    """The body rows of the Markdown table whose header row starts with ``header``."""
    lines = (DESIGN / page).read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_accounting_reference_values() -> None:
    from clicooper.privacy.accountant import epsilon

    rows = _table("mechanisms.md", "| z | PLD, 1 epoch")
    assert [r[0] for r in rows] == ["1", "5", "10"]
    for z, *values in rows:
        for (accountant, epochs), shown in zip((("pld", 1), ("pld", 10), ("rdp", 1), ("rdp", 10)), values,
                                               strict=True):
            eps = epsilon(sigma=2 * float(z), epochs=epochs, delta=1e-5, accountant=accountant).epsilon
            assert float(shown) == pytest.approx(eps, rel=0.02), (z, accountant, epochs)


def test_ownership_threshold_as_stated() -> None:
    from clicooper.provenance.capacity import ownership_threshold

    text = (DESIGN / "mechanisms.md").read_text(encoding="utf-8")
    m = re.search(r"for N = (\d+), τ = (\d+) and P ≈ ([\d.]+)·10⁻([⁰¹²³⁴⁵⁶⁷⁸⁹]+)", text)
    assert m, "mechanisms.md no longer states the threshold for one N"
    exp = int(m.group(4).translate(str.maketrans("⁰¹²³⁴⁵⁶⁷⁸⁹", "0123456789")))
    n, tau, mantissa = int(m.group(1)), int(m.group(2)), float(m.group(3))
    got_tau, prob = ownership_threshold(n)
    assert got_tau == tau
    assert prob == pytest.approx(mantissa * 10.0 ** -exp, rel=0.05)
    assert prob < 2.0 ** -64


def test_reference_model_partition_as_stated() -> None:
    from clicooper.models.partition import make_plan
    from clicooper.models.zoo import build

    rows = _table("protocol.md", "| party | layers | parameters |")
    model = build("fmnist-cnn", (1, 28, 28), 10, seed=0)
    plan = make_plan(model, model_name="fmnist-cnn", input_shape=(1, 28, 28), trainers=2)
    names = {"DO head": "DO:head", "T1": "T1", "T2": "T2", "DO tail": "DO:tail"}
    assert {names[r[0]]: int(r[2].replace(",", "")) for r in rows} == {p.party: p.params for p in plan.parties}
    text = (DESIGN / "protocol.md").read_text(encoding="utf-8")
    share = int(re.search(r"the DO does about (\d+) % of\s+the training FLOPs", text).group(1))
    assert round(100 * plan.do_flop_share) == share


def test_watermark_size_floor_as_stated() -> None:
    from clicooper.config import RunConfig

    text = (DESIGN / "mechanisms.md").read_text(encoding="utf-8")
    stated = int(re.search(r"`watermark.min_params`\s+weights, ([\d,]+) by default", text).group(1).replace(",", ""))
    assert RunConfig().watermark.min_params == stated
