"""Per-link ordering rules (no sockets): accept, de-duplicate an exact resend, reject replays."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from clicooper.errors import WireError
from clicooper.net.link import Admission, InboundLink, align_resend, message_digest
from clicooper.protocol.messages import Activations, Header

D1, D2, D3 = b"1" * 32, b"2" * 32, b"3" * 32


def test_accepts_increasing_and_gaps():
    link = InboundLink("DO")
    assert link.admit(1, D1) is Admission.ACCEPT
    assert link.admit(5, D2) is Admission.ACCEPT  # gap: seq 2..4 were rejected by the receiver
    assert (link.last_seq, link.last_digest) == (5, D2)


def test_exact_resend_is_duplicate_and_replay_is_rejected():
    link = InboundLink("DO")
    link.admit(1, D1)
    link.admit(2, D2)
    assert link.admit(2, D2) is Admission.DUPLICATE
    with pytest.raises(WireError, match="replayed or stale"):
        link.admit(1, D1)  # an older message, even byte-identical to what it was
    with pytest.raises(WireError, match="replayed or stale"):
        link.admit(2, D3)  # same seq, different content
    with pytest.raises(WireError, match="start at 1"):
        link.admit(0, D3)
    assert (link.last_seq, link.last_digest) == (2, D2)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.lists(st.tuples(st.integers(-3, 30), st.sampled_from([D1, D2, D3])), max_size=40))
def test_accepted_seqs_strictly_increase(events):
    link = InboundLink("T1")
    accepted = []
    for seq, digest in events:
        try:
            if link.admit(seq, digest) is Admission.ACCEPT:
                accepted.append(seq)
        except WireError:
            pass
    assert accepted == sorted(set(accepted))


def test_align_resend_for_a_restarted_sender():
    msg = Activations(Header("DO", "T1", 0, 3), torch.ones(2))
    d = message_digest(msg)
    assert align_resend([d], last_seq=7, last_digest=d) == 7  # exact resend reuses the seq → duplicate
    assert align_resend([D1], last_seq=7, last_digest=d) == 8
    assert align_resend([], last_seq=7, last_digest=d) == 8
    assert align_resend([d], last_seq=0, last_digest=b"") == 1
