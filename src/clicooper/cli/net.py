"""Network commands: ``clicooper node``, ``clicooper certs``, ``clicooper launch`` (docs/network.md).

Thin: each command calls one function of :mod:`clicooper.net`. That package imports torch and gRPC
(≈3–4 s), so it is imported inside the commands ("lazy: torch, grpc"), keeping ``clicooper --help`` fast.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from clicooper.cli.common import SET_HELP, config_from_options, emit_json, err, guarded, out
from clicooper.errors import ConfigError


@guarded
def node(
    config: Path = typer.Option(..., "--config", help="run config (.json/.toml); the same file on every node"),
    party: str = typer.Option(..., "--party", help="DO | T1 … TK"),
    key: Path = typer.Option(None, "--key", help="this party's private TLS key (default CERTS/<party>.key)"),
    identity: Path = typer.Option(None, "--identity", help="this party's Ed25519 ledger key (provenance; "
                                  "default RUN_DIR/keys/<party>.key, created for a new run)"),
    run_dir: Path = typer.Option(..., "--run-dir", help="this party's own run directory (checkpoints)"),
    peers: str = typer.Option(..., "--peers", help="name=host:port,… of the parties this one talks to"),
    listen: str = typer.Option(..., "--listen", help="host:port to listen on"),
    certs: Path = typer.Option(None, "--certs", help="certificate set from `clicooper certs`"),
    insecure_loopback: bool = typer.Option(False, "--insecure-loopback", help="plaintext, 127.0.0.1 only"),
    plan: Path = typer.Option(None, "--plan", help="plan.json (default: next to the config)"),
    connect_timeout: float = typer.Option(30.0, help="seconds to reach each peer"),
    idle_timeout: float = typer.Option(300.0, help="seconds without any message before giving up"),
    device: str = typer.Option(None, "--device", help="this party's device: auto | cpu | cuda (default: the "
                               "config's device for this party); not part of the run's config"),
    dataset: str = typer.Option(None, "--dataset", help="DO only: its own data, as the config names it; required "
                                "for python:pkg.module:fn (the DO's own function, run on this machine only)"),
    max_epsilon: float = typer.Option(None, "--max-epsilon", help="DO: stop cleanly before a round that would take "
                                      "ε above this (resume with a larger one)"),
    dismiss_detection: bool = typer.Option(False, "--dismiss-detection", help="DO: live detection off for this "
                                           "invocation (after reviewing the accusation of a detection stop)"),
) -> None:
    """Run ONE party as its own process (the DO drives the steps; trainers follow)."""
    from clicooper.net.node import NodeOptions, parse_peers, run_node  # lazy: torch, grpc

    run_node(NodeOptions(config=config, party=party, run_dir=run_dir, listen=listen, peers=parse_peers(peers),
                         certs=certs, key=key, identity=identity, insecure_loopback=insecure_loopback, plan=plan,
                         connect_timeout_s=connect_timeout, idle_timeout_s=idle_timeout, events=sys.stdout,
                         device=device, dataset=dataset, max_epsilon=max_epsilon,
                         dismiss_detection=dismiss_detection))


@guarded
def certs(
    args: list[str] = typer.Argument(None, metavar="[RUN_CONFIG | assemble CARD...]",
                                     help="with --local: the run config; after the word assemble: the cards "
                                          "(NAME.party.json, or NAME.crt with NAME.pub beside it) the parties sent"),
    party: str = typer.Option(None, "--party", help="make THIS party's own keys (run on its own machine): TLS "
                              "key + certificate, Ed25519 ledger key, and the card to send to the data owner"),
    local: bool = typer.Option(False, "--local", help="one-machine convenience (tests, demos): write EVERY party's "
                               "private keys into one folder; whoever holds it can impersonate any party"),
    out_dir: Path = typer.Option(..., "--out", help="folder to write into (existing key files are never "
                                 "overwritten)"),
    fingerprint: list[str] = typer.Option(None, "--fingerprint", help="assemble: NAME=HEX a party told you over "
                                          "another channel; its card must match (repeat per party)"),
    valid_days: int = typer.Option(365, help="certificate validity"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Certificates and keys for a networked run (docs/network.md "Keys across organisations").

    \b
    clicooper certs --party T1 --out MINE/        each party, on its own machine: its keys only
    clicooper certs assemble --out SET/ CARD...   the data owner: the public set from the parties' cards
    clicooper certs RUN_CONFIG --local --out DIR  one machine: every party's keys (tests only)
    """
    from clicooper.net import certs as c  # lazy: cryptography

    words = list(args or [])
    if party is not None:
        if words or local:
            raise ConfigError("--party makes one party's own keys: give no RUN_CONFIG, cards or --local with it")
        own = c.write_own_party(party, out_dir, valid_days=valid_days)
        if as_json:
            emit_json({"party": own.name, "certificate": str(own.certificate), "card": str(own.card),
                       "fingerprint": own.fingerprint, "ledger_public_key": own.ledger_public_key,
                       "private": [str(own.tls_key), str(own.ledger_key)]})
            return
        out.print(f"{own.name}: private keys {own.tls_key} and {own.ledger_key} (0600) — they never leave this "
                  "machine")
        out.print(f"send to the data owner: {own.card} (or {own.certificate} and {own.ledger_pub})")
        out.print(f"and tell them over another channel (phone, signed mail) the fingerprint\n  {own.fingerprint}")
        out.print(f"ledger public key (for verify --trusted-keys): {own.ledger_public_key}")
        return
    if words and words[0] == "assemble":
        if local:
            raise ConfigError("assemble takes the parties' cards; --local is for a one-machine set")
        expect = dict(_name_value(x, "--fingerprint") for x in (fingerprint or []))
        fps, keys = c.assemble_set([Path(x) for x in words[1:]], out_dir, expect=expect)
        if as_json:
            emit_json({"out": str(out_dir), "fingerprints": fps, "ledger_keys": keys})
            return
        t = Table(title=f"certificate set in {out_dir} (public: give the folder to every party)")
        t.add_column("party")
        t.add_column("SHA-256 fingerprint (pinned) — compare with what each party told you")
        t.add_column("ledger key")
        for name, fp in fps.items():
            t.add_row(name, fp, keys.get(name, "—")[:16] + "…")
        out.print(t)
        unchecked = sorted(set(fps) - set(expect))
        if unchecked:
            err.print(f"[yellow]not checked with --fingerprint:[/] {', '.join(unchecked)}", highlight=False)
        return
    if not local:
        raise ConfigError("across organisations each party makes its own keys: `clicooper certs --party NAME --out "
                          "DIR` on its machine, then the data owner runs `clicooper certs assemble --out SET CARD…`; "
                          "for a one-machine test set pass RUN_CONFIG --local")
    if len(words) != 1:
        raise ConfigError("--local takes one RUN_CONFIG (the run's config file)")
    from clicooper.net.builder import load_run_config, party_names  # lazy: torch, grpc

    fps = c.write_cert_set(party_names(load_run_config(Path(words[0]))), out_dir, valid_days=valid_days)
    if as_json:
        emit_json({"out": str(out_dir), "fingerprints": fps, "local": True})
        return
    t = Table(title=f"certificates in {out_dir} — LOCAL: every party's private key is in this one folder")
    t.add_column("party")
    t.add_column("SHA-256 fingerprint (pinned)")
    for name, fp in fps.items():
        t.add_row(name, fp)
    out.print(t)
    err.print("[yellow]--local:[/] one machine holds every party's TLS key; across organisations use "
              "`clicooper certs --party NAME` on each machine", highlight=False)


