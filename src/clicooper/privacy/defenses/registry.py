"""``kind`` → defence class: the built-ins, and third-party ones from the ``clicooper.defenses`` entry points.

The registry sits above the implementations (it imports them; nothing imports it back but the builder). A
third-party package adds a defence with one spec (a :class:`~clicooper.config.defenses.DefenseSpec`
subclass), one :class:`~clicooper.privacy.defenses.base.Defense` subclass naming it as ``spec``, and one
entry point in its own ``pyproject.toml``::

    [project.entry-points."clicooper.defenses"]
    my-kind = "my_package.module:MyDefense"
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import entry_points

from clicooper.config.defenses import ENTRY_POINT_GROUP, DefenseSpec, spec_type
from clicooper.errors import ConfigError
from clicooper.privacy.defenses import builtin
from clicooper.privacy.defenses.base import Defense, DefenseContext

DEFENSES: dict[str, type[Defense]] = {
    "keyed-noise": builtin.KeyedNoise,
    "gradient-protection": builtin.GradientProtection,
    "label-obfuscation": builtin.LabelObfuscation,
    "randomized-response": builtin.RandomizedResponse,
    "head-dpsgd": builtin.HeadDPSGD,
    "nopeek": builtin.NoPeek,
    "adversarial-decoder": builtin.AdversarialDecoder,
    "secret-random-head": builtin.SecretRandomHead,
}


def defense_class(kind: str) -> type[Defense]:
    """The defence class of ``kind`` (a built-in, or an installed package's through its entry point)."""
    if kind in DEFENSES:
        return DEFENSES[kind]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == kind:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Defense)):
                raise ConfigError(f"entry point {ep.name} = {ep.value} is not a clicooper Defense class")
            if spec_type(kind) is not getattr(cls, "spec", None):
                raise ConfigError(f"entry point {ep.name} = {ep.value}: its spec's kind is not {kind!r}")
            return cls
    raise ConfigError(f"no defence is registered for kind {kind!r}; install the package that provides it")


def build_defenses(spec_list: Sequence[DefenseSpec], context: DefenseContext) -> list[Defense]:
    """One defence object per spec, in the run's order (the order the DO applies them)."""
    return [defense_class(s.kind)(s, context) for s in spec_list]
