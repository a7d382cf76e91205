"""One run loop for both deployments: a ``launch --local`` run (one process per party) writes the run
directory an in-process run of the same config writes — ``privacy.json``, ``metrics.json``,
``attacks/active.json``, the ledger with the DO's accusation, the observations — stops on the same
malicious trainer and resumes after the stop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from clicooper import rundir
from clicooper.cli.app import app
from clicooper.core.security import GUARD_KEY
from clicooper.errors import ConfigError, RunDirError
from clicooper.net.launch import LoopbackPlacement, launch_local, resume_local
from clicooper.provenance.verify import verify_run
from clicooper.training import train

TINY = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 2, "train_range": (0, 160),
        "provenance": False}
#: FSHA from the first step against SplitGuard and the gradient scrutinizer (30 steps; the validation is
#: checked apart: on so few steps its accuracy floor also fires on honest runs)
FSHA = {"dataset": "digits", "model": "digits-mlp", "trainers": 2, "epochs": 1, "train_range": (0, 480),
        "adversary": {"behaviour": "fsha"},
        "detection": {"enabled": True, "splitguard": {"warmup_steps": 10}, "scrutinizer": {"every": 2, "rows": 64},
                      "validation": {"enabled": False}}}
KEY = bytes((7 * i + 3) % 256 for i in range(32))  # the DO's fake-batch key, fixed for both paths


class _FixedGuardKey(LoopbackPlacement):
    """Loopback placement that gives the DO node the fixed guard key before its first start (test only: a
    real DO draws it from the OS CSPRNG)."""

    def wrap(self, party: str, argv: list[str]) -> list[str]:
        if party == "DO":
            run_dir = Path(argv[argv.index("--run-dir") + 1])
            f = run_dir / "secrets" / GUARD_KEY
            if not f.is_file():
                f.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                f.write_bytes(KEY)
        return argv


def _eps(run: Path) -> list[float]:
    return [float(r["epsilon"]) for r in rundir.read_json(run / rundir.PRIVACY)["reports"]]


@pytest.mark.slow
def test_node_run_writes_the_same_privacy_record_and_observations(tmp_path: Path) -> None:
    cfg = TINY | {"defense": "dp", "dp": {"sigma": 1.0, "clip_norm": 1.0}}
    train(cfg, out=tmp_path / "inproc")
    launch_local(cfg, tmp_path / "grpc", insecure_loopback=True, max_restarts=0, timeout_s=240)
    a, b = (rundir.read_json(tmp_path / p / rundir.PRIVACY) for p in ("inproc", "grpc"))
    assert a["epochs_accounted"] == b["epochs_accounted"] == 2
    assert _eps(tmp_path / "inproc") == pytest.approx(_eps(tmp_path / "grpc"), abs=1e-9)
    assert a == b  # the whole record: mechanisms, σ, what each ε covers
    ma, mb = (rundir.read_json(tmp_path / p / rundir.METRICS) for p in ("inproc", "grpc"))
    assert [m["privacy"] for m in ma["epochs"]] == [m["privacy"] for m in mb["epochs"]]


@pytest.mark.slow
def test_node_observations_equal_in_process_ones_and_report_reads_them(tmp_path: Path) -> None:
    cfg = TINY | {"record_observations": True, "observe": "all"}
    train(cfg, out=tmp_path / "inproc")
    launch_local(cfg, tmp_path / "grpc", insecure_loopback=True, max_restarts=0, timeout_s=240)
    a, b = tmp_path / "inproc" / rundir.OBSERVATIONS, tmp_path / "grpc" / rundir.OBSERVATIONS
    files = sorted(f.relative_to(a) for f in a.rglob("*.safetensors"))
    assert files and files == sorted(f.relative_to(b) for f in b.rglob("*.safetensors"))
    for f in files:
        ta, _ = rundir.load_tensors(a / f)
        tb, _ = rundir.load_tensors(b / f)
        assert set(ta) == set(tb), f
        for k in ta:
            assert ta[k].shape == tb[k].shape and torch.allclose(ta[k].double(), tb[k].double(), atol=1e-5), (f, k)
    assert rundir.read_json(a / "index.json") == rundir.read_json(b / "index.json")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "grpc"), "--out", str(tmp_path / "rep"), "--baseline",
                                   str(tmp_path / "inproc"), "--no-do-alone", "--budget", "smoke",
                                   "--attack", "gradient-leak,clustering", "--json"])
    assert res.exit_code == 0, res.output


@pytest.mark.slow
def test_node_guard_validates_through_the_chain_as_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """The DO node's validation queries travel the chain over gRPC: same checks, same verdicts, same numbers."""
    monkeypatch.setattr("clicooper.core.security.os.urandom", lambda n: KEY[:n])
    cfg = TINY | {"detection": {"enabled": True, "splitguard": {"warmup_steps": 5},
                                "validation": {"every": 4, "rows": 64}}}
    train(cfg, out=tmp_path / "inproc")
    launch_local(cfg, tmp_path / "grpc", insecure_loopback=True, max_restarts=0, timeout_s=240,
                 placement=_FixedGuardKey())
    da, db = (rundir.read_json(tmp_path / p / rundir.ATTACKS / "active.json")["detection"] for p in ("inproc", "grpc"))
    assert len(da["validation"]) >= 2 and [v["step"] for v in da["validation"]] == [v["step"] for v in db["validation"]]
    for va, vb in zip(da["validation"], db["validation"], strict=True):
        assert va["accuracy"] == pytest.approx(vb["accuracy"], abs=1e-6) and va["loss"] == pytest.approx(vb["loss"])
    assert da["alarm"] == db["alarm"] and da["fake_steps"] == db["fake_steps"]


