"""Defences as typed specs (RunConfig.defenses) and mechanisms the DO loops over; the older fields as
shorthand, so run directories written before ``defenses`` existed still load, train alike and resume."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from clicooper.config import make_config
from clicooper.errors import ConfigError, InterruptedRun
from clicooper.parties.data_owner import DataOwner
from clicooper.privacy.defenses.base import Defense
from clicooper.privacy.defenses.registry import DEFENSES
from clicooper.training import train

BASE = {"dataset": "digits", "model": "digits-mlp", "epochs": 2, "train_range": [0, 160], "provenance": False,
        "seed": 1, "device": "cpu"}
#: the defence fields of a config.json written before `defenses` existed (a --defense clicooper run)
OLD_FIELDS = {
    "head_mode": "learned", "nopeek": 0.0, "adversarial_decoder": 0.0, "defense": "clicooper",
    "dp": {"sigma": 0.05, "noise_ratio": 1.0, "target_epsilon": None, "max_sigma": 1000.0, "sigma_source": "explicit",
           "clip_norm": 1.0, "delta": 1e-05, "protect_gradients": False, "grad_clip_norm": None, "accountant": "pld",
           "head_dpsgd": None},
    "labels": {"expansion": 2, "label_dp_epsilon": None},
}


def _weights(run: Path) -> dict[str, bytes]:
    return {f"{f.name}/{k}": v.numpy().tobytes() for f in sorted((run / "model").glob("*.safetensors"))
            for k, v in load_file(f).items()}


def test_every_older_field_becomes_its_spec() -> None:
    kinds = {
        "keyed-noise": {"defense": "dp", "dp": {"sigma": 0.1}},
        "label-obfuscation": {"defense": "labels", "labels": {"expansion": 3}},
        "gradient-protection": {"defense": "dp", "dp": {"sigma": 0.1, "protect_gradients": True, "grad_clip_norm": 0.5}},
        "randomized-response": {"topology": "open-tail", "labels": {"label_dp_epsilon": 2.0}},
        "head-dpsgd": {"defense": "dp", "dp": {"sigma": 0.1, "head_dpsgd": {"noise_multiplier": 1.5}}},
        "nopeek": {"nopeek": 0.5},
        "adversarial-decoder": {"adversarial_decoder": 0.25},
        "secret-random-head": {"head_mode": "secret-random"},
    }
    assert set(kinds) == set(DEFENSES)  # every built-in mechanism has its shorthand
    for kind, fields in kinds.items():
        c = make_config(dataset="digits", **fields)
        assert kind in [d.kind for d in c.defenses], kind
        again = make_config(**c.model_dump(mode="json"))  # config.json → reload
        assert again == c and again.config_hash() == c.config_hash()
    c = make_config(dataset="digits", **kinds["gradient-protection"])
    assert (c.defense, c.dp.sigma, c.dp.protect_gradients, c.dp.grad_clip_norm) == ("dp", 0.1, True, 0.5)
    assert make_config(dataset="digits", nopeek=0.0).defenses == []  # 0 = off, as before
    # in a defenses list, a bare name is its kind, and the older defense values stand for their kinds
    listed = make_config(dataset="digits", defenses=["clicooper", {"kind": "nopeek", "weight": 1}])
    assert [d.kind for d in listed.defenses] == ["label-obfuscation", "keyed-noise", "nopeek"]
    assert make_config(dataset="digits", defenses=[{"kind": "dp", "sigma": 0.5}]).dp.sigma == 0.5
    assert make_config(dataset="digits", defense="none", dp={"sigma": 0.3}).defenses == []
    with pytest.raises(ConfigError, match="sigma_source"):  # a malformed table is refused even when off
        make_config(dataset="digits", dp={"sigma_source": "noise-ratio"})


def test_the_clash_rules_live_with_the_specs() -> None:
    with pytest.raises(ConfigError, match="secret-random.*nopeek"):
        make_config(dataset="digits", defenses=[{"kind": "secret-random-head"}, {"kind": "nopeek", "weight": 1}])
    with pytest.raises(ConfigError, match="needs --defense dp or clicooper"):
        make_config(dataset="digits", defenses=[{"kind": "head-dpsgd", "noise_multiplier": 1.0}])
    with pytest.raises(ConfigError, match="open tail"):
        make_config(dataset="digits", defenses=[{"kind": "randomized-response", "epsilon": 1.0}])
    with pytest.raises(ConfigError, match="gradient-protection noises with the keyed-noise"):
        make_config(dataset="digits", defenses=[{"kind": "gradient-protection", "clip_norm": 1.0}])
    with pytest.raises(ConfigError, match=r"defenses\[0\] \(keyed-noise\): sigma"):
        make_config(dataset="digits", defenses=[{"kind": "keyed-noise", "sigma": -1}])


_SIGMA_CHOICES = {
    "a source without σ": ({"sigma_source": "explicit"},
                           "dp.sigma_source is filled in when σ is chosen; leave it out (or give dp.sigma)"),
    "σ and a target ε": ({"sigma": 0.5, "target_epsilon": 1.0},
                         "give dp.sigma or dp.target_epsilon, not both (the target ε chooses σ); drop one of them"),
    "a target source without a target": ({"sigma": 0.5, "sigma_source": "target-epsilon"},
                                         "dp.sigma_source is 'target-epsilon' but dp.target_epsilon is not set"),
}


@pytest.mark.parametrize("case", list(_SIGMA_CHOICES))
@pytest.mark.parametrize("form", ["keyed-noise spec", "older dp table"])
def test_the_keyed_noise_spec_and_the_older_dp_table_refuse_a_sigma_choice_alike(form: str, case: str) -> None:
    # prepare: the same σ fields, as a defences entry or as the older `dp` table
    fields, message = _SIGMA_CHOICES[case]
    given = ({"defenses": [{"kind": "keyed-noise", **fields}]} if form == "keyed-noise spec"
             else {"defense": "dp", "dp": fields})
    # execute / assert: one refusal, word for word the same on both paths
    with pytest.raises(ConfigError) as e:
        make_config(**BASE, **given)
    assert message in str(e.value)


def test_the_keyed_noise_spec_and_the_older_dp_table_record_an_explicit_sigma_alike() -> None:
    from clicooper.config.run import DPConfig

    spec = make_config(**BASE, defenses=[{"kind": "keyed-noise", "sigma": 0.3}]).defense_of("keyed-noise")
    assert spec is not None and spec.sigma_source == "explicit"  # type: ignore[attr-defined]
    assert DPConfig(sigma=0.3).sigma_source == "explicit"
    assert make_config(**BASE, defense="dp", dp={"sigma": 0.3}).dp.sigma_source == "explicit"


def test_the_data_owner_takes_a_sequence_of_defences() -> None:
    params = inspect.signature(DataOwner.__init__).parameters
    assert "defenses" in params
    assert not {"protector", "grad_protector", "label_encoder", "label_noiser", "head_dpsgd", "nopeek",
                "adversary"} & set(params)
    assert all(issubclass(c, Defense) and c.spec.model_fields["kind"].default == k for k, c in DEFENSES.items())


@pytest.mark.slow
def test_the_shorthand_and_the_spec_list_train_the_same_weights(tmp_path: Path) -> None:
    old = train({**BASE, "epochs": 1, "nopeek": 0.5, "defense": "dp", "dp": {"sigma": 0.0}}, out=tmp_path / "old")
    new = train({**BASE, "epochs": 1, "defenses": [{"kind": "nopeek", "weight": 0.5},
                                                   {"kind": "keyed-noise", "sigma": 0.0}]}, out=tmp_path / "new")
    assert _weights(old.path) == _weights(new.path)
    assert "defenses" in json.loads((new.path / "config.json").read_text())


def _interrupt_rewrite_resume(cfg: dict, old_fields: dict, out: Path) -> Any:
    """Train ``cfg`` stopped after epoch 1, put its config.json in the older form, then resume it."""

    def stop(m: dict) -> None:
        if m["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(InterruptedRun):
        train(cfg, out=out, on_epoch=stop)
    new_form = json.loads((out / "config.json").read_text())
    old_form = {k: v for k, v in new_form.items() if k != "defenses"} | old_fields
    (out / "config.json").write_text(json.dumps(old_form, indent=2))
    return train(resume=out)


@pytest.mark.slow
def test_a_run_directory_with_the_older_fields_resumes(tmp_path: Path) -> None:
    """A run written before `defenses` (its config.json in the older form) resumes to the same weights as an
    uninterrupted run, and its config.json is left as it was (the ledger binds its file's hash)."""
    nopeek = OLD_FIELDS | {"defense": "none", "nopeek": 0.5}  # no secret: the two runs can agree bit for bit
    whole = train({**BASE, **nopeek}, out=tmp_path / "whole")
    resumed = _interrupt_rewrite_resume({**BASE, **nopeek}, nopeek, tmp_path / "resumed")
    assert _weights(resumed.path) == _weights(whole.path)
    assert json.loads((resumed.path / "config.json").read_text())["nopeek"] == 0.5  # not rewritten
    assert [d.kind for d in resumed.config.defenses] == ["nopeek"]

    defended = _interrupt_rewrite_resume({**BASE, **OLD_FIELDS}, OLD_FIELDS, tmp_path / "defended")
    assert [d.kind for d in defended.config.defenses] == ["label-obfuscation", "keyed-noise"]
    privacy = json.loads((defended.path / "privacy.json").read_text())
    assert privacy["epochs_accounted"] == 2 and privacy["activation_noise"]["sigma"] == 0.05


def test_each_defence_reports_its_guarantee(tmp_path: Path) -> None:
    import torch

    from clicooper.privacy.defenses.base import DefenseContext
    from clicooper.privacy.defenses.registry import build_defenses
    from clicooper.privacy.runtime import mechanisms_for_run

    cfg = make_config(dataset="digits", topology="open-tail", defenses=[
        {"kind": "keyed-noise", "sigma": 0.5}, {"kind": "randomized-response", "epsilon": 2.0},
        {"kind": "nopeek", "weight": 1.0}])
    privacy = mechanisms_for_run(cfg, tmp_path, 10, new_run=True)
    head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8))
    ctx = DefenseContext(config=cfg, head=head, input_shape=(1, 8, 8), cut_shape=(8,), num_classes=10,
                         device=torch.device("cpu"), privacy=privacy)
    reports = {d.kind: d.report(3) for d in build_defenses(cfg.defenses, ctx)}
    record = {r["released"]: r for r in privacy.record_after(3)["reports"] if "released" in r}
    noise = reports["keyed-noise"]
    assert noise["guarantee"] == "dp" and noise["epsilon"] == record[noise["released"]]["epsilon"]
    assert reports["randomized-response"]["guarantee"] == "dp" and reports["randomized-response"]["epsilon"] == 2.0
    assert reports["nopeek"] == {"kind": "nopeek", "guarantee": "empirical", "epsilon": None,
                                 "covers": "no formal bound; measure it with the attacks (clicooper report)"}
    assert len(ctx.key("example")) == 32 and ctx.key("example") != ctx.key("other")


