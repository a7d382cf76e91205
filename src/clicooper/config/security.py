"""Malicious trainers (a research option), the DO's live detection and the parties' audit logs.

Three sub-configs of :class:`~clicooper.config.RunConfig`, recorded in ``config.json``:

- :class:`AdversaryConfig` (``adversary``, default ``None``): one trainer deviates from the protocol
  (:mod:`clicooper.attacks.active`). A research option for tests and measurements, **never a default**.
- :class:`DetectionConfig` (``detection``, off by default): the DO's live checks of what it receives
  (:mod:`clicooper.parties.guard`, the validation queries of :mod:`clicooper.core.security`). Off by default because SplitGuard's
  fake-label batches cost the honest trainers some wasted steps (docs/malicious.md says how much).
- :class:`AuditConfig` (``audit``, off by default): each trainer keeps the messages and step checkpoints
  of the rounds that may be audited (:mod:`clicooper.core.audit_log`); ``clicooper audit`` replays them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Behaviour = Literal["fsha", "scale", "sign-flip", "backdoor", "lazy"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdversaryConfig(_Strict):
    """One malicious trainer (docs/malicious.md). ``party`` defaults: FSHA and the others T1, backdoor T_K."""

    behaviour: Behaviour
    party: str | None = Field(None, description="the deviating trainer (T<i>); None: fsha/scale/sign-flip/"
                                                "lazy T1, backdoor the last trainer")
    start_round: int = Field(0, ge=0, description="round (0-based) from which it deviates")
    start_step: int = Field(0, ge=0, description="step within start_round from which it deviates")
    scale: float = Field(10.0, gt=0.0, allow_inf_nan=False, description="scale: factor on the gradient sent left")
    # FSHA (Pasquini et al., CCS 2021): WGAN-GP hyper-parameters of the reference code's MNIST set-up
    fsha_lr_pilot: float = Field(1e-4, gt=0.0, description="Adam lr of the pilot encoder and decoder")
    fsha_lr_discriminator: float = Field(1e-4, gt=0.0, description="Adam lr of the discriminator")
    fsha_gradient_penalty: float = Field(500.0, ge=0.0, description="WGAN-GP weight")
    fsha_aux_rows: int = Field(1000, ge=16, description="public auxiliary rows (first half of the test split)")
    fsha_eval_every: int = Field(10, ge=1, description="steps between two reconstruction measurements")
    # backdoor (VILLAIN-style feature-space trigger, Bai et al., USENIX Security 2023)
    target_class: int = Field(0, ge=0, description="backdoor: the class the trigger maps to")
    trigger_scale: float = Field(2.0, gt=0.0, description="backdoor: trigger norm ÷ mean output norm")
    trigger_fraction: float = Field(0.25, gt=0.0, le=1.0, description="backdoor: share of output units it "
                                                                       "touches")
    poison_rate: float = Field(0.5, gt=0.0, le=1.0, description="backdoor: share of target rows poisoned")

    def party_for(self, trainers: int) -> str:
        """The deviating trainer's name."""
        if self.party is not None:
            return self.party
        return f"T{trainers}" if self.behaviour == "backdoor" else "T1"


class SplitGuardConfig(_Strict):
    """SplitGuard (Erdoğan et al., WPES 2022, §4): fake-label batches and the SG score."""

    enabled: bool = True
    p_fake: float = Field(0.1, gt=0.0, lt=1.0, description="probability that a step is a fake batch")
    fake_fraction: float = Field(1.0, gt=0.0, le=1.0, description="share of a fake batch's rows relabelled")
    warmup_steps: int = Field(20, ge=0, description="N: steps before the first fake batch")
    min_fakes: int = Field(5, ge=1, description="fake batches before a decision")
    window: int = Field(9, ge=1, description="last SG scores whose median decides")
    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="alarm when that median is below it")
    mult: float = Field(5.0, gt=0.0, description="squashing sigmoid multiplier (reference code: 5)")
    exp: float = Field(2.0, gt=0.0, description="squashing sigmoid exponent (reference code: 2)")


class ScrutinizerConfig(_Strict):
    """Gradient-similarity test after Gradients Scrutinizer (Fu et al., NDSS 2023)."""

    enabled: bool = True
    every: int = Field(8, ge=1, description="test every n-th step (2 on 64 rows: the thorough settings of "
                                           "docs/malicious.md §4)")
    rows: int = Field(32, ge=4, description="rows of a batch used (the first ones)")
    warmup_steps: int = Field(10, ge=0, description="steps before the first test")
    window: int = Field(8, ge=1, description="tests averaged for the decision")
    threshold: float = Field(0.02, description="alarm when mean(intra − inter cosine) is below it")


class ValidationConfig(_Strict):
    """Progress of loss and accuracy on the DO's own held-out rows, queried through the chain."""

    enabled: bool = True
    every: int = Field(40, ge=1, description="steps between two validations (10 on 256 rows: the thorough "
                                            "settings)")
    rows: int = Field(128, ge=8, description="held-out rows (the last of the test split's second half)")
    warmup: int = Field(3, ge=1, description="validations before a decision")
    min_gain: float = Field(0.10, ge=0.0, description="alarm if the recent mean accuracy < chance + min_gain")
    max_drop: float = Field(0.25, gt=0.0, description="alarm if accuracy falls this far below its best")


class DetectionConfig(_Strict):
    """The DO's live detection (docs/malicious.md); ``enabled`` switches every check."""

    enabled: bool = False
    stop_on_alarm: bool = Field(True, description="stop the run on the first alarm; false: only record each "
                                                   "check's first alarm (measurements)")
    splitguard: SplitGuardConfig = SplitGuardConfig()
    scrutinizer: ScrutinizerConfig = ScrutinizerConfig()
    validation: ValidationConfig = ValidationConfig()


class AuditConfig(_Strict):
    """What each trainer keeps for audits (Proof-of-Learning, Jia et al., S&P 2021, §4)."""

    enabled: bool = False
    interval: int = Field(10, ge=1, description="steps between two committed checkpoints (PoL's k)")
    retain_rounds: int = Field(0, ge=0, description="rounds kept (the last n); 0: every round")


def security_problem(adversary: AdversaryConfig | None, audit: AuditConfig, *, trainers: int, topology: str,
                     provenance: bool = True) -> str | None:
    """Why these options do not fit the run (a sentence saying what to do), or ``None``."""
    if audit.enabled and topology != "u-shape":
        return "audit.enabled replays trainers of the U-shape only; use --topology u-shape or drop the audit"
    if audit.enabled and not provenance:
        return "audit.enabled checks logs against the ledger; keep provenance on (or drop the audit)"
    if adversary is None:
        return None
    party = adversary.party_for(trainers)
    names = [f"T{i + 1}" for i in range(trainers)]
    if party not in names:
        return f"adversary.party {party} is not a trainer of this run; use one of {', '.join(names)}"
    if adversary.behaviour == "fsha" and party != "T1":
        return "FSHA is run by T1 (it shapes the gradient the DO's head receives); use adversary.party T1"
    if adversary.behaviour == "backdoor" and (party != names[-1] or topology != "u-shape"):
        return (f"the backdoor is planted by the last trainer {names[-1]} in front of the DO's tail (U-shape); "
                f"use adversary.party {names[-1]} and --topology u-shape")
    return None
