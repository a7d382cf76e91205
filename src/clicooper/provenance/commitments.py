"""Commitments written into the ledger (docs/design/ledger.md#the-ledger).

- :func:`segment_commitment` — SHA-256 of a segment's tensors in canonical safetensors form (metadata
  excluded). ``safetensors.torch.save(tensors, metadata=None)`` is deterministic: the header is JSON with
  the tensors ordered by (dtype alignment, name) and no ``__metadata__`` key, padded with spaces to a
  multiple of 8 bytes. A golden test pins those bytes, so a safetensors upgrade that changes them fails
  loudly instead of silently changing every commitment.
- :func:`dataset_commitment` — salted (HMAC-SHA256 keyed by a DO secret) commitment to the training set,
  so nobody can test a candidate dataset against the public genesis.
- :func:`config_hash`, :func:`architecture_hash` — plain hashes for the genesis; :func:`stamp_architecture`
  records the architecture hash in ``plan.json`` (``extra.architecture_hash``) and checks it where a run's
  plan is rebuilt (nodes, ``load_run``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from safetensors.torch import save as _st_save
from torch import nn

from clicooper.data.dataset import TrainInputs
from clicooper.data.stream import StreamedImages
from clicooper.errors import ConfigError, DataError, LedgerError
from clicooper.provenance.canonical import canonical_json, lp, sha256_hex

#: Minimum length of the DO's dataset-commitment secret.
MIN_SECRET_BYTES = 32


def canonical_segment_bytes(state_dict: Mapping[str, torch.Tensor]) -> bytes:
    """Canonical safetensors bytes of a state dict: detached, contiguous CPU copies, no metadata."""
    if not state_dict:
        raise LedgerError("cannot commit to an empty segment: a segment must have parameters")
    tensors: dict[str, torch.Tensor] = {}
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise LedgerError(f"state dict entry {name!r} is a {type(t).__name__}, not a tensor")
        # clone(): safetensors refuses tensors that share storage (tied weights, views).
        tensors[str(name)] = t.detach().to("cpu").contiguous().clone()
    return _st_save(tensors, metadata=None)


def segment_commitment(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of :func:`canonical_segment_bytes` (the ledger's ``start`` / ``end`` commitments)."""
    return sha256_hex(canonical_segment_bytes(state_dict))


def module_commitment(module: nn.Module) -> str:
    """:func:`segment_commitment` of ``module.state_dict()`` (parameters and buffers)."""
    return segment_commitment(module.state_dict())


def _tensor_parts(t: torch.Tensor) -> list[bytes]:
    t = t.detach().to("cpu").contiguous()
    raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
    return [lp(str(t.dtype)), lp(",".join(str(int(s)) for s in t.shape)), lp(raw)]


def _streamed_parts(t: StreamedImages) -> Iterator[bytes]:
    """:func:`_tensor_parts` of a streamed split (clicooper.data.stream), its raw bytes read chunk by chunk:
    the same bytes as for the tensor it stands for."""
    yield lp(str(t.dtype))
    yield lp(",".join(str(int(s)) for s in t.shape))
    yield (t.shape.numel() * t.dtype.itemsize).to_bytes(8, "big")  # lp's length prefix of the raw bytes
    for c in t.chunks():
        yield c.contiguous().numpy().tobytes()


def dataset_commitment(
    secret: bytes, tensors: Mapping[str, TrainInputs], ids: torch.Tensor | None = None
) -> str:
    """HMAC-SHA256 (keyed by the DO's ``secret``) over the dataset's canonical bytes, hex.

    The bytes are ``lp("clicooper/dataset")`` then, for each tensor name in sorted order, ``lp(name)``,
    ``lp(dtype)``, ``lp(shape)``, ``lp(raw little-endian bytes)``, then ``lp("ids")`` and the ids tensor
    the same way (ids default to ``arange(len)`` of the first tensor). Streaming: no copy of the whole
    dataset is made. Without the secret, the commitment reveals nothing testable about the data.
    """
    if len(secret) < MIN_SECRET_BYTES:
        raise DataError(f"the dataset commitment secret must have at least {MIN_SECRET_BYTES} bytes")
    if not tensors:
        raise DataError("cannot commit to an empty dataset")
    mac = hmac.new(secret, lp("clicooper/dataset"), hashlib.sha256)
    for name in sorted(tensors):
        mac.update(lp(name))
        t = tensors[name]
        for part in _streamed_parts(t) if isinstance(t, StreamedImages) else _tensor_parts(t):
            mac.update(part)
    if ids is None:
        ids = torch.arange(len(tensors[sorted(tensors)[0]]), dtype=torch.int64)
    mac.update(lp("ids"))
    for part in _tensor_parts(ids.to(torch.int64)):
        mac.update(part)
    return mac.hexdigest()


def config_hash(config: Mapping[str, Any]) -> str:
    """Hex SHA-256 of the RFC 8785 canonical JSON of a (JSON-able) resolved config."""
    return sha256_hex(canonical_json(dict(config)))


def architecture_hash(model: nn.Module) -> str:
    """Hex SHA-256 of the model's structure: ``repr(model)`` and each state-dict entry's name, shape, dtype.

    Weights are not included (they are committed per segment); ``repr`` ties the hash to the layer types
    and hyper-parameters, and so to the torch version's printing of them.
    """
    desc = {
        "repr": repr(model),
        "state": [[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()],
    }
    return sha256_hex(canonical_json(desc))


def stamp_architecture(extra: dict[str, Any], model: nn.Module) -> str:
    """Record :func:`architecture_hash` of ``model`` in a new plan's ``extra``, or check the one a given plan
    records (a party building another model than the run's plan was made from is refused)."""
    h = architecture_hash(model)
    have = extra.setdefault("architecture_hash", h)
    if have != h:
        raise ConfigError(f"the model built here has architecture hash {h[:16]}…, the run's plan.json says "
                          f"{str(have)[:16]}…: every party must build the same model from the same config.json "
                          "(same model_spec or built-in, same torch version)")
    return h
