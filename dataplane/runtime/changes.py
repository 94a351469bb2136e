"""Which keys changed since the last sync, and what they were then: kube-proxy's change trackers.

kube-proxy's ``ServiceChangeTracker`` and ``EndpointsChangeTracker`` keep, per Service
(NamespacedName), a ``previous``/``current`` pair: ``previous`` is what the last sync saw,
``current`` the latest value. Every update of a key merges into its pair (``previous`` stays,
``current`` moves on); a key whose ``current`` comes back to ``previous`` drops out, so a
change undone before the sync costs nothing; the sync drains the tracker.

:class:`ChangeTracker` does the same for any key and value. As kube-proxy's endpoint-slice cache
does, it computes values lazily: changes only *mark* a key (:meth:`ChangeTracker.mark`, cheap,
any number of times), and whoever syncs computes the values of the :attr:`~ChangeTracker.pending`
keys and records each with :meth:`~ChangeTracker.update`. A change that affects every key (the
node's addresses, the proxy configuration) is :meth:`~ChangeTracker.mark_all`: every key is
pending and :attr:`~ChangeTracker.all_changed` tells the sync that everything counts as
changed, not only the recorded pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Generic, Hashable, Iterable, Mapping, Optional, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class Change(Generic[V]):
    """One key's change since the last sync (None: the key was or is absent)."""

    previous: Optional[V]
    current: Optional[V]


class ChangeTracker(Generic[K, V]):
    """Per key, what it was at the last :meth:`checkout` and what it is now (see the module doc).

    Values are compared with ``==`` (after ``is``) when deciding whether a change came back to
    where it started; they should be immutable.
    """

    __slots__ = ("_pending", "_items", "_all")

    def __init__(self) -> None:
        self._pending: set[K] = set()  # marked, value not computed since
        self._items: dict[K, Change[V]] = {}  # in the order keys first changed since the checkout
        self._all = False

    # ------------------------------------------------------------------ marking
    def mark(self, key: K) -> None:
        """``key``'s value may have changed: it is pending until :meth:`update` records it."""
        self._pending.add(key)

    def mark_many(self, keys: Iterable[K]) -> None:
        """:meth:`mark` each of ``keys``."""
        self._pending.update(keys)

    def mark_all(self, keys: Iterable[K]) -> None:
        """Something every value depends on changed: all of ``keys`` (every key there is) are
        pending, and until the next :meth:`checkout` :attr:`all_changed` is true."""
        self._pending.update(keys)
        self._all = True

    @property
    def pending(self) -> frozenset[K]:
        """The keys marked since their value was last recorded (a snapshot)."""
        return frozenset(self._pending)

    # ---------------------------------------------------------------- recording
    def update(self, key: K, previous: Optional[V], current: Optional[V]) -> bool:
        """Record that ``key`` went from ``previous`` to ``current`` (None: absent) and is no
        longer pending. Merged with an earlier change of the key since the last checkout: its
        ``previous`` stays. Returns whether the key now counts as changed (False when it came
        back to the value it had at the last checkout, or never had one)."""
        self._pending.discard(key)
        change = self._items.get(key)
        if change is None:
            change = Change(previous, current)
        else:
            change.current = current
        was = change.previous
        if was is current or (was is not None and current is not None and was == current):
            self._items.pop(key, None)
            return False
        self._items[key] = change
        return True

    # ----------------------------------------------------------------- reading
    @property
    def all_changed(self) -> bool:
        """Whether :meth:`mark_all` was called since the last checkout."""
        return self._all

    def changes(self) -> Mapping[K, Change[V]]:
        """The recorded changes since the last checkout, by key (a read-only view; the
        :class:`Change` objects belong to the tracker)."""
        return MappingProxyType(self._items)

    def __len__(self) -> int:
        """How many keys changed (recorded, not pending)."""
        return len(self._items)

    def checkout(self) -> tuple[dict[K, Change[V]], bool]:
        """Drain the tracker: the changes since the last checkout and whether everything counted as
        changed; the next changes start from the values recorded now. Pending keys stay pending
        (their values were not computed yet)."""
        items, everything = self._items, self._all
        self._items, self._all = {}, False
        return items, everything