def test_the_cli_takes_any_registered_defence_by_its_spec(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from clicooper.cli import app
    from clicooper.cli.common import config_from_options

    cfg = config_from_options(None, dataset="digits", defense_specs=["nopeek:weight=0.5", "keyed-noise:sigma=0.1"])
    assert [(d.kind, getattr(d, "weight", None) or d.sigma) for d in cfg.defenses] == [
        ("keyed-noise", 0.1), ("nopeek", 0.5)]
    with pytest.raises(typer.BadParameter, match="--with lists the defences; give sigma there too"):
        config_from_options(None, dataset="digits", defense_specs=["nopeek:weight=0.5"], sigma=0.2)
    toml = tmp_path / "run.toml"
    toml.write_text('dataset = "digits"\n[[defenses]]\nkind = "keyed-noise"\nsigma = 0.3\n', "utf-8")
    cfg = config_from_options(toml, defense_specs=["keyed-noise:sigma=0.2,clip_norm=2"])  # same kind: replaced
    assert [(d.kind, d.sigma, d.clip_norm) for d in cfg.defenses] == [("keyed-noise", 0.2, 2.0)]
    with pytest.raises(typer.BadParameter, match="run.toml lists the defences"):
        config_from_options(toml, defense="dp")
    res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "r"), "--dataset", "digits",
                                   "--with", "nopeek:weight=-1"])
    assert res.exit_code == 2 and "defenses[0] (nopeek): weight" in res.output
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_defence_with_state_resumes_where_it_stopped(tmp_path: Path) -> None:
    """The adversarial decoder's weights and Adam moments are checkpointed (Defense.state_dict), so an
    interrupted run resumes to the weights of an uninterrupted one."""
    from tests.support.resume import interrupted_then_resumed

    cfg = {**BASE, "defenses": [{"kind": "adversarial-decoder", "weight": 0.5, "hidden": 32}]}
    whole = train(cfg, out=tmp_path / "whole")
    resumed = interrupted_then_resumed(cfg, tmp_path / "resumed")
    assert _weights(resumed.path) == _weights(whole.path)
    state = load_file(tmp_path / "resumed" / "checkpoints" / "round_0" / "DO.defenses.safetensors")
    assert "adversarial-decoder/decoder.1.weight" in state and any(k.endswith(".exp_avg") for k in state)


def test_gradient_protection_is_refused_in_the_open_tail() -> None:
    """In the open tail the last trainer computes the loss itself: the DO returns no gradient, so gradient
    protection would do nothing while the privacy record listed it. Refused, by the spec and by the shorthand."""
    with pytest.raises(ConfigError, match="open tail"):
        make_config(dataset="digits", topology="open-tail",
                    defenses=[{"kind": "keyed-noise", "sigma": 0.05}, {"kind": "gradient-protection", "clip_norm": 1.0}])
    with pytest.raises(ConfigError, match="open tail"):
        make_config(dataset="digits", topology="open-tail", defense="dp",
                    dp={"sigma": 0.05, "protect_gradients": True, "grad_clip_norm": 1.0})
    # the same defences in U-shape stay accepted
    make_config(dataset="digits", defenses=[{"kind": "keyed-noise", "sigma": 0.05},
                                            {"kind": "gradient-protection", "clip_norm": 1.0}])
