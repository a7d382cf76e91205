"""Streamed training splits (data.stream): same ids, batches and weights as the in-memory path, resume, and
the same dataset commitment; a tiny 8×8 imagefolder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clicooper import rundir
from clicooper.data import epoch_order, load_dataset
from clicooper.data.stream import StreamedImages
from clicooper.errors import DataError, InterruptedRun
from clicooper.provenance.commitments import dataset_commitment
from clicooper.training import train


def _folder(root: Path, per_class: int = 40) -> str:
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for k in range(per_class):
            a = (rng.random((8, 8)) * 80 + c * 80).astype(np.uint8)
            Image.fromarray(a, "L").save(root / f"c{c}" / f"{k:03d}.png")
    return f"imagefolder:{root}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _folder(tmp_path_factory.mktemp("img") / "f")


def _cfg(name: str, **data: object) -> dict:
    return {"dataset": name, "model": "digits-cnn", "trainers": 2, "epochs": 2, "batch_size": 16,
            "micro_batches": 2, "provenance": False, "data": {"image_mode": "L"} | data}


def test_streamed_split_reads_what_memory_holds(folder: str) -> None:
    mem = load_dataset(folder, {"image_mode": "L"})
    st = load_dataset(folder, {"image_mode": "L", "stream": True, "workers": 2})
    assert isinstance(st.x_train, StreamedImages) and st.input_shape == mem.input_shape
    assert len(st.x_train) == len(mem.x_train) and torch.equal(st.y_train, mem.y_train)
    order = epoch_order(st.train_ids(None), seed=3, epoch=1)
    st.x_train.expect(order, 16, 2)
    for a in range(0, len(order), 16):  # the announced batches come from the workers, in order
        for c in torch.tensor_split(order[a : a + 16], 2):
            assert torch.equal(st.x_train[c], mem.x_train[c])
    assert torch.equal(st.x_train[5:9], mem.x_train[5:9])  # unannounced: read inline
    assert torch.equal(torch.cat(list(st.x_train.chunks(7))), mem.x_train)


@pytest.mark.parametrize("form", ["cifar10", "cifar100", "cifar100-coarse"])
def test_streamed_cifar_reads_memory_mapped_records(form: str, tmp_path: Path) -> None:
    from test_data_loaders import write_cifar10, write_cifar100

    write_cifar10(tmp_path, n=7) if form == "cifar10" else write_cifar100(tmp_path, n_test=7)
    mem = load_dataset(f"{form}:{tmp_path}")
    st = load_dataset(f"{form}:{tmp_path}", {"stream": True, "workers": 1})
    assert isinstance(st.x_train, StreamedImages) and torch.equal(st.y_train, mem.y_train)
    assert torch.equal(st.x_test, mem.x_test)
    order = epoch_order(st.train_ids(None), seed=0, epoch=0)
    st.x_train.expect(order, 8, 1)
    for a in range(0, len(order), 8):
        assert torch.equal(st.x_train[order[a : a + 8]], mem.x_train[order[a : a + 8]])
    salt, ids = bytes(32), mem.train_ids(None)
    assert dataset_commitment(salt, {"x": st.x_train}, ids=ids) == dataset_commitment(salt, {"x": mem.x_train}, ids=ids)


def test_stream_is_refused_where_data_is_in_memory() -> None:
    with pytest.raises(DataError, match="drop --stream"):
        load_dataset("digits", {"stream": True})


def test_streamed_training_is_bit_identical_and_resumes(folder: str, tmp_path: Path) -> None:
    # provenance off: its per-run random salt and keys would make even two in-memory runs differ
    mem = train(_cfg(folder), out=tmp_path / "mem")
    st = train(_cfg(folder, stream=True, workers=2), out=tmp_path / "st")
    for k, v in mem.model.state_dict().items():
        assert torch.equal(v, st.model.state_dict()[k]), k
    assert rundir.read_json(tmp_path / "mem" / "metrics.json")["epochs"][-1]["loss"] == \
        rundir.read_json(tmp_path / "st" / "metrics.json")["epochs"][-1]["loss"]

    def stop_after_first(m: dict) -> None:
        if m["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(InterruptedRun):
        train(_cfg(folder, stream=True, workers=1), out=tmp_path / "cut", on_epoch=stop_after_first)
    resumed = train(resume=tmp_path / "cut")
    for k, v in mem.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k


def test_streamed_commitment_equals_in_memory_and_provenance_runs(folder: str, tmp_path: Path) -> None:
    mem = load_dataset(folder, {"image_mode": "L"})
    st = load_dataset(folder, {"image_mode": "L", "stream": True, "workers": 0})
    salt, ids = bytes(range(32)), mem.train_ids(None)
    assert dataset_commitment(salt, {"x": st.x_train, "y": st.y_train}, ids=ids) == \
        dataset_commitment(salt, {"x": mem.x_train, "y": mem.y_train}, ids=ids)
    run = train(_cfg(folder, stream=True, workers=1) | {"provenance": True, "epochs": 1}, out=tmp_path / "p")
    assert (run.path / "ledger.jsonl").is_file()


def test_streamed_augmented_run_over_grpc_matches_in_process(folder: str, tmp_path: Path) -> None:
    from clicooper.net.launch import launch_local
    from clicooper.runs import load_run

    cfg = _cfg(folder, stream=True, workers=1, crop_padding=1, flip=True) | {"epochs": 1}
    ref = train(cfg, out=tmp_path / "inproc")
    res = launch_local(cfg, tmp_path / "grpc", insecure_loopback=True, max_restarts=0, timeout_s=240)
    assert res.restarts == 0
    ra, rb = load_run(ref.path), load_run(tmp_path / "grpc")
    diff = max(float((v - rb.modules[k].state_dict()[n]).abs().max())
               for k in ra.modules for n, v in ra.modules[k].state_dict().items())
    assert diff < 1e-5  # the DO node streams and augments exactly as the in-process DO


def test_streamed_split_is_its_own_type_not_sniffed(folder: str) -> None:
    # prepare: the same folder in memory and streamed
    mem = load_dataset(folder, {"image_mode": "L"})
    st = load_dataset(folder, {"image_mode": "L", "stream": True, "workers": 2})
    # execute: the typed accessors
    streamed = st.streamed
    assert streamed is not None
    streamed.read_inline()
    # assert: the type says which is which; inline reading gives the in-memory values
    assert mem.streamed is None and isinstance(streamed, StreamedImages) and streamed.workers == 0
    ids = torch.tensor([3, 0, 7])
    assert torch.equal(streamed[ids], mem.x_train[ids])
    # the library never sniffs a split by its attributes (hasattr/getattr on x_train or the tensors it hashes)
    src = Path(__file__).resolve().parents[1] / "src" / "clicooper"
    sniffing = [f"{f.relative_to(src)}:{i + 1}" for f in sorted(src.rglob("*.py"))
                for i, line in enumerate(f.read_text("utf-8").splitlines())
                if ("hasattr(" in line or "getattr(" in line) and ("x_train" in line or '"chunks"' in line
                                                                   or '"expect"' in line or '"workers"' in line)]
    assert sniffing == []
