"""A bounded fuzz campaign on the inputs another party or a stranger's file can feed CliCooper.

Surfaces: model specs (the validator every node and ``load_run`` run on a received config), ledger lines
(one line, and whole ledgers through ``verify_run``), CSV tables, imagefolder directories, CIFAR binary
files and ``.npz`` files. Each surface runs in its own forked child under an address-space limit
(``RLIMIT_AS``) and a time budget; each case is a hostile input built from a seeded RNG (random bytes,
mutations of a valid input, extreme sizes, deep nesting). A case ends in one of three ways:

- **accepted**: the input was valid;
- **refused**: the project's error for that surface (``ConfigError``, ``LedgerError``, ``DataError``);
- **crash**: anything else (another exception, ``MemoryError``, the child dying) — there must be none.

Reported per surface: cases, accepted, refused, crashes (with the first examples), the child's peak resident
memory (and its rise over the child's start), the worst time of one case and what it was. For model specs
also the peak memory of validating the worst spec tried (the slowest one, re-validated alone in a fresh
child) and of the three specs of the audit (padding 9000, kernel 1024 with padding 512, three Linear
16384 → 16384)::

    python -m experiments.research.fuzz_inputs --seconds 150 --out results/fuzz/inputs.json

Nothing here is a test: ``tests/test_spec_bounds.py`` and the other test files hold the checks that must
pass; this script measures how the refusals hold up under volume.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import platform
import random
import resource
import struct
import sys
import tempfile
import time
import traceback
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from clicooper.errors import ConfigError, DataError, LedgerError

LIMIT_AS = 4 << 30  # bytes of address space per surface's child (torch alone maps about 1 GiB)
Case = tuple[str, Callable[[], Any]]  # (what it is, the call)


def _rss_mib(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ model specs
_SPEC_TYPES = ["Conv2d", "Conv1d", "Linear", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
               "Flatten", "Unflatten", "BatchNorm2d", "BatchNorm1d", "GroupNorm", "LayerNorm", "ReLU", "Dropout",
               "Residual", "Lambda"]
_SPEC_KEYS = ["out_channels", "kernel_size", "padding", "stride", "dilation", "groups", "out_features",
              "output_size", "num_groups", "start_dim", "end_dim", "dim", "unflattened_size", "padding_mode",
              "in_channels", "in_features", "p", "bias"]
_HEAD = [{"type": "Flatten"}, {"type": "Linear", "out_features": "outputs"}]
AUDIT_SPECS = {
    "conv padding 9000": [{"type": "Conv2d", "out_channels": 16, "kernel_size": 1, "padding": 9000}, *_HEAD],
    "conv kernel 1024 padding 512": [{"type": "Conv2d", "out_channels": 16, "kernel_size": 1024, "padding": 512},
                                     *_HEAD],
    "three Linear 16384": [{"type": "Flatten"}, *[{"type": "Linear", "out_features": 16384}] * 3,
                           {"type": "Linear", "out_features": "outputs"}],
}


def _value(rng: random.Random) -> Any:
    r = rng.random()
    if r < 0.45:
        return rng.choice([0, 1, 2, 3, 4, 7, 8, 16, 64, 255, 1024, 4096, 9000, 1 << 16, 1 << 20, -1])
    if r < 0.6:
        return [rng.choice([0, 1, 2, 3, 1024, 4096]) for _ in range(rng.randint(0, 3))]
    if r < 0.7:
        return rng.choice(["same", "valid", "outputs", "zeros", "reflect", "circular", ""])
    if r < 0.8:
        return rng.choice([0.5, -1.0, float("nan"), float("inf"), 1e300])
    if r < 0.9:
        return rng.choice([True, False, None])
    return {"nested": [rng.random()]}


def _layer(rng: random.Random, depth: int) -> dict[str, Any]:
    t = rng.choice(_SPEC_TYPES)
    if t == "Residual":
        if depth > 3:
            return {"type": "ReLU"}
        d: dict[str, Any] = {"type": t, "body": [_layer(rng, depth + 1) for _ in range(rng.randint(0, 3))]}
        if rng.random() < 0.5:
            d["shortcut"] = [_layer(rng, depth + 1) for _ in range(rng.randint(0, 2))]
        return d
    return {"type": t, **{k: _value(rng) for k in rng.sample(_SPEC_KEYS, rng.randint(0, 4))}}


def _mutate_zoo(rng: random.Random, layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = json.loads(json.dumps(layers))
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(out))
        keys = [k for k in out[i] if k != "type"] or ["padding"]
        out[i][rng.choice(keys)] = _value(rng)
    if rng.random() < 0.2:  # repeat a block: many layers
        out = out[:1] + out[1:2] * rng.choice([10, 200, 3000]) + out[1:]
    return out


def spec_cases(rng: random.Random) -> Iterator[Case]:
    from clicooper.models import zoo
    from clicooper.models.spec import check_model

    shapes = [(1, 28, 28), (3, 32, 32), (1, 8, 8), (4, 64), (784,), (3, 224, 224)]
    zoo_specs = [s for n in zoo.names() if (s := zoo.spec_of(n)) is not None]
    # warm-up, not a case: the first meta kernels load torch's decompositions (seconds, once per process)
    for layers, shape in [(zoo.spec_of("fmnist-cnn"), (1, 28, 28)), (zoo.spec_of("fmnist-resnet"), (1, 28, 28))]:
        check_model(layers, shape, 10)
    for name, layers in AUDIT_SPECS.items():
        yield f"audit: {name}", lambda layers=layers: check_model(layers, (1, 28, 28), 10)
    while True:
        shape = rng.choice(shapes)
        if rng.random() < 0.5:
            layers: Any = [_layer(rng, 0) for _ in range(rng.randint(1, 6))] + _HEAD
            what = "random layers"
        else:
            layers = _mutate_zoo(rng, rng.choice(zoo_specs))
            what = "mutated built-in"
        yield f"{what} on {shape}: {json.dumps(layers)[:300]}", \
            lambda layers=layers, shape=shape: check_model(layers, shape, 10)


# --------------------------------------------------------------------------------------------- ledgers
def _honest_ledger(tmp: Path) -> bytes:
    from torch import nn

    from clicooper.provenance.simulate import simulate_run

    segs = [nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)]
    simulate_run(tmp / "honest.jsonl", segs, rounds=2, steps_per_round=1, n_bits=32)
    return (tmp / "honest.jsonl").read_bytes()


def _mutate_line(rng: random.Random, line: bytes) -> tuple[str, bytes]:
    k = rng.randrange(9)
    if k == 0:
        b = bytearray(line)
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return "byte flips", bytes(b)
    if k == 1:
        return "truncated", line[: rng.randrange(len(line))]
    if k == 2:
        n = rng.choice([100, 1000, 10_000, 200_000])
        return f"{n} nested brackets", b"[" * n + b"]" * n
    if k == 3:
        n = rng.choice([990, 2000])
        return f"{n}-deep metrics", line.replace(b'"metrics":{', b'"metrics":{"d":' + b"[" * n + b"0" + b"]" * n + b",", 1)
    if k == 4:
        n = rng.choice([1 << 20, 4 << 20, 64 << 20])
        return f"{n}-byte line", b'{"type":"stage","x":"' + b"a" * n + b'"}'
    if k == 5:
        obj = json.loads(line)
        key = rng.choice(sorted(obj))
        obj[key] = _value(rng)
        return f"field {key} replaced", json.dumps(obj, separators=(",", ":")).encode()
    if k == 6:
        return "duplicate key", line[:-1] + b',"type":"stage"}'
    if k == 7:
        return "random bytes", os.urandom(rng.randint(0, 400))
    return "unicode escapes", line.replace(b'"', b'"\\ud800', 1)


def ledger_cases(rng: random.Random, tmp: Path) -> Iterator[Case]:
    from clicooper.provenance.ledger import parse_line
    from clicooper.provenance.verify import verify_run

    honest = _honest_ledger(tmp)
    lines = honest.rstrip(b"\n").split(b"\n")
    n = 0
    while True:
        n += 1
        i = rng.randrange(len(lines))
        what, bad = _mutate_line(rng, lines[i])
        if n % 5:
            yield f"line {i}: {what}", lambda bad=bad, i=i: parse_line(bad, i)
        else:  # the whole ledger, through the verifier (a torn or corrupt line anywhere)
            body = lines[:i] + [bad] + lines[i + 1:]
            data = b"\n".join(body) + (b"\n" if rng.random() < 0.7 else b"")
            f = tmp / f"l{n % 7}.jsonl"
            f.write_bytes(data)
            yield f"verify, line {i}: {what}", lambda f=f: verify_run(f)


# ------------------------------------------------------------------------------------------------- CSV
def _cell(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.4:
        return str(rng.choice([0, 1, -3.5, 1e308, 2, 7]))
    if r < 0.6:
        return rng.choice(["a", "b", "red", "blue", " ", "", "nan", "inf", '"', "x,y", "\u00e9"])
    if r < 0.8:
        return f"id{rng.randrange(100_000)}"
    return "".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randint(0, 20)))


def csv_cases(rng: random.Random, tmp: Path) -> Iterator[Case]:
    from clicooper.data import load_dataset

    n = 0
    while True:
        n += 1
        cols = rng.randint(1, 6)
        header = [rng.choice(["x", "y", "z", "label", "id", ""]) + str(rng.randrange(3)) for _ in range(cols)]
        label = rng.choice(header)
        rows = rng.choice([0, 1, 5, 50, 2000])
        lines = [",".join(header)] + [",".join(_cell(rng) for _ in range(cols + (rng.random() < 0.02)))
                                      for _ in range(rows)]
        data = "\n".join(lines).encode("utf-8")
        k = rng.random()
        if k < 0.1:
            data = b"\xef\xbb\xbf" + data
        elif k < 0.2:
            data = data[: rng.randrange(len(data) + 1)] + os.urandom(rng.randint(0, 50))
        elif k < 0.25:
            data = b'a,b\n"' + b"x" * rng.choice([1 << 17, 1 << 20]) + b'",1\n'
        f = tmp / f"t{n % 5}.csv"
        f.write_bytes(data)
        yield f"csv {rows} rows × {cols} cols, label {label!r}, {len(data)} bytes", \
            lambda f=f, label=label: load_dataset(f"csv:{f}", options={"label_column": label})


# ------------------------------------------------------------------------------------------ imagefolder
def _png(rng: random.Random) -> bytes:
    from PIL import Image

    w, h = rng.choice([(1, 1), (4, 4), (8, 5), (16, 16)])
    im = Image.fromarray(np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    im.save(buf, format=rng.choice(["PNG", "JPEG", "BMP"]))
    return buf.getvalue()


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` × ``height`` (its data is one deflated row at most)."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + \
        chunk(b"IEND", b"")


def imagefolder_cases(rng: random.Random, tmp: Path) -> Iterator[Case]:
    import shutil

    from clicooper.data import load_dataset

    n = 0
    while True:
        n += 1
        root = tmp / f"img{n % 3}"
        shutil.rmtree(root, ignore_errors=True)
        classes = rng.randint(0, 3)
        what = []
        for c in range(classes):
            d = root / f"c{c}"
            d.mkdir(parents=True)
            for i in range(rng.randint(0, 4)):
                k = rng.random()
                if k < 0.6:
                    data, kind = _png(rng), "image"
                elif k < 0.75:
                    good = _png(rng)
                    data, kind = good[: rng.randrange(len(good))], "truncated"
                elif k < 0.85:
                    data, kind = os.urandom(rng.randint(0, 300)), "random bytes"
                else:
                    data, kind = _bomb_png(rng.choice([100_000, 1 << 20, 30_000]), rng.choice([100_000, 1 << 20])), \
                        "huge declared size"
                (d / f"{i}.{rng.choice(['png', 'jpg', 'bmp'])}").write_bytes(data)
                what.append(kind)
        size = rng.choice([None, None, 8, 32])
        options: dict[str, Any] = {"image_size": size} if size else {}
        yield f"imagefolder {classes} classes ({', '.join(sorted(set(what))) or 'empty'}), size {size}", \
            lambda root=root, options=options: load_dataset(f"imagefolder:{root}", options=options)


# ------------------------------------------------------------------------------------------------ CIFAR
def cifar_cases(rng: random.Random, tmp: Path) -> Iterator[Case]:
    import shutil

    from clicooper.data import load_dataset

    rec = 1 + 3072
    n = 0
    while True:
        n += 1
        root = tmp / f"cifar{n % 3}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir()
        count = rng.choice([0, 1, 2, 10])
        names = ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
                 "data_batch_5.bin", "test_batch.bin"]
        what = []
        for name in names:
            k = rng.random()
            if k < 0.05:
                what.append("missing")
                continue
            recs = np.random.default_rng(rng.randrange(1 << 30)).integers(0, 256, (count, rec), dtype=np.uint8)
            recs[:, 0] %= 10
            data = recs.tobytes()
            if k < 0.15:
                data, kind = data[: rng.randrange(len(data) + 1)], "truncated"
            elif k < 0.25 and count:
                b = bytearray(data)
                b[0] = rng.choice([10, 200, 255])
                data, kind = bytes(b), "bad label"
            elif k < 0.3:
                data, kind = os.urandom(rng.randint(0, 5000)), "random"
            else:
                kind = "ok"
            (root / name).write_bytes(data)
            what.append(kind)
        if rng.random() < 0.3:
            (root / "batches.meta.txt").write_bytes(os.urandom(rng.randint(0, 200)))
            what.append("meta garbage")
        yield f"cifar10 {count} records/file ({', '.join(sorted(set(what)))})", \
            lambda root=root: load_dataset(f"cifar10:{root}")


# -------------------------------------------------------------------------------------------------- npz
def _npy_header_only(shape: tuple[int, ...], dtype: str = "<f4") -> bytes:
    """An .npy whose header declares ``shape`` but holds no data (a memory bomb if trusted)."""
    header = repr({"descr": dtype, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def npz_cases(rng: random.Random, tmp: Path) -> Iterator[Case]:
    from clicooper.data import load_dataset

    n = 0
    while True:
        n += 1
        f = tmp / f"d{n % 5}.npz"
        k = rng.randrange(8)
        g = np.random.default_rng(rng.randrange(1 << 30))
        if k == 0:
            f.write_bytes(os.urandom(rng.randint(0, 2000)))
            what = "random bytes"
        elif k == 1:
            np.savez(f, x=g.normal(size=(rng.choice([0, 1, 10, 50]), 3)).astype(np.float32),
                     y=g.integers(-2, 12, size=rng.choice([0, 1, 10, 50])))
            what = "x/y sizes and labels at random"
        elif k == 2:
            x = g.normal(size=(40, 4))
            x[g.integers(0, 40), 0] = rng.choice([np.nan, np.inf])
            np.savez(f, x=x, y=g.integers(0, 2, 40))
            what = "non-finite x"
        elif k == 3:
            np.savez(f, x=np.array([object()], dtype=object), y=np.array([0, 1]))
            what = "object dtype (pickle)"
        elif k == 4:
            with zipfile.ZipFile(f, "w") as z:
                z.writestr("x.npy", _npy_header_only((rng.choice([1 << 20, 1 << 34]), 1024)))
                z.writestr("y.npy", _npy_header_only((4,), "<i8"))
            what = "header declares a huge shape"
        elif k == 5:
            np.savez(f, x=g.integers(0, 255, (30, 2), dtype=np.uint8), y=g.normal(size=30))
            what = "float labels"
        elif k == 6:
            np.savez(f, x=g.normal(size=(20, 3)).astype(np.float32), y=np.arange(20) % 3,
                     x_test=g.normal(size=(5, 4)).astype(np.float32), y_test=np.arange(5) % 3)
            what = "test split of another shape"
        else:
            good = io.BytesIO()
            np.savez(good, x=g.normal(size=(30, 3)).astype(np.float32), y=np.arange(30) % 2)
            b = bytearray(good.getvalue())
            for _ in range(rng.randint(1, 10)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            f.write_bytes(bytes(b))
            what = "byte flips"
        yield f"npz: {what}", lambda f=f: load_dataset(f"npz:{f}")


# ----------------------------------------------------------------------------------------------- runner
SURFACES: dict[str, tuple[Callable[..., Iterator[Case]], tuple[type[BaseException], ...], bool]] = {
    # name: (cases, the project's refusal, whether the cases need a scratch directory)
    "model_specs": (spec_cases, (ConfigError,), False),
    "ledger_lines": (ledger_cases, (LedgerError,), True),
    "csv": (csv_cases, (DataError,), True),
    "imagefolder": (imagefolder_cases, (DataError,), True),
    "cifar_binary": (cifar_cases, (DataError,), True),
    "npz": (npz_cases, (DataError,), True),
}


def run_surface(name: str, seconds: float, seed: int, max_cases: int) -> dict[str, Any]:
    """Run one surface's cases for ``seconds`` (at most ``max_cases``); the figures of the campaign."""
    make, refusal, needs_dir = SURFACES[name]
    rng = random.Random(f"{seed}/{name}")
    start_rss = _rss_mib("VmRSS")
    counts = {"accepted": 0, "refused": 0, "crashes": 0}
    crashes: list[dict[str, str]] = []
    worst = (0.0, "")
    worst_input: Any = None
    times: list[tuple[float, str]] = []
    t_end = time.perf_counter() + seconds
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as d:
        cases = make(rng, Path(d)) if needs_dir else make(rng)
        for what, call in cases:
            if time.perf_counter() > t_end or sum(counts.values()) >= max_cases:
                break
            t0 = time.perf_counter()
            try:
                call()
                counts["accepted"] += 1
            except refusal:
                counts["refused"] += 1
            except Exception as e:  # noqa: BLE001 - a crash is what this campaign looks for
                counts["crashes"] += 1
                if len(crashes) < 10:
                    crashes.append({"case": what[:300], "error": f"{type(e).__name__}: {str(e)[:300]}",
                                    "where": traceback.format_exc(limit=-3)[-600:]})
            dt = time.perf_counter() - t0
            times.append((dt, what))
            if dt > worst[0]:
                worst = (dt, what[:300])
                worst_input = getattr(call, "__defaults__", None)  # the case's own arguments, to replay it
    times.sort(reverse=True)
    return {
        "cases": sum(counts.values()), **counts, "crash_examples": crashes,
        "peak_rss_mib": round(_rss_mib(), 1), "start_rss_mib": round(start_rss, 1),
        "peak_rss_rise_mib": round(_rss_mib() - start_rss, 1),
        "worst_case_seconds": round(worst[0], 4), "worst_case": worst[1],
        "median_case_seconds": round(times[len(times) // 2][0], 5) if times else None,
        "slowest_cases": [{"seconds": round(t, 4), "case": w[:200]} for t, w in times[:3]],
        "_worst_input": worst_input if name == "model_specs" else None,
    }


def validate_alone(layers: Any, shape: tuple[int, ...]) -> dict[str, Any]:
    """Validate one spec in this (fresh) process: outcome, seconds and the peak memory it added."""
    from clicooper.models import zoo
    from clicooper.models.spec import check_model

    check_model(zoo.spec_of("fmnist-resnet"), (1, 28, 28), 10)  # warm-up: the meta kernels load once per process
    before = _rss_mib("VmRSS")
    t0 = time.perf_counter()
    try:
        budget = check_model(layers, shape, 10)
        outcome = f"accepted ({budget.params:,} parameters, {budget.flops:,} FLOPs per sample)"
    except ConfigError as e:
        outcome = f"refused: {e}"
    return {"outcome": outcome[:400], "seconds": round(time.perf_counter() - t0, 4),
            "peak_rss_rise_mib": round(_rss_mib() - before, 1), "peak_rss_mib": round(_rss_mib(), 1)}


def _child(conn: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT_AS, LIMIT_AS))
    try:
        conn.send(("ok", fn(*args)))
    except BaseException as e:  # noqa: BLE001 - reported as a crash of the whole surface
        conn.send(("error", f"{type(e).__name__}: {e}"))
    conn.close()


def in_child(fn: Callable[..., Any], *args: Any, timeout: float) -> dict[str, Any]:
    """``fn(*args)`` in a forked child under :data:`LIMIT_AS`; its result, or a crash record."""
    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_child, args=(child, fn, args))
    p.start()
    child.close()
    try:
        if not parent.poll(timeout):
            return {"crashes": 1, "crash_examples": [{"error": f"the child ran past {timeout:.0f} s"}]}
        status, value = parent.recv()
    except EOFError:
        return {"crashes": 1, "crash_examples": [{"error": f"the child died (exit code {p.exitcode})"}]}
    finally:
        if p.is_alive():
            p.kill()
        p.join()
    if status != "ok":
        return {"crashes": 1, "crash_examples": [{"error": value}]}
    return value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the campaign and write its figures (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m experiments.research.fuzz_inputs",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=150.0, help="total time budget, split over the surfaces")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-cases", type=int, default=100_000, help="per surface")
    ap.add_argument("--surfaces", default=",".join(SURFACES), help="comma-separated subset")
    ap.add_argument("--out", type=Path, default=Path("results/fuzz/inputs.json"))
    a = ap.parse_args(argv)
    import torch  # imported before forking: every child starts with it, so its cost is not a case's

    torch.set_num_threads(1)
    names = [s for s in a.surfaces.split(",") if s]
    unknown = sorted(set(names) - set(SURFACES))
    if unknown:
        raise SystemExit(f"unknown surface(s) {', '.join(unknown)}; choose from {', '.join(SURFACES)}")
    each = a.seconds / len(names)
    t0 = time.perf_counter()
    surfaces = {n: in_child(run_surface, n, each, a.seed, a.max_cases, timeout=each + 120) for n in names}
    out: dict[str, Any] = {
        "command": "python -m experiments.research.fuzz_inputs " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "seed": a.seed, "seconds_budget": a.seconds, "address_space_limit_bytes": LIMIT_AS,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "surfaces": surfaces,
        "total_cases": sum(s.get("cases", 0) for s in surfaces.values()),
        "total_crashes": sum(s.get("crashes", 0) for s in surfaces.values()),
    }
    if "model_specs" in surfaces:
        worst = surfaces["model_specs"].get("worst_case", "")
        args = surfaces["model_specs"].get("_worst_input") or ()
        spec = (args[0], args[1] if len(args) > 1 else (1, 28, 28)) if args else None
        out["worst_spec"] = {"case": worst, "layers": _count_layers(spec[0]) if spec else None,
                             **(in_child(validate_alone, *spec, timeout=120) if spec else {})}
        out["audit_specs"] = {k: in_child(validate_alone, v, (1, 28, 28), timeout=120) for k, v in AUDIT_SPECS.items()}
    for s in surfaces.values():
        s.pop("_worst_input", None)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k not in ("surfaces",)}, indent=2))
    for n, s in surfaces.items():
        print(f"{n:14s} cases {s.get('cases', 0):6d}  crashes {s.get('crashes', 0)}  peak {s.get('peak_rss_mib')} MiB"
              f"  worst {s.get('worst_case_seconds')} s")
    return out


def _count_layers(layers: Any) -> int:
    """Layers in a spec, residual branches included."""
    if not isinstance(layers, list):
        return 0
    return sum(1 + sum(_count_layers(d.get(k)) for k in ("body", "shortcut")) if isinstance(d, dict) else 1
               for d in layers)


if __name__ == "__main__":
    main()
