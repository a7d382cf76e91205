"""The CLI is generated from the config: every run-config key is settable with ``--set`` and listed by
``clicooper fields``, read from the pydantic models, so a new config field needs no CLI edit; the common
options stay readable flags, and a removed one says how to set it now."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, Field
from typer.testing import CliRunner

from clicooper.cli import app
from clicooper.cli.common import apply_sets, config_from_options
from clicooper.config import RunConfig
from clicooper.config.keys import config_keys, defense_keys
from clicooper.errors import ConfigError

runner = CliRunner()


def _walk_models(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every leaf path of ``model``, walked independently of :func:`config_keys` (pydantic's own schema)."""
    paths: list[str] = []
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})

    def walk(props: dict[str, Any], pre: str) -> None:
        for name, prop in props.items():
            ref = prop.get("$ref") or next((a["$ref"] for a in prop.get("anyOf", []) if "$ref" in a), None)
            target = defs.get(ref.rsplit("/", 1)[-1]) if ref else None
            if target is not None and "properties" in target and target.get("title") != "DefenseSpec":
                walk(target["properties"], f"{pre}{name}.")
            else:
                paths.append(pre + name)

    walk(schema["properties"], prefix)
    return paths


def _get(cfg: BaseModel, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = value[part] if isinstance(value, dict) else getattr(value, part)
    return value


def test_every_run_config_leaf_is_listed_and_settable_with_set() -> None:
    # prepare: the leaves as pydantic's JSON schema sees them, and the ones the CLI lists
    listed = {k.key: k for k in config_keys()}
    # assert: the same leaves (nothing is left out of `clicooper fields` / --set)
    assert sorted(listed) == sorted(_walk_models(RunConfig))
    for key, info in listed.items():
        # execute: --set KEY=VALUE with the field's own default, as JSON
        default = _get(RunConfig(), key.split(".")[0])
        for part in key.split(".")[1:]:
            default = None if default is None else getattr(default, part)
        raw = apply_sets({}, [f"{key}={json.dumps(default, default=str)}"])
        # assert: the value lands at its dotted path of the raw config
        node: Any = raw
        for part in key.split("."):
            node = node[part]
        assert node == json.loads(json.dumps(default, default=str)), key
        if default is not None and not key.startswith("adversary."):  # an adversary needs its behaviour
            assert _get(config_from_options(None, sets=[f"{key}={json.dumps(default, default=str)}"]),
                        key) == _get(RunConfig(), key), key
        assert info.type, key


def test_a_new_config_field_is_settable_and_listed_without_a_cli_edit(monkeypatch: pytest.MonkeyPatch) -> None:
    # prepare: a RunConfig with one new field and one new table, as a contributor would add them
    class Knobs(BaseModel):
        model_config = ConfigDict(extra="forbid", frozen=True)
        depth: int = Field(3, ge=1, description="how deep the new table goes")

    class Extended(RunConfig):
        new_knob: float = Field(0.5, gt=0.0, description="a field added after the CLI was written")
        knobs: Knobs = Field(Knobs(), description="a table added after the CLI was written")

    import clicooper.cli.common as common
    import clicooper.config.run as run

    monkeypatch.setattr(run, "RunConfig", Extended)  # what make_config and config_keys build
    monkeypatch.setattr(common, "RunConfig", Extended)  # what --set checks keys against
    # execute
    cfg = config_from_options(None, dataset="digits", sets=["new_knob=0.25", "knobs.depth=7"])
    listed = runner.invoke(app, ["fields", "--json"])
    # assert: set through --set, listed by `clicooper fields` with its description, checked by its own model
    assert isinstance(cfg, Extended) and (cfg.new_knob, cfg.knobs.depth) == (0.25, 7)
    fields = {f["key"]: f for f in json.loads(listed.stdout.strip().splitlines()[-1])["fields"]}
    assert fields["new_knob"]["description"] == "a field added after the CLI was written"
    assert fields["knobs.depth"]["default"] == "3"
    with pytest.raises(ConfigError, match="knobs.depth"):
        config_from_options(None, sets=["knobs.depth=0"])
    with pytest.raises(ConfigError, match="did you mean knobs.depth"):
        config_from_options(None, sets=["knobs.dept=2"])


def test_fields_lists_the_config_and_every_defence_setting() -> None:
    r = runner.invoke(app, ["fields", "--json"])
    assert r.exit_code == 0, r.output
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    keys = {f["key"] for f in obj["fields"]}
    assert {"momentum", "data.workers", "detection.splitguard.p_fake", "party_devices"} <= keys
    assert {"keyed-noise:sigma", "nopeek:weight", "head-dpsgd:noise_multiplier"} <= {d["key"] for d in obj["defenses"]}
    assert [d["key"] for d in obj["defenses"]] == [k.key for k in defense_keys()]
    human = runner.invoke(app, ["fields"], env={"COLUMNS": "100"})
    assert human.exit_code == 0 and "--set KEY=VALUE" in human.stdout and "[[defenses]]" in human.stdout
    assert "Nesterov momentum" in human.stdout  # the field's own description


@pytest.mark.parametrize(("flag", "hint"), [
    ("--momentum", "--set momentum=VALUE"), ("--workers", "--set data.workers=VALUE"),
    ("--max-sigma", "--set dp.max_sigma=VALUE"), ("--party-device", "--set party_devices.NAME=VALUE"),
    ("--nopeek", "--with nopeek:key=value"),
])
def test_a_flag_that_became_a_config_key_says_how_to_set_it(tmp_path, flag: str, hint: str) -> None:  # noqa: ANN001
    r = runner.invoke(app, ["train", flag, "1", "--out", str(tmp_path / "r")], env={"COLUMNS": "300"})
    assert r.exit_code == 2 and not (tmp_path / "r").exists()
    assert f"No such option: {flag}; " in r.output and hint in r.output
    other = runner.invoke(app, ["train", "--no-such-thing", "1", "--out", str(tmp_path / "r")], env={"COLUMNS": "300"})
    assert other.exit_code == 2 and "--set" not in other.output  # not a config field: click's own message


def test_train_keeps_only_the_common_fields_as_flags() -> None:
    """A new config field is reached through --set; a flag of its own is a deliberate choice made here."""
    import inspect

    import typer.models

    from clicooper.cli.train import train

    params = inspect.signature(inspect.unwrap(train)).parameters.values()
    options = [p.name for p in params if isinstance(p.default, typer.models.OptionInfo)]
    leaves = {k.key.rsplit(".", 1)[-1] for k in config_keys()} | {"defense", "sigma", "target_epsilon"}
    mirrors = [o for o in options if o in leaves]
    assert mirrors == ["dataset", "label_column", "stream", "model", "trainers", "capacities", "topology", "epochs",
                       "batch_size", "lr", "seed", "provenance", "train_range", "record_observations", "device",
                       "defense", "preset", "sigma", "target_epsilon"]
    assert len(options) == 29  # the mirrors, then --out, --model-file, --with, --max-epsilon, --config, --set,
    # --resume, --dismiss-detection, --threads, --json
