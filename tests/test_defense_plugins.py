"""Defences and attacks from an out-of-tree package (entry points ``clicooper.defenses`` and
``clicooper.attacks``): tests/plugin_example is pip-installed into a temporary directory, then a fresh process
with it on the path trains with its defence and reports with its attack beside a built-in one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clicooper.config import make_config
from clicooper.config.defenses import DefenseSpec, defense_kinds, parse_defenses
from clicooper.errors import ConfigError

PLUGIN = Path(__file__).parent / "plugin_example"
SRC = Path(__file__).resolve().parents[1] / "src"

_SCRIPT = r"""
import json, sys
from pathlib import Path
import torch
from clicooper import train
from clicooper.attacks import names
from clicooper.config import make_config
from clicooper.config.defenses import defense_kinds
from clicooper.errors import ConfigError
from clicooper.report.report import make_report
from clicooper.runs import load_run

out = Path(sys.argv[1])
res = {"kinds": defense_kinds(), "attacks": names()}
base = {"dataset": "digits", "model": "digits-mlp", "epochs": 1, "train_range": [0, 400], "provenance": False,
        "seed": 0, "record_observations": True, "observe": "all", "device": "cpu"}
for bad in ({"kind": "release-quantize", "step": 0},
            {"kind": "release-quantize", "step": 0.25, "colour": "red"}):
    try:
        make_config(**base, defenses=[bad])
    except ConfigError as e:
        res.setdefault("refused", []).append(str(e))
try:
    make_config(**{**base, "defenses": [{"kind": "keyed-noise", "sigma": 0.1}, {"kind": "release-quantize", "step": 0.5},
                                        {"kind": "head-dpsgd", "noise_multiplier": 1.0}]})
except ConfigError as e:
    res["conflict"] = str(e)
run = train({**base, "defenses": [{"kind": "release-quantize", "step": 0.25}]}, out=out / "run")
from safetensors.torch import load_file
a = load_file(out / "run" / "observations" / "T1" / "epoch_1.safetensors")["activations"]
res["quantised"] = bool(torch.equal(a, torch.round(a / 0.25) * 0.25))
res["config_defenses"] = json.loads((out / "run" / "config.json").read_text())["defenses"]
res["reloaded"] = [d.kind for d in load_run(out / "run").config.defenses]
rep = make_report(out / "run", out / "report", attacks="clustering,norm-bins", do_alone=False)
res["report_attacks"] = sorted(rep["attacks"])
res["report_md"] = (out / "report" / "report.md").read_text()
print(json.dumps(res))
"""


def test_an_unknown_kind_names_the_known_ones_and_kinds_are_unique() -> None:
    with pytest.raises(ConfigError, match="unknown kind 'nope' of defence; choose one of adversarial-decoder"):
        make_config(dataset="digits", defenses=[{"kind": "nope"}])
    with pytest.raises(ConfigError, match="nopeek more than once"):
        make_config(dataset="digits", defenses=[{"kind": "nopeek", "weight": 1}, {"kind": "nopeek", "weight": 2}])
    with pytest.raises(ConfigError, match="not both"):
        make_config(dataset="digits", defenses=[{"kind": "nopeek", "weight": 1}], defense="dp")
    assert "keyed-noise" in defense_kinds()
    # the order the DO applies them in is the specs' own, whatever the list's
    specs = parse_defenses([{"kind": "keyed-noise", "sigma": 0.1}, {"kind": "randomized-response", "epsilon": 1.0}])
    assert [s.kind for s in specs] == ["randomized-response", "keyed-noise"]


def test_a_spec_needs_a_kind_of_its_own() -> None:
    with pytest.raises(TypeError, match="already registered"):
        from typing import Literal

        class Clash(DefenseSpec):  # noqa: F841 - defining it is the test
            kind: Literal["nopeek"] = "nopeek"


@pytest.mark.slow
def test_an_installed_package_adds_a_defence_and_an_attack(tmp_path: Path) -> None:
    target = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--no-index", "--target", str(target), str(PLUGIN)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    assert list(target.glob("clicooper_example_plugin-*.dist-info/entry_points.txt"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), str(SRC)]), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert "release-quantize" in res["kinds"] and "norm-bins" in res["attacks"] and "clustering" in res["attacks"]
    assert len(res["refused"]) == 2 and "greater than 0" in res["refused"][0] and "colour" in res["refused"][1]
    assert "release-quantize changes the release" in res["conflict"]  # the plug-in's own conflict rule
    assert res["config_defenses"] == [{"kind": "release-quantize", "step": 0.25}]
    assert res["reloaded"] == ["release-quantize"]
    assert res["quantised"]  # what T1 received went through the plug-in's hook
    assert res["report_attacks"] == ["clustering", "norm-bins"]
    assert "norm-bins" in res["report_md"] and "clustering" in res["report_md"]
