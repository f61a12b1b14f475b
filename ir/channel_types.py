"""The data of the channel analysis: locks, spaces, segments, members and groups
(``ir/channels.py`` builds them, ``ir/solve.py`` turns spaces into groups)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from drpopt.ir.core import Value

ROLE_RANK = {"producer": 0, "consumer": 1, "follower": 2, "structure": 3, "param": 4}


@dataclass(frozen=True)
class Lock:
    """Why a channel space may not be pruned. ``kind`` is a stable keyword for tooling."""

    kind: str
    message: str
    node: str | None = None
    op: str | None = None

    def __init__(
        self, kind: str, message: str, node: str | None = None, op: str | None = None
    ) -> None:
        # what the generated __init__ does, without its object.__setattr__ per field (an
        # analysis makes thousands of locks: every axis of unknown size has one), one store
        # per field (no keyword dict for an update)
        d = self.__dict__
        d["kind"], d["message"], d["node"], d["op"] = kind, message, node, op


@dataclass(slots=True)
class Member:
    """One slice that a group's channels index: group channel ``j`` is the block
    ``[start + j*block, start + (j+1)*block)`` of ``axis`` of ``tensor`` (a weight or other
    constant), or of the attribute ``attr`` of ``node`` (``tensor`` is None then)."""

    role: str
    node: str | None
    tensor: str | None
    axis: int
    start: int
    block: int
    length: int
    attr: str | None = None

    def indices(self, channels: list[int] | range) -> list[int]:
        """The tensor indices along ``axis`` that the given group channels cover."""
        return [self.start + j * self.block + r for j in channels for r in range(self.block)]


class Segment(NamedTuple):
    """One piece of a channel space in a group: group channel ``j`` is the block
    ``[start + j*block, start + (j+1)*block)`` of ``axis`` of ``value`` (or of the virtual
    space ``label`` when ``value`` is None: conv groups, channels a Slice drops)."""

    value: str | None
    axis: int
    start: int
    block: int
    label: str
    space_length: int


@dataclass(slots=True)
class Space:
    value: Value | None
    axis: int
    length: int | None
    label: str
    cuts: set[int] = field(default_factory=set)
    locks: list[Lock] = field(default_factory=list)
    roles: list[tuple[str, str, str | None]] = field(default_factory=list)  # role, node, attr
    seg0: int = 0  # index of its first segment in the segment table


@dataclass
class Group:
    """A set of channels that must be pruned together."""

    id: int
    size: int
    members: list[Member]
    locks: list[Lock]
    prunable: bool = True
    reason: str | None = None
    params: int = 0
    macs: int = 0
    order: int = 0  # position of its first producer in the graph, for stable numbering
    segments: list[Segment] = field(default_factory=list, repr=False)

    @property
    def producers(self) -> list[str]:
        return list(dict.fromkeys(m.node for m in self.members if m.role == "producer" and m.node))

    def segments_later(self, make: Callable[[], list[Segment]]) -> None:
        """Makes ``segments`` on first read, from ``make`` (the solver's cut spaces): most
        analyses never read them, and a grouped-conv stage has one per space and conv group."""
        self.__dict__["_segments"] = None
        self.__dict__["_make_segments"] = make


def _get_segments(self: Group) -> list[Segment]:
    d = self.__dict__
    if d.get("_segments") is None:
        make = d.pop("_make_segments", None)
        d["_segments"] = make() if make is not None else []
    return d["_segments"]


def _set_segments(self: Group, segments: list[Segment]) -> None:
    self.__dict__.pop("_make_segments", None)
    self.__dict__["_segments"] = segments


# ``segments`` may be made on first read (``segments_later``); the dataclass field stays the
# constructor argument, the property replaces its class default
Group.segments = property(_get_segments, _set_segments)  # type: ignore[assignment]
