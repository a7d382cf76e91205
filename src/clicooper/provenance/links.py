"""The links of a run and their transcripts (docs/ledger-format.md §7): which positions talk to which, and
the checks that every link of every round is recorded at both ends with equal digests.

A *link* is a directed pair (sender position, receiver position). The topology of the genesis fixes the
links every round carries tensor messages on:

- ``u-shape`` (positions 0 … K+1, the DO holding 0 and K+1): p → p+1 and p+1 → p for p = 0 … K;
- ``open-tail`` (positions 0 … K, the DO holding 0): p → p+1 and p+1 → p for p = 0 … K−1, and 0 → K (the
  DO's labels to the last trainer; the same link as 0 → 1 when K = 1). The last trainer's loss reports
  are control messages, which transcripts do not cover, so K → 0 is not a required link.

Transcripts are keyed by position (``"2:sent"``) or by party name (``"T2:sent"``, as the parties keep them);
one round uses one form. In the name form a party's entries of a round all carry the party's one map, and
the links are the position links mapped to their owners' names (deduplicated: with K = 1 in the U-shape
both of the DO's links to T1 are the one party link DO ↔ T1). A required link missing at both ends is a
failure (transcripts dropped); a link recorded at one end only, or with different digests, is too.
"""

from __future__ import annotations

from collections.abc import Mapping

from clicooper.provenance.chain import Issue
from clicooper.provenance.entries import Genesis, StageEntry

Link = tuple[int, int]
RoundEntries = Mapping[int, tuple[int, StageEntry]]  # position → (entry index, entry)


def topology_problem(g: Genesis) -> str | None:
    """Why the genesis' positions do not fit its topology (or ``None``): in the U-shape one party holds
    the first and the last position and every other position is held by a party of its own; in the open
    tail every position is held by a party of its own."""
    n = len(g.positions)
    owners = [g.owner(p).name for p in range(n)]
    if g.topology == "u-shape":
        if n < 3:
            return f"a u-shape run has at least 3 positions (head, a trainer, tail), this genesis has {n}"
        middle = owners[1:-1]
        if owners[0] != owners[-1] or owners[0] in middle or len(set(middle)) != len(middle):
            return (f"u-shape positions must be held as DO, T1 … TK, DO (one party at both ends, a party of "
                    f"its own at every other position); the genesis has {owners}")
        return None
    if n < 2 or len(set(owners)) != n:
        return f"open-tail positions must each be held by a party of its own (at least 2); the genesis has {owners}"
    return None


def required_links(g: Genesis) -> list[Link]:
    """The links of ``g``'s topology, in ascending (sender, receiver) order."""
    n = len(g.positions)
    links = {x for p in range(n - 1) for x in ((p, p + 1), (p + 1, p))}
    if g.topology == "open-tail" and n > 2:
        links.add((0, n - 1))
    return sorted(links)


def _form(key: str) -> str:
    return "position" if key.rsplit(":", 1)[0].isdigit() else "name"


def transcript_issues(g: Genesis, r: int, entries: RoundEntries) -> list[Issue]:
    """Every transcript check of round ``r`` (``entries``: its committed stage entries by position)."""
    if not entries:
        return []
    forms = {_form(k) for _, e in entries.values() for k in e.transcripts}
    if len(forms) > 1:
        first = min(i for i, _ in entries.values())
        return [Issue(first, "transcript", f"round {r} mixes position-keyed and name-keyed transcripts; "
                                           "one round uses one form")]
    if forms == {"name"}:
        return _by_name(g, r, entries)
    return _by_position(g, r, entries)


def _link_issue(r: int, required: bool, a: tuple[int, str, str | None, str],
                b: tuple[int, str, str | None, str]) -> Issue | None:
    """One link: ``a`` = (entry index, who, digest or None, key) at the sender, ``b`` at the receiver."""
    (ia, who_a, sent, ka), (ib, who_b, got, kb) = a, b
    if sent is None and got is None:
        if not required:
            return None
        return Issue(ia, "transcript", f"round {r}, link {who_a} → {who_b}: no transcript at either end "
                                       f"({who_a} records no {ka!r}, {who_b} no {kb!r}): transcripts dropped")
    if sent is None:
        return Issue(ib, "transcript", f"round {r}: {who_b} records link {kb} but {who_a} records no {ka}")
    if got is None:
        return Issue(ia, "transcript", f"round {r}: {who_a} records link {ka} but {who_b} records no {kb}")
    if sent != got:
        peer = who_b.removeprefix("position ")
        return Issue(ia, "transcript", f"{who_a} sent to {peer} in round {r} is not what {peer} received "
                                       f"({sent[:12]}… vs {got[:12]}…)")
    return None


