"""Watermark embedding, capacity, threshold, reveals, alignment and ownership proofs (docs/design/mechanisms.md#watermarks)."""

from __future__ import annotations

import hashlib
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from clicooper.errors import ConfigError, LedgerError
from clicooper.provenance.align import align_chain
from clicooper.provenance.canonical import hkdf_sha256, lp
from clicooper.provenance.identity import Identity
from clicooper.provenance.reveal import check_reveal, make_reveal, prove
from clicooper.provenance.simulate import SimRun, simulate_run
from clicooper.provenance.watermark import (
    FALSE_CLAIM_BOUND,
    Mark,
    StageKey,
    WatermarkTerm,
    binomial_cdf_half,
    embed_until_zero,
    flatten_params,
    module_errors,
    module_layout,
    ownership_threshold,
    plan_capacity,
    watermark_loss,
)

torch.set_num_threads(1)


def _mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64))


def _segments() -> list[nn.Module]:
    torch.manual_seed(2)
    return [nn.Sequential(nn.Linear(16, 64), nn.ReLU()), _mlp(), nn.Sequential(nn.Linear(64, 4))]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimRun:
    return simulate_run(tmp_path_factory.mktemp("run") / "ledger.jsonl", _segments(), rounds=2)


def _state(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def _permute_and_rescale(segs: list[dict[str, torch.Tensor]], seed: int) -> list[dict[str, torch.Tensor]]:
    """What a thief can do for free: permute and positively rescale every hidden unit of head | T1 | tail."""
    g = torch.Generator().manual_seed(seed)
    head, t1, tail = ({k: v.clone() for k, v in s.items()} for s in segs)
    chain = [(head, "0"), (t1, "0"), (t1, "2"), (tail, "0")]
    for (a, la), (b, lb) in zip(chain, chain[1:], strict=False):
        units = a[f"{la}.weight"].shape[0]
        perm = torch.randperm(units, generator=g)
        scale = torch.exp(torch.empty(units).uniform_(-1.0, 1.0, generator=g))
        a[f"{la}.weight"] = a[f"{la}.weight"][perm] * scale[:, None]
        a[f"{la}.bias"] = a[f"{la}.bias"][perm] * scale
        b[f"{lb}.weight"] = b[f"{lb}.weight"][:, perm] / scale[None, :]
    return [head, t1, tail]


def _model(segs: list[dict[str, torch.Tensor]]) -> nn.Sequential:
    parts = _segments()
    for m, sd in zip(parts, segs, strict=True):
        m.load_state_dict(sd)
    return nn.Sequential(*parts)


def _prune(sd: dict[str, torch.Tensor], frac: float) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        thr = v.abs().flatten().kthvalue(max(1, int(frac * v.numel()))).values
        out[k] = torch.where(v.abs() <= thr, torch.zeros_like(v), v)
    return out


# -------------------------------------------------------------------------------------------- embedding
def test_embedding_reaches_ber_zero_with_task_loss() -> None:
    torch.manual_seed(0)
    model = _mlp()
    plan = plan_capacity(sum(p.numel() for p in model.parameters()), planned_rounds=1)
    key = StageKey(0, 1, Identity.from_bytes(bytes(32)).sign(b"stage"))
    mark = Mark.derive(key, plan.mark_params(module_layout(model), 0))
    assert mark.indices.shape == (plan.n_bits, plan.subset_size)  # sparse: never n × |w|
    wrong0, total = module_errors(model, [mark])
    assert total == 128 and 30 < wrong0 < 98  # random init: about half wrong
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(256, 64), torch.randn(256, 64)
    for _ in range(20):  # task steps with the watermark term
        opt.zero_grad()
        loss = F.mse_loss(model(x), y) + watermark_loss(model, [mark], lam=plan.lam)
        loss.backward()
        opt.step()
    steps = embed_until_zero(model, [mark], lam=plan.lam, optimizer=opt, max_steps=plan.max_extra_steps)
    assert module_errors(model, [mark])[0] == 0 and steps <= plan.max_extra_steps


def test_watermark_loss_is_bce_of_projection() -> None:
    torch.manual_seed(0)
    model = _mlp()
    plan = plan_capacity(16576, planned_rounds=1)
    mark = Mark.derive(StageKey(0, 1, b"s" * 64), plan.mark_params(module_layout(model), 0))
    flat = flatten_params(dict(model.named_parameters()), mark.layout)
    dense = torch.zeros(mark.n_bits, flat.numel())  # reference: the dense X the sparse form stands for
    dense.index_put_((torch.arange(mark.n_bits)[:, None].expand_as(mark.indices), mark.indices), mark.signs,
                     accumulate=True)
    expected = 0.1 * F.binary_cross_entropy(torch.sigmoid(dense @ flat), mark.bits)
    got = watermark_loss(model, [mark], lam=0.1)
    assert torch.allclose(got, expected, atol=1e-6)
    got.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_mark_derivation_is_pinned() -> None:
    params = plan_capacity(16576, planned_rounds=1).mark_params(module_layout(_mlp()), 0)
    mark = Mark.derive(StageKey(0, 1, b"s" * 64), params)
    assert mark.indices[0, :4].tolist() == [6779, 3356, 9504, 1403]
    assert mark.bits[:8].tolist() == [1.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert mark.signs[0, :4].tolist() == [-1.0, -1.0, 1.0, -1.0]
    # the same from the written spec: k = HKDF(sig, "clicooper/wm-key"); SHAKE-256 stream per domain
    key = hkdf_sha256(b"s" * 64, info="clicooper/wm-key")
    word = hashlib.shake_256(lp("clicooper/xof", "clicooper/wm-indices", key)).digest(8)
    assert int.from_bytes(word, "big") % 16576 == 6779
    first_byte = hashlib.shake_256(lp("clicooper/xof", "clicooper/wm-bits", key)).digest(1)[0]
    assert first_byte >> 7 == 1


def test_embed_until_zero_is_bounded() -> None:
    torch.manual_seed(0)
    model = _mlp()
    plan = plan_capacity(16576, planned_rounds=1)
    mark = Mark.derive(StageKey(0, 1, b"t" * 64), plan.mark_params(module_layout(model), 0))
    with pytest.raises(LedgerError, match="cannot be committed"):
        embed_until_zero(model, [mark], lam=plan.lam, optimizer=torch.optim.SGD(model.parameters(), lr=0.0),
                         max_steps=3)


# ------------------------------------------------------------------------------------ threshold, plan
def test_threshold_for_256_bits() -> None:
    tau, prob = ownership_threshold(256)
    assert tau == 56
    assert prob == pytest.approx(1.8254e-20, rel=1e-3)
    assert binomial_cdf_half(256, 56) < FALSE_CLAIM_BOUND <= binomial_cdf_half(256, 57)
    assert ownership_threshold(64) == (-1, 0.0)  # 64 bits can never be claimed
    assert ownership_threshold(65)[0] == 0


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 600))
def test_threshold_is_the_largest_safe_count(n: int) -> None:
    tau, _ = ownership_threshold(n)
    assert binomial_cdf_half(n, tau) < FALSE_CLAIM_BOUND
    assert binomial_cdf_half(n, tau + 1) >= FALSE_CLAIM_BOUND or tau + 1 > n
    assert binomial_cdf_half(n, n) == Fraction(1)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2_000_000), st.integers(1, 50))
