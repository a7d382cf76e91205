"""Views from a run directory: what is read (never secrets/ or keys/), and bad inputs."""

from __future__ import annotations

import builtins
import io
import json
from pathlib import Path

import pytest
import safetensors
import safetensors.torch
import torch

from clicooper.attacks import ClusteringAttack
from clicooper.attacks.reader import RunReader
from clicooper.attacks.views import build_view
from clicooper.errors import AttackError
from test_attacks_common import ARCH, N_TRAIN, digits, write_run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_run(tmp_path_factory.mktemp("run"), rows=600)


def _build(run_dir: Path, party: str = "T1", levels=("zero", "known", "aux", "white-box"), **kw):
    kw.setdefault("known_k", 5)
    return build_view(run_dir, party, levels, architecture=ARCH, dataset=digits(), **kw)


def test_reader_refuses_secrets_keys_and_escapes(run_dir: Path) -> None:
    r = RunReader(run_dir)
    for bad in ("secrets/noise_secret", "keys/DO.key", "observations/../secrets/label_key", "../outside",
                "checkpoints/round_0/DO.weights.safetensors"):
        with pytest.raises(AttackError):
            r.read_bytes(bad)
    (run_dir / "observations" / "sneaky").unlink(missing_ok=True)
    (run_dir / "observations" / "sneaky").symlink_to(run_dir / "secrets" / "label_key")
    with pytest.raises(AttackError, match="secrets"):
        r.read_bytes("observations/sneaky")
    (run_dir / "observations" / "sneaky").unlink()


def test_building_and_running_never_open_secrets_or_keys(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real_open, real_rb, real_io_open = builtins.open, Path.read_bytes, io.open
    real_safe_open, real_load_file = safetensors.safe_open, safetensors.torch.load_file

    def rec(fn):
        def wrapper(path, *a, **k):
            opened.append(str(Path(path).resolve()) if isinstance(path, (str, Path)) else str(path))
            return fn(path, *a, **k)
        return wrapper

    monkeypatch.setattr(builtins, "open", rec(real_open))
    monkeypatch.setattr(io, "open", rec(real_io_open))
    monkeypatch.setattr(Path, "read_bytes", lambda self: (opened.append(str(self.resolve())), real_rb(self))[1])
    monkeypatch.setattr(safetensors, "safe_open", rec(real_safe_open))
    monkeypatch.setattr(safetensors.torch, "load_file", rec(real_load_file))
    views = _build(run_dir)
    ClusteringAttack(known_ks=(1,), clusterers=("kmeans",), n_init=1).run(views)
    assert any("observations" in p for p in opened)  # the recorder works
    assert any(p.endswith("head.safetensors") for p in opened)  # white-box read the head
    for p in opened:
        parts = Path(p).parts
        assert "secrets" not in parts and "keys" not in parts, p


def test_zero_knowledge_view_reads_no_head(run_dir: Path) -> None:
    r = RunReader(run_dir)
    v = _build(run_dir, levels=("zero",), reader=r)
    assert v.white_box is None and v.known is None and v.aux is None
    assert not any("model" in p.parts for p in r.opened)


def test_views_hold_no_sample_ids_and_victims_avoid_known_rows(run_dir: Path) -> None:
    v = _build(run_dir)
    assert not hasattr(v.zero.received, "sample_ids")
    assert set(v.truth.victims.tolist()).isdisjoint(v.known.rows.tolist())
    assert v.known.k == 5 and v.known.per_class(2).rows.numel() == 20
    # the known samples' images are the rows they claim to be
    ids = json.loads((run_dir / "observations" / "index.json").read_text())
    assert ids["epochs"] == [1]
    assert torch.equal(v.truth.x[v.known.rows], v.known.x)


def test_missing_observations(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(AttackError, match="without recording observations"):
        _build(tmp_path)


def test_mismatched_sample_ids(tmp_path: Path) -> None:
    root = write_run(tmp_path / "r", rows=300)
    f = root / "observations" / "T1" / "epoch_1.safetensors"
    obs = safetensors.torch.load_file(str(f))
    obs["sample_ids"] = obs["sample_ids"][:-5].contiguous()
    safetensors.torch.save_file(obs, str(f))
    with pytest.raises(AttackError, match="sample ids for"):
        _build(root)
    obs["sample_ids"] = torch.full((300,), N_TRAIN + 7, dtype=torch.long)
    safetensors.torch.save_file(obs, str(f))
    with pytest.raises(AttackError, match="outside the training range"):
        _build(root)


def test_pool_requires_aligned_rows(tmp_path: Path) -> None:
    root = write_run(tmp_path / "r", rows=300)
    f = root / "observations" / "T2" / "epoch_1.safetensors"
    obs = safetensors.torch.load_file(str(f))
    obs["sample_ids"] = obs["sample_ids"].flip(0).contiguous()
    safetensors.torch.save_file(obs, str(f))
    with pytest.raises(AttackError, match="line up"):
        _build(root, party="pool", levels=("zero",))


@pytest.mark.parametrize("kw, msg", [
    ({"aux_range": (0, 10_000)}, "out of bounds"),
    ({"aux_range": (50, 10)}, "out of bounds"),
    ({"aux_source": "train", "aux_range": (100, 200)}, "overlaps the DO's training range"),
    ({"known_k": 10_000}, "fewer than known_k"),
    ({"party": "T9"}, "not a trainer"),
    ({"party": "DO"}, "party must be"),
    ({"levels": ("zero", "telepathy")}, "unknown knowledge"),
    ({"epoch": 7}, "not recorded"),
])
def test_bad_inputs(run_dir: Path, kw: dict, msg: str) -> None:
    with pytest.raises(AttackError, match=msg):
        _build(run_dir, **kw)


def test_aux_from_train_split_outside_training_range(run_dir: Path) -> None:
    ids = safetensors.torch.load_file(str(run_dir / "observations" / "T1" / "epoch_1.safetensors"))["sample_ids"]
    lo = int(ids.min())  # the recorded rows start above 0 with overwhelming probability
    v = _build(run_dir, aux_source="train", aux_range=(0, lo), training_range=(lo, N_TRAIN), levels=("zero", "aux"))
    assert v.aux is not None and v.aux.range == (0, lo) and v.aux.x.shape[0] == lo
