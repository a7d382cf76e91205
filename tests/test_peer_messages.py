"""A hostile neighbour's messages: who may send labels, batch sizes, loss reports and query answers, in which
dtype, with which values — each refused with a WireError before it reaches a model or the metrics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from clicooper.errors import WireError
from clicooper.parties.data_owner import DataOwner
from clicooper.parties.trainer import Trainer
from clicooper.protocol.messages import Activations, Control, Gradients, Header, Labels
from clicooper.protocol.wire_codec import encode_tensor

torch.set_num_threads(1)


def _tail(**kw) -> Trainer:
    """T2 holding the open tail: 3 features in, 4 (label-space) outputs; the DO announces batches of ≤ 8."""
    torch.manual_seed(0)
    mod = nn.Linear(3, 4)
    t = Trainer("T2", mod, torch.optim.SGD(mod.parameters(), lr=0.1), left="T1", right="DO", holds_tail=True,
                input_shape=(3,), **kw)
    t.max_batch = 8
    return t


def _mid(**kw) -> Trainer:
    torch.manual_seed(0)
    mod = nn.Linear(3, 3)
    return Trainer("T1", mod, torch.optim.SGD(mod.parameters(), lr=0.1), left="DO", right="T2", input_shape=(3,),
                   **kw)


def _weights(t: Trainer) -> list[torch.Tensor]:
    return [p.detach().clone() for p in t.module.parameters()]


def _h(sender: str, receiver: str, step: int = 0, micro: int = 0, n_micro: int = 1) -> Header:
    return Header(sender, receiver, 0, step, micro, n_micro)


# ------------------------------------------------------------------ labels and batch sizes (open tail)


def test_tail_takes_labels_and_batch_size_only_from_the_do():
    # prepare: T1 poses as the DO towards the tail
    t = _tail()
    before = _weights(t)
    # execute / assert
    with pytest.raises(WireError, match="batch.*from T1.*only the DO"):
        t.handle(Control(_h("T1", "T2"), "batch", {"size": "1"}))
    with pytest.raises(WireError, match="labels from T1.*only the DO"):
        t.handle(Labels(_h("T1", "T2"), torch.tensor([0, 1])))
    assert t._step_batch == {} and t._labels == {}
    t.handle(Activations(_h("T1", "T2"), torch.ones(2, 3)))  # waits for the DO's labels
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(t), strict=True))


def test_tail_checks_the_ranges_of_what_the_do_sends():
    t = _tail()
    for size in ("0", "9", "x", "1e3"):  # max_batch = 8
        with pytest.raises(WireError, match="batch"):
            t.handle(Control(_h("DO", "T2"), "batch", {"size": size}))
    with pytest.raises(WireError, match="2 micro-batches.*batch of 1"):
        t.handle(Control(_h("DO", "T2", n_micro=2), "batch", {"size": "1"}))
    with pytest.raises(WireError, match="before its batch size"):
        t.handle(Labels(_h("DO", "T2"), torch.tensor([0, 1])))
    t.handle(Control(_h("DO", "T2"), "batch", {"size": "2"}))
    with pytest.raises(WireError, match="3 labels.*batch of 2"):
        t.handle(Labels(_h("DO", "T2"), torch.tensor([0, 1, 2])))
    with pytest.raises(WireError, match="1-D int64"):
        t.handle(Labels(_h("DO", "T2"), torch.tensor([0.0, 1.0])))
    with pytest.raises(WireError, match="negative"):
        t.handle(Labels(_h("DO", "T2"), torch.tensor([0, -1])))
    before = _weights(t)
    t.handle(Labels(_h("DO", "T2"), torch.tensor([0, 4])))  # 4 is outside the tail's 4 outputs
    with pytest.raises(WireError, match=r"label 4 outside the tail's 4 outputs"):
        t.handle(Activations(_h("T1", "T2"), torch.ones(2, 3)))
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(t), strict=True))


def test_tail_trains_on_the_dos_labels():
    # the honest exchange still works and reports a sane loss
    t = _tail()
    t.handle(Control(_h("DO", "T2"), "batch", {"size": "2"}))
    t.handle(Labels(_h("DO", "T2"), torch.tensor([0, 3])))
    report, grad = t.handle(Activations(_h("T1", "T2"), torch.ones(2, 3)))
    assert isinstance(report, Control) and report.kind == "loss" and report.payload["count"] == "2"
    assert isinstance(grad, Gradients) and grad.tensor.shape == (2, 3) and t.steps_taken == 1


def test_a_middle_trainer_refuses_batch_announcements():
    with pytest.raises(WireError, match="does not hold the tail"):
        _mid().handle(Control(_h("DO", "T1"), "batch", {"size": "2"}))


# ------------------------------------------------------------------ dtypes tied to the wire codec


def test_float64_on_an_fp32_wire_is_refused_before_training():
    # prepare: 1e300 is finite in float64 and Inf once cast to float32
    t = _mid()
    before = _weights(t)
    # execute / assert
    with pytest.raises(WireError, match="float64.*wire_dtype fp32 carries float32"):
        t.handle(Activations(_h("DO", "T1"), torch.full((2, 3), 1e300, dtype=torch.float64)))
    t.handle(Activations(_h("DO", "T1"), torch.ones(2, 3)))
    with pytest.raises(WireError, match="float64"):
        t.handle(Gradients(_h("T2", "T1"), torch.full((2, 3), 1e300, dtype=torch.float64)))
    assert all(torch.isfinite(p).all() for p in _weights(t))
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(t), strict=True))


def test_dtype_must_match_the_kind_and_the_runs_codec():
    t = _mid()
    with pytest.raises(WireError, match="activations.*int64"):
        t.handle(Activations(_h("DO", "T1"), torch.ones(2, 3, dtype=torch.int64)))
    t.wire_dtype = "int8"
    with pytest.raises(WireError, match="wire_dtype int8 carries int8"):
        t.handle(Activations(_h("DO", "T1"), torch.ones(2, 3)))  # an unencoded float32 in an int8 run


def test_values_are_checked_after_decoding_and_casting_to_the_compute_dtype():
    # an int8 tensor whose row scale 3e38 decodes to Inf
    t = _mid()
    t.wire_dtype = "int8"
    q, _ = encode_tensor(torch.ones(2, 3), "int8")
    with pytest.raises(WireError, match="NaN or Inf"):
        t.handle(Activations(_h("DO", "T1"), q, scale=torch.tensor([3e38, 1.0])))
    # a bf16 trainer: 3.4e38 is a finite float32 but Inf in bfloat16
    b = _mid(bf16=True)
    with pytest.raises(WireError, match="bfloat16"):
        b.handle(Activations(_h("DO", "T1"), torch.full((2, 3), 3.4e38)))


# ------------------------------------------------------------------ the data owner


def _do(*, u_shape: bool = False) -> DataOwner:
    torch.manual_seed(0)
    head = nn.Linear(4, 3)
    tail = nn.Linear(3, 2) if u_shape else None
    params = list(head.parameters()) + (list(tail.parameters()) if tail is not None else [])
    return DataOwner(head=head, tail=tail, optimizer=torch.optim.SGD(params, lr=0.1), x_train=torch.randn(8, 4),
                     y_train=torch.tensor([0, 1] * 4), trainers=["T1", "T2"], micro_batches=2,
                     expected_return_shape=(3,) if u_shape else None)


def _loss(sender: str = "T2", micro: int = 0, **payload: str) -> Control:
    return Control(_h(sender, "DO", micro=micro, n_micro=2), "loss",
                   {"loss_sum": "1.5", "correct": "1", "count": "2"} | payload)


def test_do_accepts_loss_reports_only_from_the_tail_with_sane_values():
    # prepare: an open-tail step of 4 samples in 2 micro-batches of 2
    do = _do()
    do.start_step(0, 0, torch.arange(4))
    forged = [
        (_loss("T1"), "loss report from T1.*only T2"),
        (_loss(loss_sum="nan"), "loss_sum"),
        (_loss(loss_sum="-1"), "loss_sum"),
        (_loss(loss_sum="inf"), "loss_sum"),
        (_loss(correct="1000000"), "correct"),
        (_loss(correct="-1"), "correct"),
        (_loss(count="-5"), "count"),
        (_loss(count="3"), "count"),
        (_loss(micro=1, count="2", extra="x"), "fields"),
        (Control(_h("T2", "DO", step=7), "loss", {"loss_sum": "1", "correct": "0", "count": "2"}), "not expected"),
    ]
    # execute / assert
    for msg, reason in forged:
        with pytest.raises(WireError, match=reason):
            do.handle(msg)
    assert (do.stats.loss_sum, do.stats.correct, do.stats.count) == (0.0, 0, 0)
    do.handle(_loss())
    assert (do.stats.loss_sum, do.stats.correct, do.stats.count) == (1.5, 1, 2)
    with pytest.raises(WireError, match="not expected"):  # a replayed report counts once
        do.handle(_loss())


def test_do_in_u_shape_takes_no_loss_reports():
    do = _do(u_shape=True)
    do.start_step(0, 0, torch.arange(4))
    with pytest.raises(WireError, match="loss report"):
        do.handle(_loss())
    assert do.stats.count == 0


def test_do_query_answers_come_only_from_the_tail_and_are_checked():
    # prepare: a U-shape DO sends a query of 3 rows in an int8 run
    do = _do(u_shape=True)
    do.wire_dtype = "int8"
    (q,) = do.start_query(torch.randn(3, 4), epoch=0, step=50, query_ids=torch.arange(3))
    assert q.tensor.dtype == torch.int8  # the query is encoded like every other release
    good, scale = encode_tensor(torch.full((3, 3), 127.0), "int8")  # scale 1: decodes exactly
    # execute / assert
    with pytest.raises(WireError, match="query answer from T1.*only T2"):
        do.handle(Activations(_h("T1", "DO", step=50), good, mode="infer", scale=scale))
    with pytest.raises(WireError, match="NaN or Inf"):
        do.handle(Activations(_h("T2", "DO", step=50), good, mode="infer", scale=torch.tensor([3e38, 1.0, 1.0])))
    with pytest.raises(WireError, match="shape"):
        bad, s2 = encode_tensor(torch.ones(2, 3), "int8")
        do.handle(Activations(_h("T2", "DO", step=50), bad, mode="infer", scale=s2))
    with pytest.raises(WireError, match="no query"):
        do.handle(Activations(_h("T2", "DO", step=51), good, mode="infer", scale=scale))
    assert do.infer_results == {}
    do.handle(Activations(_h("T2", "DO", step=50), good, mode="infer", scale=scale))
    assert torch.equal(do.infer_results[(50, 0)], torch.full((3, 3), 127.0))


# ------------------------------------------------------------------ the fuzz campaign, in small


def test_envelope_fuzz_campaign_finds_no_crash_and_no_disagreement():
    # execute: a few hundred mutated envelopes of every kind through both parse paths, the transport's receive
    # handler and the parties (results/fuzz/wire.json holds the long campaign)
    from experiments.research.fuzz_wire import campaign

    report = campaign(60.0, seed=1, max_cases=400)
    # assert
    assert report["cases"] == 400 and len(report["cases_per_kind"]) == 10
    assert sum(report["accepted_by_transport_per_kind"].values()) > 0 and report["party_handled_without_error"] > 0
    assert report["crashes"] == 0, report["crash_examples"][:1]
    assert report["parse_path_disagreements"] == 0


def test_a_middle_trainer_keeps_one_step_open_and_its_micro_batch_count():
    # prepare: step 0 forwarded in 2 micro-batches, nothing back yet
    t = _mid()
    t.handle(Activations(_h("DO", "T1", n_micro=2), torch.ones(2, 3)))
    # execute / assert: a gradient that claims a 1-micro-batch step would step the optimizer under the saved graph
    # of micro-batch 1; activations of another step would be forwarded on weights stepped in between (both once
    # crashed autograd with a RuntimeError)
    with pytest.raises(WireError, match="has 1 micro-batches; it has 2"):
        t.handle(Gradients(_h("T2", "T1", n_micro=1), torch.ones(2, 3)))
    with pytest.raises(WireError, match=r"step \(0, 1\) while step \(0, 0\) is open"):
        t.handle(Activations(_h("DO", "T1", step=1), torch.ones(2, 3)))
    t.handle(Activations(_h("DO", "T1", micro=1, n_micro=2), torch.ones(2, 3)))
    t.handle(Gradients(_h("T2", "T1", micro=0, n_micro=2), torch.ones(2, 3)))
    t.handle(Gradients(_h("T2", "T1", micro=1, n_micro=2), torch.ones(2, 3)))
    assert t.steps_taken == 1
    t.handle(Activations(_h("DO", "T1", step=1), torch.ones(2, 3)))  # the next step, once this one is done
    t.defer_ahead = True  # overlap_steps: a newer step waits, an older one is refused
    with pytest.raises(WireError, match=r"step \(0, 0\) while step \(0, 1\) is open"):
        t.handle(Activations(_h("DO", "T1", step=0), torch.ones(2, 3)))
