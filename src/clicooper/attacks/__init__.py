"""Attacks of docs/design/metrics.md#attacks-and-metrics, each on an explicit view of what its attacker may read.

``get(name)`` / ``names()`` list the registered attacks; ``run_attack`` runs one on a run directory.
"""

from clicooper.attacks.base import Attack, AttackResult, LevelResult, get, informative, names, register
from clicooper.attacks.clustering import ClusteringAttack
from clicooper.attacks.completion import CompletionAttack
from clicooper.attacks.extraction import ExtractionAttack
from clicooper.attacks.fora import ForaAttack
from clicooper.attacks.forgery import ForgeryAttack  # noqa: F401  (registers "forgery")
from clicooper.attacks.gradient_leak import GradientLeakAttack
from clicooper.attacks.inversion import InversionAttack
from clicooper.attacks.paper_metrics import PaperMetricsAttack
from clicooper.attacks.removal import RemovalAttack  # noqa: F401  (registers "removal")
from clicooper.attacks.runner import run_attack
from clicooper.attacks.sdar import SdarAttack
from clicooper.attacks.views import build_view

__all__ = [
    "Attack", "AttackResult", "LevelResult", "register", "get", "names", "informative", "run_attack",
    "build_view", "ClusteringAttack", "GradientLeakAttack", "InversionAttack", "ExtractionAttack",
    "ForaAttack", "SdarAttack", "CompletionAttack", "PaperMetricsAttack",
]