def _by_position(g: Genesis, r: int, entries: RoundEntries) -> list[Issue]:
    out: list[Issue] = []
    present: set[Link] = set()
    for p, (i, e) in sorted(entries.items()):
        for key in sorted(e.transcripts):
            peer, direction = key.rsplit(":", 1)
            q = int(peer)
            if q not in g.positions or q == p:
                out.append(Issue(i, "transcript", f"stage {e.stage} has a transcript with position {q}, "
                                                  "which is not another position of this run"))
                continue
            present.add((p, q) if direction == "sent" else (q, p))
    required = set(required_links(g))
    for a, b in sorted(required | present):
        if a not in entries or b not in entries:
            continue  # that stage is missing: reported by the order checks
        (ia, ea), (ib, eb) = entries[a], entries[b]
        issue = _link_issue(r, (a, b) in required,
                            (ia, f"position {a}", ea.transcripts.get(f"{b}:sent"), f"{b}:sent"),
                            (ib, f"position {b}", eb.transcripts.get(f"{a}:recv"), f"{a}:recv"))
        if issue is not None:
            out.append(issue)
    return out


def _party_maps(g: Genesis, r: int, entries: RoundEntries, out: list[Issue]) -> dict[str, tuple[int, Mapping[str, str]]]:
    """Each party's transcript map of the round (its first entry's; later entries must carry the same)."""
    maps: dict[str, tuple[int, Mapping[str, str]]] = {}
    names = {p.name for p in g.parties}
    for p, (i, e) in sorted(entries.items()):
        me = g.owner(p).name
        if me in maps:
            first = maps[me][1]
            for key in sorted(set(first) | set(e.transcripts)):
                if key in first and key in e.transcripts:
                    if first[key] != e.transcripts[key]:
                        out.append(Issue(i, "transcript", f"{me} records two different digests for {key} in "
                                                          f"round {r}"))
                else:
                    out.append(Issue(i, "transcript", f"{me}'s entries of round {r} differ: one records {key}, "
                                                      "the other does not (a party's entries carry one map)"))
            continue
        maps[me] = (i, e.transcripts)
        for key in sorted(e.transcripts):
            peer = key.rsplit(":", 1)[0]
            if peer not in names or peer == me:
                out.append(Issue(i, "transcript", f"stage {e.stage} has a transcript with {peer!r}, which is "
                                                  "not another party of this run"))
    return maps


def _by_name(g: Genesis, r: int, entries: RoundEntries) -> list[Issue]:
    out: list[Issue] = []
    maps = _party_maps(g, r, entries, out)
    owner = {p: g.owner(p).name for p in g.positions}
    required: list[tuple[str, str]] = []
    for a, b in required_links(g):
        if (owner[a], owner[b]) not in required:
            required.append((owner[a], owner[b]))
    present = {(me, k.rsplit(":", 1)[0]) if k.endswith(":sent") else (k.rsplit(":", 1)[0], me)
               for me, (_, tx) in maps.items() for k in tx}
    extra = sorted(x for x in present - set(required) if x[0] in maps and x[1] in maps and x[0] != x[1])
    for a, b in [*required, *extra]:
        if a not in maps or b not in maps:
            continue  # that party's stages are missing: reported by the order checks
        (ia, ta), (ib, tb) = maps[a], maps[b]
        issue = _link_issue(r, (a, b) in required, (ia, a, ta.get(f"{b}:sent"), f"{b}:sent"),
                            (ib, b, tb.get(f"{a}:recv"), f"{a}:recv"))
        if issue is not None:
            out.append(issue)
    return out
