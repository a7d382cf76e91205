"""serve_party drives toy party state machines over gRPC: DO → T1 → T2 → DO and back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from clicooper.net import ServeResult, generate_party_certs, save_party_cert, serve_party
from support.net import ChainDataOwner, ChainTrainer, loopback_mesh

torch.set_num_threads(1)


def _run_chain(mesh, steps: int) -> tuple[ChainDataOwner, dict[str, ServeResult]]:
    do = ChainDataOwner(["T1", "T2"], steps=steps, shape=(16, 8))
    parties = {"T1": ChainTrainer("T1", prev="DO", next="T2"), "T2": ChainTrainer("T2", prev="T1", next="DO")}
    results: dict[str, ServeResult] = {}
    errors: list[BaseException] = []

    def run(name: str) -> None:
        try:
            if name == "DO":
                results[name] = serve_party(do, mesh[name], initial=do.start(), deadline_s=30)
            else:
                results[name] = serve_party(parties[name], mesh[name], deadline_s=30)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(n,)) for n in ("T2", "T1", "DO")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=40)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return do, results


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext-loopback", "pinned-tls"])
def test_chain_forward_and_backward(tls):
    # prepare
    mesh = loopback_mesh(["DO", "T1", "T2"], tls=tls)
    steps = 5
    try:
        # execute
        do, results = _run_chain(mesh, steps)
    finally:
        for t in mesh.values():
            t.close()
    # assert: each trainer doubles forward and backward
    assert {r.reason for r in results.values()} == {"shutdown"}
    assert [float(o.mean()) for o in do.outputs] == [4.0 * (s + 1) for s in range(steps)]
    assert all(torch.equal(g, torch.full((16, 8), 4.0)) for g in do.grads) and len(do.grads) == steps
    assert results["T1"].handled == 2 * steps + 1  # forward + backward per step, then shutdown
    assert results["DO"].sent == 2 * steps + 2


def test_deadline_and_idle_end_the_loop():
    mesh = loopback_mesh(["DO", "T1"])
    try:
        r = serve_party(ChainTrainer("T1", prev="DO", next="DO"), mesh["T1"], deadline_s=0.3)
        assert r.reason == "deadline" and r.handled == 0 and 0.3 <= r.seconds < 2
        r = serve_party(ChainTrainer("T1", prev="DO", next="DO"), mesh["T1"], idle_timeout_s=0.2)
        assert r.reason == "idle"
    finally:
        for t in mesh.values():
            t.close()


def test_chain_in_three_processes_with_pinned_tls(tmp_path):
    # prepare: certificates on disk, one process per party (each binds an ephemeral port and reports it)
    names = ["DO", "T1", "T2"]
    for c in generate_party_certs(names).values():
        save_party_cert(c, tmp_path)
    here = Path(__file__).resolve().parent  # tests/: the children run support.chain_node
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here.parent / "src"), str(here)])}
    procs = [subprocess.Popen([sys.executable, "-m", "support.chain_node", "--name", n, "--parties",
                               ",".join(names), "--certs", str(tmp_path), "--steps", "4"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for n in names]
    try:
        # execute: hand every process the peer table, then let the chain run
        table = json.dumps({h["name"]: h["address"] for h in (json.loads(p.stdout.readline()) for p in procs)})
        for p in procs:
            p.stdin.write(table + "\n")
            p.stdin.flush()
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    # assert
    assert [p.returncode for p in procs] == [0, 0, 0], [e for _, e in outs]
    results = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert all(r["reason"] == "shutdown" for r in results)
    assert results[0]["outputs"] == [4.0, 8.0, 12.0, 16.0] and results[0]["grads"] == [4.0] * 4
