"""The node-level control records (``node-*`` kinds), typed and checked in one place.

They travel as :class:`~clicooper.protocol.messages.Control` messages, whose payload is plain strings;
:meth:`NodeRecord.to_control` writes a record's fields as strings and :meth:`NodeRecord.from_control`
reads them back, refusing a missing or malformed field with a :class:`WireError` that names the record,
the field and the sender. The party objects never see these records (docs/network.md "Nodes").
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from clicooper.errors import WireError
from clicooper.protocol.messages import Control, Header

R = TypeVar("R", bound="NodeRecord")


@dataclass(frozen=True)
class NodeRecord:
    """Base of the node records: ``KIND`` is the control kind; fields are ``int`` or ``str``."""

    KIND: ClassVar[str] = ""

    def to_control(self, sender: str, to: str, r: int = 0) -> Control:
        """This record as a control message of round ``r``."""
        payload = {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)
                   if getattr(self, f.name) is not None}
        return Control(Header(sender, to, max(0, r), 0), self.KIND, payload)

    @classmethod
    def from_control(cls: type[R], msg: Control) -> R:
        """Parse ``msg`` (of kind ``KIND``); a missing or malformed field → :class:`WireError`."""
        if msg.kind != cls.KIND:
            raise WireError(f"expected {cls.KIND} from {msg.header.sender}, got {msg.kind}")
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = msg.payload.get(f.name)
            if raw is None:
                if f.default is dataclasses.MISSING:
                    raise WireError(f"{cls.KIND} from {msg.header.sender} lacks its field {f.name!r}: every node "
                                    "must run the same CliCooper version")
                continue
            values[f.name] = _parse(hints[f.name], raw, cls.KIND, f.name, msg.header.sender)
        return cls(**values)


def _parse(kind: Any, raw: str, record: str, name: str, sender: str) -> Any:
    if kind is int or kind == int | None:
        try:
            v = int(raw)
        except ValueError:
            raise WireError(f"{record} from {sender}: field {name!r} = {raw!r} is not an integer") from None
        if v < 0:
            raise WireError(f"{record} from {sender}: field {name!r} = {v} must be ≥ 0")
        return v
    return raw


@dataclass(frozen=True)
class Hello(NodeRecord):
    """Trainer → DO at start: rounds it has checkpointed; with provenance its key and ledger length."""

    KIND: ClassVar[str] = "node-hello"
    completed: int
    public_key: str | None = None
    entries: int = 0


@dataclass(frozen=True)
class Start(NodeRecord):
    """DO → trainer: roll back to ``round`` and train ``epochs`` rounds of ``steps`` steps."""

    KIND: ClassVar[str] = "node-start"
    round: int
    epochs: int
    steps: int


@dataclass(frozen=True)
class Ready(NodeRecord):
    """Trainer → DO: rolled back, ready for the first step."""

    KIND: ClassVar[str] = "node-ready"


@dataclass(frozen=True)
class RoundEnd(NodeRecord):
    """DO → trainer: round ``round`` is over; checkpoint it."""

    KIND: ClassVar[str] = "node-round-end"
    round: int


@dataclass(frozen=True)
class RoundSaved(NodeRecord):
    """Trainer → DO: round ``round`` is checkpointed."""

    KIND: ClassVar[str] = "node-round-saved"
    round: int


@dataclass(frozen=True)
class Shutdown(NodeRecord):
    """DO → trainer: the run is over; mark it finished and exit."""

    KIND: ClassVar[str] = "shutdown"


@dataclass(frozen=True)
class StageRequest(NodeRecord):
    """DO → owner: draft, sign and send your stage entry (``round``, ``position``)."""

    KIND: ClassVar[str] = "node-stage"
    round: int
    position: int


@dataclass(frozen=True)
class Deliver(NodeRecord):
    """DO → trainer: send your final segment at ``position`` (file ``file``)."""

    KIND: ClassVar[str] = "node-deliver"
    round: int
    position: int
    file: str


@dataclass(frozen=True)
class GenesisPropose(NodeRecord):
    """DO → trainer: the unsigned genesis body (JSON) to check and sign."""

    KIND: ClassVar[str] = "node-genesis-propose"
    genesis: str


@dataclass(frozen=True)
class GenesisSig(NodeRecord):
    """Trainer → DO: its signature over the proposed genesis (hex)."""

    KIND: ClassVar[str] = "node-genesis-sig"
    signature: str


@dataclass(frozen=True)
class GenesisEntry(NodeRecord):
    """DO → trainer: the signed genesis (canonical line)."""

    KIND: ClassVar[str] = "node-genesis"
    entry: str


@dataclass(frozen=True)
class Entry(NodeRecord):
    """A stage or closing entry (canonical line), drafted by its owner or relayed by the DO."""

    KIND: ClassVar[str] = "node-entry"
    entry: str


@dataclass(frozen=True)
class Close(NodeRecord):
    """DO → trainer: sign the closing body of your ledger copy."""

    KIND: ClassVar[str] = "node-close"


@dataclass(frozen=True)
class CloseSig(NodeRecord):
    """Trainer → DO: its signature over the closing body (hex)."""

    KIND: ClassVar[str] = "node-close-sig"
    signature: str


RECORDS: dict[str, type[NodeRecord]] = {c.KIND: c for c in (
    Hello, Start, Ready, RoundEnd, RoundSaved, Shutdown, StageRequest, Deliver, GenesisPropose, GenesisSig,
    GenesisEntry, Entry, Close, CloseSig)}


def is_node_record(msg: Any) -> bool:
    """Whether ``msg`` is a node-level control record (``node-*`` or ``shutdown``), not a party message."""
    return isinstance(msg, Control) and (msg.kind.startswith("node-") or msg.kind == Shutdown.KIND)
