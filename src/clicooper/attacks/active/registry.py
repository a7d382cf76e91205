"""The registry of malicious-trainer behaviours: ``behaviour`` → class (``config.adversary.behaviour``).

It sits above the implementations it lists (as Opacus' ``accountants/registry.py`` does): the session
core never imports the attack suite, its callers (``clicooper.training``, ``clicooper.net``) pass
:data:`ADVERSARIES` to it, and the core looks the behaviour up through the
:class:`~clicooper.parties.adversary.AdversaryFactory` interface only. A new behaviour is one subclass of
:class:`~clicooper.attacks.active.base.ActiveTrainer` and one :func:`register_adversary` call.
"""

from __future__ import annotations

from clicooper.attacks.active.backdoor import BackdoorTrainer
from clicooper.attacks.active.base import ActiveTrainer
from clicooper.attacks.active.fsha import FSHATrainer
from clicooper.attacks.active.lazy import LazyTrainer
from clicooper.attacks.active.tamper import TamperTrainer
from clicooper.errors import ConfigError

#: the built-in behaviours (docs/malicious.md)
ADVERSARIES: dict[str, type[ActiveTrainer]] = {
    "fsha": FSHATrainer, "scale": TamperTrainer, "sign-flip": TamperTrainer, "backdoor": BackdoorTrainer,
    "lazy": LazyTrainer,
}


def register_adversary(behaviour: str, cls: type[ActiveTrainer], *, replace: bool = False) -> None:
    """Add ``behaviour`` → ``cls`` (an :class:`ActiveTrainer` subclass); an existing name needs ``replace``."""
    if not (isinstance(cls, type) and issubclass(cls, ActiveTrainer)):
        raise ConfigError(f"adversary {behaviour!r}: {cls!r} is not a subclass of ActiveTrainer")
    if behaviour in ADVERSARIES and not replace:
        raise ConfigError(f"adversary behaviour {behaviour!r} is already registered ({ADVERSARIES[behaviour].__name__})")
    ADVERSARIES[behaviour] = cls