def test_capacity_plan_respects_budget(num_params: int, rounds: int) -> None:
    plan = plan_capacity(num_params, planned_rounds=rounds)
    if plan.enabled:
        assert plan.n_bits * plan.retained_rounds <= num_params // 8
        assert 1 <= plan.retained_rounds <= min(rounds, 4)
        assert 8 <= plan.subset_size <= 256 and plan.tau_single >= 0
    else:
        assert num_params // 8 < 96 and "too small" in plan.reason
    assert plan.to_json()["num_params"] == num_params


def test_capacity_plan_reference_segments() -> None:
    # fmnist-cnn (docs/design/protocol.md#reference-model): head 320, T1 18,496, T2 401,536, tail 1,290 weights
    head, t1, t2, tail = (plan_capacity(n, planned_rounds=3) for n in (320, 18_496, 401_536, 1_290))
    assert not head.enabled and "no watermark" in head.reason
    assert tail.enabled and tail.n_bits <= 161 and not tail.robust and "no robustness target" in tail.reason
    assert t1.enabled and t1.robust and t1.n_bits == 128 and t1.retained_rounds == 3
    assert t2.enabled and t2.subset_size == 256 and t2.tau_retained == ownership_threshold(384)[0]
    small = plan_capacity(1_000, planned_rounds=3)
    assert small.enabled and small.n_bits == 125 and "reduced" in small.reason
    with pytest.raises(ConfigError):
        head.mark_params((("w", 320),), 0)
    assert t1.retained_for(5) == [3, 4, 5] and head.retained_for(5) == []


