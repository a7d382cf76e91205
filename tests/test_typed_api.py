"""The typed Python API over the user's own objects: ``clicooper.train(model=, data=, test_data=,
defenses=, …)``, the user's own module classes in-process, given data and ``python:`` datasets, the run
handle's records; and the README / docs example, run from the docs page itself."""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import clicooper
from clicooper.data import load_dataset
from clicooper.errors import ConfigError, DataError
from clicooper.rundir import load_tensors

ROOT = Path(__file__).resolve().parents[1]
BASE = {"trainers": 2, "epochs": 1, "seed": 0, "provenance": False, "device": "cpu", "batch_size": 64}


class BasicBlock(nn.Module):
    """A user's own residual block (not a library class)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


def _resnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), BasicBlock(4), BasicBlock(4), nn.Flatten(),
                         nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 10))


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted((run_dir / "model").glob("*.safetensors")):
        out |= {f"{f.stem}/{k}": v for k, v in load_tensors(f)[0].items()}
    return out


def test_train_has_a_typed_keyword_signature() -> None:
    params = inspect.signature(clicooper.train).parameters
    for name in ("model", "data", "test_data", "defenses", "epochs", "trainers", "out", "resume"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name
    assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert clicooper.train is clicooper.training.run.train  # the library's own function, its docstring too


@pytest.mark.slow
def test_own_module_classes_train_in_process_and_are_handed_back(tmp_path: Path) -> None:
    # prepare: a Sequential holding the user's own BasicBlock (once refused: "not an allowlisted layer")
    digits = load_dataset("digits")
    model = _resnet()
    # execute
    run = clicooper.train({"dataset": "digits"} | BASE, model=model, out=tmp_path / "r")
    # assert: trained as given; reopened with the same module; refused without it, naming the class
    assert run.config.model == "own-module:BasicBlock" and run.plan.extra["own_module"] == ["BasicBlock"]
    again = clicooper.load_run(tmp_path / "r", model=_resnet())
    assert again.evaluate() == run.evaluate() == run.test_acc
    assert torch.equal(again.predict(digits.x_test[:8]), run.predict(digits.x_test[:8]))
    with pytest.raises(ConfigError, match="BasicBlock.*declarative spec"):
        clicooper.load_run(tmp_path / "r")
    wider = nn.Sequential(*list(_resnet())[:-1], nn.Linear(32, 10), nn.ReLU())
    with pytest.raises(ConfigError):
        clicooper.load_run(tmp_path / "r", model=wider)
    # a path where peers build the model refuses it before starting any node, naming the class
    from clicooper.net.launch import launch_local

    with pytest.raises(ConfigError, match="BasicBlock.*a peer .* builds the model from a declarative spec"):
        launch_local(run.config.model_dump(), tmp_path / "launched", insecure_loopback=True)
    assert not (tmp_path / "launched" / "nodes").exists()


@pytest.mark.slow
def test_own_module_run_on_given_data_resumes_with_both(tmp_path: Path) -> None:
    from clicooper.errors import InterruptedRun

    # prepare: an uninterrupted run, and one stopped after its first epoch
    d = load_dataset("digits")
    given = {"data": (d.x_train, d.y_train), "test_data": (d.x_test, d.y_test)}
    cfg = BASE | {"epochs": 2}
    full = clicooper.train(cfg, model=_resnet(), out=tmp_path / "full", **given)

    def stop(_: dict) -> None:
        raise KeyboardInterrupt

    with pytest.raises(InterruptedRun):
        clicooper.train(cfg, model=_resnet(), out=tmp_path / "cut", on_epoch=stop, **given)
    # execute: resume refuses without the module or the data, then continues with both
    with pytest.raises(ConfigError, match="same module"):
        clicooper.train(resume=tmp_path / "cut", **given)
    with pytest.raises(DataError, match="pass it again"):
        clicooper.train(resume=tmp_path / "cut", model=_resnet())
    clicooper.train(resume=tmp_path / "cut", model=_resnet(), **given)
    # assert: the same weights as the uninterrupted run (stable sample ids)
    a, b = _weights(full.path), _weights(tmp_path / "cut")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_given_tensors_and_torch_dataset_train_like_the_named_dataset(tmp_path: Path) -> None:
    # prepare: digits by name, as tensors, and as a torch Dataset (same samples, same order: same ids)
    d = load_dataset("digits")
    named = clicooper.train(BASE, dataset="digits", model="digits-mlp", out=tmp_path / "named")
    # execute
    tensors = clicooper.train(BASE, data=(d.x_train, d.y_train), test_data=(d.x_test, d.y_test),
                              model="digits-mlp", out=tmp_path / "tensors")
    tds = clicooper.train(BASE, data=TensorDataset(d.x_train, d.y_train), test_data=TensorDataset(d.x_test, d.y_test),
                          model="digits-mlp", out=tmp_path / "torch")
    # assert: bit-identical weights; the data is the user's, never written into the run or reopened by name
    a, b, c = _weights(named.path), _weights(tensors.path), _weights(tds.path)
    assert all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    assert tensors.config.dataset == "given:tensors" and tensors.test_acc == named.test_acc
    with pytest.raises(DataError, match="pass it again"):
        clicooper.load_run(tensors.path).evaluate()
    assert clicooper.load_run(tensors.path, data=(d.x_train, d.y_train),
                              test_data=(d.x_test, d.y_test)).evaluate() == tensors.test_acc
    with pytest.raises(DataError, match="differs"):
        clicooper.load_run(tensors.path, data=(d.x_train.flip(0), d.y_train.flip(0)),
                           test_data=(d.x_test, d.y_test)).evaluate()


def test_given_data_is_checked_with_clear_refusals() -> None:
    from clicooper.data.given import dataset_from

    x, y = torch.rand(20, 1, 4, 4), torch.arange(20) % 3
    with pytest.raises(DataError, match="NaN"):
        dataset_from((torch.full((20, 4), float("nan")), y))
    with pytest.raises(DataError, match="to match x"):
        dataset_from((x, y[:5]))
    with pytest.raises(DataError, match=r"\(x, y\) pair"):
        dataset_from(TensorDataset(x))
    with pytest.raises(DataError, match="fractional"):
        dataset_from((x, y + 0.5))
    ds = dataset_from((x, y))  # no test split given: the fixed 80/20 split of every loader
    assert (len(ds.x_train), len(ds.x_test), ds.num_classes, ds.input_shape) == (16, 4, 3, (1, 4, 4))


@pytest.mark.slow
def test_python_dataset_runs_the_do_own_function_only_when_named(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # prepare: the DO's own module returning (train, test) tensor pairs
    (tmp_path / "my_do_data.py").write_text(
        "from clicooper.data import load_dataset\n"
        "def load():\n"
        "    d = load_dataset('digits')\n"
        "    return (d.x_train, d.y_train), (d.x_test, d.y_test)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    name = "python:my_do_data:load"
    with pytest.raises(DataError, match="never loaded from a config"):  # a config alone never runs code
        clicooper.train(BASE | {"dataset": name}, model="digits-mlp", out=tmp_path / "from-config")
    # execute
    run = clicooper.train(BASE, data=name, model="digits-mlp", out=tmp_path / "r")
    # assert: config.json names it; nothing runs it from the file alone; naming it again does
    assert run.config.dataset == name
    with pytest.raises(DataError, match="never loaded from a config"):
        clicooper.load_run(run.path).evaluate()
    assert clicooper.load_run(run.path, data=name).evaluate() == run.test_acc
    from clicooper.net.builder import dataset_meta

    with pytest.raises(ConfigError, match="a trainer never loads"):
        dataset_meta(run.config)
    sys.modules.pop("my_do_data", None)


def test_python_dataset_errors_are_one_line() -> None:
    from clicooper.data.given import load_python

    with pytest.raises(DataError, match="cannot import"):
        load_python("python:no_such_module_xyz:fn")
    with pytest.raises(DataError, match="not python:pkg.module:function"):
        load_python("python:justamodule")
    with pytest.raises(DataError, match="has no function"):
        load_python("python:json:no_such_fn")


def test_keyword_fields_and_defenses_reach_the_config(tmp_path: Path) -> None:
    from clicooper.training.run import _defense_fields, _new_config

    cfg = _new_config({"dataset": "digits"}, {"epochs": 3} | _defense_fields([{"kind": "dp", "sigma": 0.5}]))
    assert cfg.epochs == 3 and cfg.protect_activations and cfg.dp.sigma == 0.5
    assert _new_config(None, _defense_fields(["dp", "labels"])).obfuscate_labels
    with pytest.raises(ConfigError, match="unknown kind"):
        _defense_fields(["nosuch"])
    with pytest.raises(ConfigError, match="given both"):
        _new_config({"epochs": 2}, {"epochs": 3})
    with pytest.raises(ConfigError, match="drop epochs"):
        clicooper.train(resume=tmp_path, epochs=2)


def _doc_example(path: Path) -> str:
    """The ```python block between <!-- example: python-api --> and <!-- /example --> of a docs file."""
    text = path.read_text("utf-8")
    m = re.search(r"<!-- example: python-api -->\s*```python\n(.*?)```\s*<!-- /example -->", text, re.S)
    assert m is not None, f"{path} lost its python-api example"
    return m.group(1)


@pytest.mark.slow
def test_the_docs_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the README shows the same example as the docs page, character for character
    code = _doc_example(ROOT / "docs" / "python-api.md")
    assert _doc_example(ROOT / "README.md") == code
    assert len([line for line in code.splitlines() if line.strip()]) <= 16  # a screenful, imports included
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "docs/python-api.md", "exec"), ns)  # noqa: S102 - the project's own docs
    run = ns["run"]
    assert run.paths["model"].is_dir() and run.privacy is not None and 0.0 <= run.test_acc <= 1.0


@pytest.mark.slow
def test_attack_takes_the_users_own_module_and_data_back(tmp_path: Path) -> None:
    from clicooper.attacks.runner import OwnObjects, run_attack

    # prepare: a run of the user's own classes on data given as tensors, observations recorded
    d = load_dataset("digits")
    data, test = (d.x_train, d.y_train), (d.x_test, d.y_test)
    run = clicooper.train(BASE | {"record_observations": True}, model=_resnet(), data=data, test_data=test,
                          out=tmp_path / "r")
    # execute / assert: refused in one line without them, run with them
    with pytest.raises((ConfigError, DataError)):
        run_attack(run.path, "clustering", knowledge=["zero"], write=False)
    res = run_attack(run.path, "clustering", knowledge=["zero"], write=False,
                     own=OwnObjects(model=_resnet(), data=data, test_data=test))
    assert res["results"] and res["attack"] == "clustering"


def test_only_the_do_node_names_its_own_data(tmp_path: Path) -> None:
    import json

    from clicooper.net.node_base import NodeOptions
    from clicooper.net.trainer_node import TrainerNode

    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"dataset": "python:my_do_data:load", "model": "digits-mlp", "trainers": 2}))
    opts = NodeOptions(config=cfg, party="T1", run_dir=tmp_path / "T1", listen="127.0.0.1:0",
                       peers={"DO": "127.0.0.1:1", "T2": "127.0.0.1:2"}, insecure_loopback=True,
                       dataset="python:my_do_data:load")
    with pytest.raises(ConfigError, match="a trainer and never loads data"):
        TrainerNode(opts)


@pytest.mark.slow
def test_report_baseline_and_do_alone_take_the_users_own_objects(tmp_path: Path) -> None:
    from clicooper.attacks.runner import OwnObjects
    from clicooper.report.report import do_alone_for, train_baseline

    d = load_dataset("digits")
    data, test = (d.x_train, d.y_train), (d.x_test, d.y_test)
    run = clicooper.train(BASE | {"defense": "dp"}, model=_resnet(), data=data, test_data=test, out=tmp_path / "r")
    own = OwnObjects(model=_resnet(), data=data, test_data=test)
    with pytest.raises(DataError, match="pass it again"):
        train_baseline(run.path, tmp_path / "base")
    base = train_baseline(run.path, tmp_path / "base", own=own)
    again = clicooper.load_run(base, model=_resnet(), data=data, test_data=test)
    assert again.config.defense == "none" and again.config.model == "own-module:BasicBlock" and again.evaluate() > 0.1
    assert 0.0 < do_alone_for(run.path, own=own)["do_alone_acc"] <= 1.0
