"""``clicooper verify`` against a hostile run directory: JSON parsed with a size and depth bound (a parse
failure, never a RecursionError), one JSON verdict on every exit path, a torn tail ignored however it is
nested, segments required only where a stage was committed, and keys pinned from a file known out of band."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from clicooper.cli import app
from clicooper.errors import LedgerError
from clicooper.jsonbound import JSONBoundError, loads
from clicooper.net.node_ledger import genesis_from_wire
from clicooper.provenance.canonical import canonical_json
from clicooper.provenance.delivered import verify_delivered
from clicooper.provenance.entries import sign_multi
from clicooper.provenance.identity import Identity
from clicooper.provenance.simulate import _start

HONEST = Path(__file__).parent / "vectors" / "cases" / "honest-u2"
runner = CliRunner()


def _copy(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(HONEST, run)
    return run


def _verify_json(*args: str) -> tuple[int, dict[str, Any], float]:
    """Run ``clicooper verify … --json``; stdout must be exactly one JSON object."""
    t0 = time.perf_counter()
    res = runner.invoke(app, ["verify", *args, "--json"])
    secs = time.perf_counter() - t0
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1, (res.exception, res.stdout[-500:])
    return res.exit_code, json.loads(lines[0]), secs


def _replace_line(run: Path, index: int, line: bytes) -> None:
    lines = (run / "ledger.jsonl").read_bytes().split(b"\n")
    lines[index] = line
    (run / "ledger.jsonl").write_bytes(b"\n".join(lines))


def test_200000_nested_brackets_in_a_ledger_line_are_a_parse_failure(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    _replace_line(run, 2, b"[" * 200_000 + b"]" * 200_000)
    # act
    code, obj, secs = _verify_json(str(run))
    # assert
    assert (code, obj["ok"], obj["cause"]["check"], obj["cause"]["index"]) == (1, False, "parse", 2)
    assert "nested 200000 levels deep" in obj["cause"]["message"] and secs < 10


def test_a_64_mib_ledger_line_is_refused_unparsed(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    _replace_line(run, 2, b"[" + b"0," * (32 << 20) + b"0]")  # 32 Mi numbers: gigabytes once parsed
    # act
    code, obj, secs = _verify_json(str(run))
    # assert
    assert (code, obj["cause"]["check"], obj["cause"]["index"]) == (1, "parse", 2)
    assert "more than the 1,048,576 allowed" in obj["cause"]["message"] and secs < 10


def test_a_signed_looking_entry_with_990_deep_metrics_is_a_parse_failure(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    entry = json.loads((run / "ledger.jsonl").read_bytes().split(b"\n")[1])
    entry["metrics"]["deep"] = 0
    line = canonical_json(entry).replace(b'"deep":0', b'"deep":' + b"[" * 990 + b"0" + b"]" * 990)
    _replace_line(run, 1, line)
    # act
    code, obj, _ = _verify_json(str(run))
    # assert
    assert (code, obj["cause"]["check"], obj["cause"]["index"]) == (1, "parse", 1)
    assert "levels deep, more than the 64 allowed" in obj["cause"]["message"]


@pytest.mark.parametrize("newline", [b"", b"\n"])
def test_a_deeply_nested_torn_tail_is_ignored(tmp_path: Path, newline: bytes) -> None:
    run = _copy(tmp_path)
    with (run / "ledger.jsonl").open("ab") as f:
        f.write(b"[" * 200_000 + newline)
    # act
    code, obj, _ = _verify_json(str(run))
    # assert: the honest run verifies, saying it ignored a torn tail
    assert (code, obj["ok"]) == (0, True), obj["failures"]
    assert any("torn" in n for n in obj["notes"])


def test_a_genesis_from_a_peer_nested_deep_is_a_ledger_error() -> None:
    with pytest.raises(LedgerError, match="nested 200000 levels deep"):
        genesis_from_wire("[" * 200_000)
    with pytest.raises(JSONBoundError):
        loads('{"a": "' + "x" * 100 + '"}', max_bytes=50)


def test_a_plan_with_an_extra_unused_position_needs_no_segment_for_it(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    plan = json.loads((run / "plan.json").read_text())
    plan["parties"].append({"party": "T3", "position": 4})
    (run / "plan.json").write_text(json.dumps(plan))
    # act
    report, _ = verify_delivered(run)
    # assert
    assert report.ok, [str(f) for f in report.failures]


def test_a_run_closed_after_0_rounds_needs_no_segment(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    names, owners = ["DO", "T1"], {0: "DO", 1: "T1", 2: "DO"}
    ids = {n: Identity.generate() for n in names}
    ledger = _start(run / "ledger.jsonl", names, ids, owners, 3)
    ledger.close([sign_multi(ids[n], ledger.closing_body()) for n in names])
    (run / "plan.json").write_text(json.dumps({"parties": [{"party": "DO:head", "position": 0},
                                                           {"party": "T1", "position": 1},
                                                           {"party": "DO:tail", "position": 2}]}))
    # act
    report, _ = verify_delivered(run)
    # assert
    assert report.ok, [str(f) for f in report.failures]
    assert any("closed after 0 of 3 planned rounds" in n for n in report.notes)


def _pub(run: Path, name: str) -> str:
    return (run / "keys" / f"{name}.pub").read_text().strip()


def test_verify_pins_keys_from_a_trusted_keys_file(tmp_path: Path) -> None:
    run = _copy(tmp_path)
    good = tmp_path / "trusted.json"
    good.write_text(json.dumps({"DO": _pub(run, "DO"), "T1": _pub(run, "T1")}))
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"T1": Identity.generate().public_key.hex()}))
    # act
    code, obj, _ = _verify_json(str(run), "--trusted-keys", str(good))
    code_bad, obj_bad, _ = _verify_json(str(run), "--trusted-keys", str(bad))
    code_junk, obj_junk, _ = _verify_json(str(run), "--trusted-keys", str(run / "plan.json"))
    # assert
    assert (code, obj["ok"]) == (0, True)
    assert any("no trusted key for T2" in n for n in obj["notes"])
    assert (code_bad, obj_bad["cause"]["check"]) == (1, "trusted-key")
    assert "T1" in obj_bad["cause"]["message"]
    assert (code_junk, obj_junk["cause"]["check"], obj_junk["exit_code"]) == (2, "error", 2)
    assert "--trusted-keys" in obj_junk["error"]


def test_a_trusted_keys_file_overrides_keys_planted_in_the_run(tmp_path: Path) -> None:
    # whoever handed the run over replaced RUN/keys and the genesis consistently would pass RUN/keys pinning;
    # here RUN/keys is planted with a wrong key: the file known out of band is what counts
    run = _copy(tmp_path)
    (run / "keys" / "T1.pub").write_text(Identity.generate().public_key.hex() + "\n")
    trusted = tmp_path / "trusted.json"
    trusted.write_text(json.dumps({"T1": HONEST.joinpath("keys", "T1.pub").read_text().strip()}))
    assert not verify_delivered(run)[0].ok
    assert verify_delivered(run, trusted_keys_file=trusted)[0].ok


def test_reveal_takes_several_files_after_one_option(tmp_path: Path) -> None:
    reveals = sorted(str(p) for p in (HONEST / "reveals").glob("*.reveal.json"))
    # act
    code, obj, _ = _verify_json(str(HONEST), "--reveal", *reveals)
    code2, obj2, _ = _verify_json(str(HONEST), "--reveal", reveals[0], "--reveal", reveals[1])
    code3, obj3, _ = _verify_json(str(HONEST), reveals[0])
    # assert
    assert (code, sorted({r["file"] for r in obj["reveals"]})) == (0, reveals)
    assert obj["reveals"] == obj2["reveals"]
    assert code2 == 0
    assert (code3, obj3["cause"]["check"]) == (2, "error") and "follow --reveal" in obj3["error"]


def test_a_deep_config_or_plan_from_another_party_is_a_clean_refusal(tmp_path: Path) -> None:
    from clicooper.config import load_config_file
    from clicooper.errors import ConfigError
    from clicooper.net.builder import read_plan

    deep = tmp_path / "deep.json"
    deep.write_text('{"a": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(ConfigError, match="nested 5001 levels deep"):
        load_config_file(deep)
    with pytest.raises(ConfigError, match="not a CliCooper plan .*nested 5001 levels deep"):
        read_plan(deep)


def test_a_usage_error_of_verify_json_still_prints_one_verdict(monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from clicooper.cli.app import main

    monkeypatch.setattr("sys.argv", ["clicooper", "verify", str(HONEST), "--json", "--bogus"])
    with pytest.raises(SystemExit) as e:
        main()
    lines = capsys.readouterr().out.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1
    obj = json.loads(lines[0])
    assert (obj["ok"], obj["cause"]["check"], obj["exit_code"]) == (False, "error", 2) and "--bogus" in obj["error"]
