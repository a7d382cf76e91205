"""Transcript hashes (docs/design/ledger.md#transcripts) are computed on a background worker: they must equal the plain BLAKE3
(docs/provenance.md: the transcript hash) of the canonical bytes of every tensor message, in order, per link
and direction."""

from __future__ import annotations

import blake3
import torch
from torch import nn

from clicooper.parties.trainer import Trainer
from clicooper.protocol.messages import Activations, Control, Gradients, Header, canonical_bytes


def _trainer() -> Trainer:
    torch.manual_seed(0)
    mod = nn.Sequential(nn.Linear(6, 5), nn.ReLU())
    return Trainer("T1", mod, torch.optim.Adam(mod.parameters(), lr=1e-3), left="DO", right="DO",
                   input_shape=(6,), hash_transcripts=True)


def test_background_transcripts_equal_plain_blake3() -> None:
    t = _trainer()
    recv, sent = blake3.blake3(), blake3.blake3()
    for step in range(5):
        x = torch.randn(4, 6)
        msg = Activations(Header("DO", "T1", 0, step), x)
        out = t.handle(msg)
        recv.update(canonical_bytes(msg))
        for m in out:
            sent.update(canonical_bytes(m))
        assert len(out) == 1 and isinstance(out[0], Activations)
        g = Gradients(Header("DO", "T1", 0, step), torch.randn_like(out[0].tensor))
        back = t.handle(g)
        recv.update(canonical_bytes(g))
        for m in back:
            sent.update(canonical_bytes(m))
    t.handle(Control(Header("DO", "T1", 0, 0), "noop", {}))  # control messages are not hashed
    d = t.transcript_digests()
    assert d == {"DO:recv": recv.hexdigest(), "DO:sent": sent.hexdigest()}


def test_reset_waits_for_pending_jobs() -> None:
    t = _trainer()
    for micro in range(3):  # one step in flight at a time: three micro-batches of it
        t.handle(Activations(Header("DO", "T1", 0, 0, micro, 3), torch.randn(512, 6)))
    before = t.transcript_digests()
    t.transcripts = {}  # a new stage: pending jobs of the old one finish first and are not lost into the new
    assert t.transcript_digests() == {}
    assert set(before) == {"DO:recv", "DO:sent"}


def test_transcript_hash_known_answer() -> None:
    """Pins the transcript hash: BLAKE3 of the empty input is the published test vector, and a
    ``TranscriptHasher`` digest equals BLAKE3 over ``lp("clicooper/transcript") ‖ lp(canonical bytes)``."""
    from clicooper.provenance.canonical import lp
    from clicooper.provenance.transcript import TRANSCRIPT_HASH, TranscriptHasher, new_transcript_hash

    assert TRANSCRIPT_HASH == "blake3"
    assert new_transcript_hash().hexdigest() == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    msg = Activations(Header("DO", "T1", 0, 0), torch.arange(6, dtype=torch.float32).reshape(2, 3))
    th = TranscriptHasher()
    th.sent(1, msg)
    expect = blake3.blake3(lp("clicooper/transcript") + lp(canonical_bytes(msg))).hexdigest()
    assert th.digests() == {"1:sent": expect}