# ---------------------------------------------------------------------------------- reveals and prove
def test_all_retained_marks_are_in_the_final_weights(sim: SimRun) -> None:
    reveal = make_reveal(sim.identities["T1"], sim.ledger, [(0, 1), (1, 1)])
    checks = check_reveal(reveal, sim.ledger.path, {1: _state(sim.segments[1])})
    assert [(c.ok, c.errors, c.n_bits) for c in checks] == [(True, 0, 128), (True, 0, 128)]
    assert sim.plans[1].retained_rounds == 2


def test_reveal_checks_reject_bad_reveals(sim: SimRun) -> None:
    t1, do = sim.identities["T1"], sim.identities["DO"]
    with pytest.raises(LedgerError, match="belongs to party"):
        make_reveal(do, sim.ledger, [(0, 1)])  # cannot reveal another party's stage
    with pytest.raises(LedgerError, match="not in the ledger"):
        make_reveal(t1, sim.ledger, [(7, 1)])
    good = make_reveal(t1, sim.ledger, [(0, 1), (1, 1)])
    flipped = dict(good, stages=[dict(good["stages"][0], signature="00" * 64)])
    assert "does not verify" in check_reveal(flipped, sim.ledger)[0].reason
    swapped = dict(good, stages=[dict(good["stages"][1], round=0)])  # round 1's signature for round 0
    assert not check_reveal(swapped, sim.ledger)[0].ok
    # another party's own valid wm signature presented for T1's stage
    foreign = make_reveal(sim.identities["DO"], sim.ledger, [(0, 0)])
    hijack = dict(foreign, stages=[dict(foreign["stages"][0], position=1)])
    assert check_reveal(hijack, sim.ledger)[0].reason == "the stage belongs to another party"
    with pytest.raises(LedgerError, match="another run"):
        check_reveal(dict(good, run_id="00" * 32), sim.ledger)


def test_prove_genuine_permuted_rescaled_and_pruned_copies(sim: SimRun) -> None:
    ref = [_state(sim.segments[p]) for p in range(3)]
    reveal = make_reveal(sim.identities["T1"], sim.ledger, [(0, 1), (1, 1)])
    reference = dict(enumerate(ref))
    genuine = prove([reveal], sim.ledger, reference, reference=reference)
    assert genuine.verdict and genuine.wrong_bits == 0 and genuine.n_bits == 256 and genuine.tau == 56
    assert "τ = 56" in genuine.summary() and "1.83e-20" in genuine.summary()

    stolen = _permute_and_rescale(ref, seed=3)
    x = torch.randn(32, 16)
    assert torch.allclose(_model(stolen)(x), _model(ref)(x), atol=1e-4)  # same function
    unaligned = prove([reveal], sim.ledger, dict(enumerate(stolen)), align=False)
    assert not unaligned.verdict and unaligned.ber > 0.3
    aligned = prove([reveal], sim.ledger, dict(enumerate(stolen)), reference=reference)
    assert aligned.verdict and aligned.wrong_bits == 0

    for frac in (0.3, 0.5):  # moderate magnitude pruning of the stolen copy
        pruned = [_prune(s, frac) for s in stolen]
        result = prove([reveal], sim.ledger, dict(enumerate(pruned)), reference=reference)
        assert result.aligned and result.verdict and result.ber < 0.15, result.summary()


def test_forced_alignment_would_frame_unrelated_models(sim: SimRun) -> None:
    """Why prove gates alignment: matching an unrelated model to the watermarked reference biases its bits."""
    ref = [_state(sim.segments[p]) for p in range(3)]
    reveal = make_reveal(sim.identities["T1"], sim.ledger, [(0, 1), (1, 1)])
    torch.manual_seed(100)
    other = [_state(m) for m in [nn.Sequential(nn.Linear(16, 64), nn.ReLU()), _mlp(),
                                 nn.Sequential(nn.Linear(64, 4))]]
    forced = dict(enumerate(align_chain(ref, other).segments))
    biased = prove([reveal], sim.ledger, forced, align=False).ber
    plain = prove([reveal], sim.ledger, dict(enumerate(other)), align=False).ber
    assert biased < plain - 0.1