def _name_value(text: str, option: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise ConfigError(f"{option} {text!r} is not NAME=VALUE (e.g. T1=3f2a…)")
    return name.strip(), value.strip()


def _launch_progress(prog: Progress) -> Callable[[dict[str, Any]], None]:
    """The ``on_event`` callback of ``launch_local``: one progress bar per party, restarts printed."""
    tasks: dict[str, Any] = {}
    totals: dict[str, tuple[int, int]] = {}

    def on_event(ev: dict[str, Any]) -> None:
        p, kind = ev.get("party", "?"), ev.get("event")
        if p not in tasks:
            tasks[p] = prog.add_task(p, total=None, info="starting")
        if kind == "start":
            totals[p] = (int(ev["epochs"]), int(ev["steps"]))
            e, s = totals[p]
            prog.update(tasks[p], total=e * s, completed=int(ev["round"]) * s, info=f"round {ev['round'] + 1}")
        elif kind == "step" and p in totals:
            prog.update(tasks[p], completed=int(ev["round"]) * totals[p][1] + int(ev["step"]) + 1)
        elif kind == "round":
            info = f"round {ev['round'] + 1} saved"
            if "loss" in ev:
                info += f" loss {ev['loss']:.4f}"
            prog.update(tasks[p], info=info)
        elif kind == "done":
            prog.update(tasks[p], info="done")
        elif kind == "restart":
            prog.console.print(f"[yellow]{ev['party']} stopped ({ev['why']}); restarting all parties from "
                               f"the last committed round (restart {ev['restarts']})[/]")

    return on_event


@guarded
def launch(
    config: Path = typer.Argument(None, help="run config (.json/.toml); not with --resume"),
    out_dir: Path = typer.Option(None, "--out", help="new run directory"),
    resume: Path = typer.Option(None, "--resume", help="start every node of this launched run again: it continues "
                                "from the rounds every party completed (after a clean stop or a failed launch)"),
    model_file: Path = typer.Option(None, "--model-file", help="model.toml / model.json (your own layers) "
                                    "instead of the config's model; it goes into RUN/config.json, which every "
                                    "node builds from"),
    local: bool = typer.Option(False, "--local", help="all parties on this machine (127.0.0.1): one machine makes "
                               "every party's keys, each in its own RUN/nodes/<party>/own (tests, demos)"),
    insecure_loopback: bool = typer.Option(False, "--insecure-loopback", help="plaintext instead of pinned TLS"),
    max_restarts: int = typer.Option(3, help="restarts after a node dies (all roll back to a round)"),
    max_epsilon: float = typer.Option(None, "--max-epsilon", help="the DO stops cleanly before a round that would "
                                      "take ε above this (continue with --resume and a larger one)"),
    dismiss_detection: bool = typer.Option(False, "--dismiss-detection", help="with --resume: the DO reviewed the "
                                           "accusation of a detection stop and continues with live detection off"),
    sets: list[str] = typer.Option(None, "--set", help=SET_HELP),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Start every party as its own process, show progress, collect RUN/model (evaluate works)."""
    from clicooper.net.launch import launch_local, resume_local  # lazy: torch, grpc

    if not local:
        raise ConfigError("only --local is implemented: on several machines, start `clicooper node` on each "
                          "(docs/network.md)")
    if (resume is None) == (config is None):
        raise typer.BadParameter("give a run config and --out RUN for a new run, or --resume RUN (not both)")
    if dismiss_detection and resume is None:
        raise typer.BadParameter("--dismiss-detection continues a run stopped by a detection: use it with --resume")
    with Progress(TextColumn("{task.description:>4}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[info]}"), console=err) as prog:
        if resume is not None:
            if out_dir is not None or model_file is not None or insecure_loopback or sets:
                raise typer.BadParameter("--resume continues the run as it was launched: drop --out, --model-file, "
                                         "--set and --insecure-loopback")
            res = resume_local(resume, on_event=_launch_progress(prog), max_restarts=max_restarts,
                               max_epsilon=max_epsilon, dismiss_detection=dismiss_detection)
        else:
            if out_dir is None:
                raise typer.BadParameter("--out RUN is required (or --resume RUN)")
            overridden = model_file is not None or bool(sets)
            run_config = config_from_options(config, model_file=model_file, sets=sets) if overridden else config
            res = launch_local(run_config, out_dir, insecure_loopback=insecure_loopback,
                               on_event=_launch_progress(prog), max_restarts=max_restarts, max_epsilon=max_epsilon)
    for n in res.notices:
        err.print(f"note: {n}")
    stopped = res.metrics.get("stopped")
    transport = "grpc plaintext loopback" if not (res.run_dir / "certs").is_dir() else "grpc pinned TLS"
    summary = {"run": str(res.run_dir), "test_acc": res.metrics.get("final_test_acc"),
               "restarts": res.restarts, "seconds": round(res.seconds, 1), "transport": transport}
    if stopped is not None:
        summary["stopped"] = stopped
    if as_json:
        emit_json(summary)
    elif stopped is not None:
        out.print(f"stopped before round {stopped['before_epoch']} ({stopped['reason']}); {stopped['completed_epochs']} "
                  f"round(s) saved in {res.run_dir}")
    else:
        out.print(f"test accuracy {summary['test_acc']:.4f}  (run: {res.run_dir}, {summary['transport']})")
    if (stopped or {}).get("reason") == "detection":
        raise typer.Exit(3)  # stopped by the DO's live detection: saved, resumable (docs/malicious.md)


@guarded
def observations_import(
    run_dir: Path = typer.Argument(..., help="the DO's run directory (config.json)"),
    sources: list[Path] = typer.Option(..., "--from", help="a trainer node's run directory, or its observations "
                                       "folder (repeat --from for each trainer)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Bring what trainer nodes recorded (--record-observations) into the DO's run directory for `report`."""
    from clicooper.core.observe import import_observations  # lazy: torch

    got = import_observations(run_dir, sources)
    if as_json:
        emit_json({"run": str(run_dir), "imported": got})
        return
    for party, epochs in got.items():
        out.print(f"{party}: epoch(s) {', '.join(map(str, epochs))} → {run_dir}/observations/{party}")