def test_observations_import_refuses_a_malformed_recording(tmp_path: Path) -> None:
    run = tmp_path / "run"
    rundir.write_json(run / rundir.CONFIG, {**TINY, "batch_size": 16})
    bad = tmp_path / "t1" / rundir.OBSERVATIONS / "T1"
    rundir.save_tensors(bad / "epoch_1.safetensors", {"positions": torch.tensor([[0, 0, 99]]),
                                                      "activations": torch.zeros(1, 4)},
                        {"party": "T1", "epoch": "1", "rows": "positions"})
    with pytest.raises(RunDirError, match="names row 99"):
        from clicooper.core.observe import import_observations

        import_observations(run, [tmp_path / "t1"])
    assert not (run / rundir.OBSERVATIONS).exists()  # nothing written
    res = CliRunner().invoke(app, ["observations", "import", str(run), "--from", str(tmp_path / "t1")])
    assert res.exit_code == 2 and "names row 99" in res.output


def test_node_refuses_what_it_cannot_honour(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="only an in-process run"):
        launch_local(TINY | {"adversary": {"behaviour": "backdoor"}}, tmp_path / "bd", insecure_loopback=True)
    assert not (tmp_path / "bd").exists()


@pytest.mark.slow
@pytest.mark.timeout(1200)  # four FSHA trainings, two of them as three processes each
def test_both_paths_stop_on_fsha_with_an_accusation_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setattr("clicooper.core.security.os.urandom", lambda n: KEY[:n])
    ip, node = tmp_path / "inproc", tmp_path / "grpc"
    train(FSHA, out=ip)
    res = launch_local(FSHA, node, insecure_loopback=True, max_restarts=0, timeout_s=300, placement=_FixedGuardKey())
    stops = {}
    for run in (ip, node):
        m = rundir.read_json(run / rundir.METRICS)
        st = stops[run] = m["stopped"]
        assert st["reason"] == "detection" and st["suspects"] == ["T1"] and st["completed_epochs"] == 0
        assert rundir.read_json(run / rundir.STATE)["completed_rounds"] == 0
        report = verify_run(run / rundir.LEDGER)  # the DO's signed accusation in the ledger
        assert [a["detector"] for a in report.accusations] == [st["detector"]]
        active = rundir.read_json(run / rundir.ATTACKS / "active.json")
        assert active["trainer"]["behaviour"] == "fsha" and active["stopped"]["detector"] == st["detector"]
    assert res.metrics["stopped"]["reason"] == "detection" and "launch --resume" in res.notices[-1]
    same = ("round", "step", "detector", "suspects")
    assert {k: stops[ip][k] for k in same} == {k: stops[node][k] for k in same}  # same key, same computation

    # resume with the detection dismissed (the DO reviewed the accusation): the run completes on both paths
    train(resume=ip, dismiss_detection=True)
    res = resume_local(node, timeout_s=300, dismiss_detection=True)
    assert "stopped" not in res.metrics and (node / rundir.MODEL_DIR).is_dir()
    for run in (ip, node):
        m = rundir.read_json(run / rundir.METRICS)
        assert "stopped" not in m and len(m["epochs"]) == 1
        report = verify_run(run / rundir.LEDGER)
        assert report.closed and len(report.accusations) == 1, report.failures


@pytest.mark.slow
def test_audit_works_on_a_launched_run(tmp_path: Path) -> None:
    """Each trainer node keeps its own audit log and commits to it in its stage entries; ``launch`` gathers
    the logs, and ``clicooper audit`` replays a trainer of the node run (with the key it hands over)."""
    cfg = TINY | {"epochs": 1, "provenance": True, "audit": {"enabled": True, "interval": 5}}
    launch_local(cfg, tmp_path / "run", insecure_loopback=True, max_restarts=0, timeout_s=240)
    run = tmp_path / "run"
    for party in ("T1", "T2"):
        key = run / "nodes" / party / "keys" / f"{party}.key"
        res = CliRunner().invoke(app, ["audit", str(run), "--party", party, "--key", str(key), "--fraction", "1",
                                       "--json"])
        assert res.exit_code == 0, res.output
    assert verify_run(run / rundir.LEDGER).ok


@pytest.mark.slow
def test_node_run_stops_at_the_epsilon_budget_and_resumes(tmp_path: Path) -> None:
    from clicooper.privacy.accountant import epsilon

    cfg = TINY | {"defense": "dp", "dp": {"sigma": 1.0, "clip_norm": 1.0}}
    eps = [epsilon(sigma=1.0, epochs=e, delta=1e-5).epsilon for e in (1, 2)]
    run = tmp_path / "grpc"
    res = launch_local(cfg, run, insecure_loopback=True, max_restarts=0, timeout_s=240, max_epsilon=sum(eps) / 2)
    st = res.metrics["stopped"]
    assert st["reason"] == "max_epsilon" and st["before_epoch"] == 2 and st["completed_epochs"] == 1
    assert rundir.read_json(run / rundir.PRIVACY)["epochs_accounted"] == 1
    assert rundir.read_json(run / rundir.STATE) == {"completed_rounds": 1} and not (run / rundir.MODEL_DIR).exists()
    res = resume_local(run, timeout_s=240, max_epsilon=eps[1] * 1.01)
    assert "stopped" not in res.metrics and len(res.metrics["epochs"]) == 2
    assert rundir.read_json(run / rundir.PRIVACY)["epochs_accounted"] == 2
    with pytest.raises(RunDirError, match="finished"):
        resume_local(run)