def test_unrelated_models_do_not_pass(sim: SimRun) -> None:
    ref = dict(enumerate(_state(sim.segments[p]) for p in range(3)))
    reveal = make_reveal(sim.identities["T1"], sim.ledger, [(0, 1), (1, 1)])
    bers = []
    for seed in range(12):
        torch.manual_seed(100 + seed)
        other = dict(enumerate(_state(m) for m in [nn.Sequential(nn.Linear(16, 64), nn.ReLU()), _mlp(),
                                                   nn.Sequential(nn.Linear(64, 4))]))
        plain = prove([reveal], sim.ledger, other, align=False)
        gated = prove([reveal], sim.ledger, other, reference=ref)
        assert not plain.verdict and not gated.verdict
        assert not gated.aligned and "alignment rejected" in gated.notes[0]
        forced = align_chain([ref[p] for p in range(3)], [other[p] for p in range(3)])
        assert not forced.accepted()
        for s, n in zip(forced.layer_similarity, forced.null_similarity, strict=True):
            assert abs(s - n) < 0.05  # an unrelated model matches at chance level
        bers += [plain.ber, gated.ber]
    mean = sum(bers) / len(bers)
    assert 0.4 < mean < 0.6 and min(bers) > 0.3


def test_prove_requires_committed_reference(sim: SimRun) -> None:
    reveal = make_reveal(sim.identities["T1"], sim.ledger, [(0, 1)])
    fake_ref = {1: _state(_mlp())}
    with pytest.raises(LedgerError, match="matches no commitment"):
        prove([reveal], sim.ledger, fake_ref, reference=fake_ref)
    report = prove([reveal], sim.ledger, {2: _state(sim.segments[2])}, align=False)
    assert report.n_bits == 0 and not report.verdict and "no suspect segment" in report.notes[0]


# ------------------------------------------------------------------------------------------- alignment
@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_alignment_inverts_permutation_and_rescaling(seed: int) -> None:
    torch.manual_seed(seed)
    convs = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(6, 5, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 7))
    ref = {k: v.detach().double() for k, v in convs.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    sus = {k: v.clone() for k, v in ref.items()}
    for a, b, block in (("0", "3", 1), ("3", "6", 16)):
        units = sus[f"{a}.weight"].shape[0]
        perm = torch.randperm(units, generator=g)
        scale = torch.exp(torch.empty(units, dtype=torch.float64).uniform_(-1, 1, generator=g))
        sus[f"{a}.weight"] = sus[f"{a}.weight"][perm] * scale[:, None, None, None]
        sus[f"{a}.bias"] = sus[f"{a}.bias"][perm] * scale
        w = sus[f"{b}.weight"]
        if w.dim() == 4:
            sus[f"{b}.weight"] = w[:, perm] / scale[None, :, None, None]
        else:
            w3 = w.reshape(w.shape[0], units, block)[:, perm] / scale[None, :, None]
            sus[f"{b}.weight"] = w3.reshape(w.shape[0], -1)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    convs.double().load_state_dict(sus)
    out_sus = convs(x)
    convs.load_state_dict(ref)
    assert torch.allclose(out_sus, convs(x), atol=1e-9)  # the transform is a true symmetry
    result = align_chain([ref], [sus])
    assert result.accepted() and min(result.layer_similarity) > 0.999
    (aligned,) = result.segments
    for k in ref:
        assert torch.allclose(aligned[k], ref[k], atol=1e-9), k


def test_alignment_rejects_unsupported_layers() -> None:
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    sd = {k: v for k, v in bn.state_dict().items()}
    with pytest.raises(ConfigError, match="align=False"):
        align_chain([sd], [sd])
    small = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).state_dict()
    big = _mlp().state_dict()
    with pytest.raises(ConfigError):
        align_chain([big], [small])


def test_watermark_term_is_a_step_hook() -> None:
    torch.manual_seed(0)
    head, tail = _mlp(), nn.Sequential(nn.Linear(64, 4))
    do_module = nn.ModuleDict({"head": head, "tail": tail})  # what the DO party holds
    plan = plan_capacity(16576, planned_rounds=1)
    mark = Mark.derive(StageKey(0, 0, b"h" * 64), plan.mark_params(module_layout(head), 0))
    hook = WatermarkTerm(head, [mark], lam=plan.lam)
    term = hook(do_module)  # the hook is called with the party's module; it marks its own segment
    assert term is not None and torch.allclose(term, watermark_loss(head, [mark], lam=plan.lam))
    assert WatermarkTerm(head, [], lam=0.1)(do_module) is None
