"""Pods indexed by namespace and by label, so that a Service's selector costs what it matches.

The EndpointSlice controller (and the input's coverage check) asks, for every
Service, which Pods of its namespace carry every ``key=value`` of its selector.
Scanning the namespace's Pods for each Service is quadratic within a namespace
(10k Services and 100k Pods in 50 namespaces: 20 million label checks).
:class:`PodIndex` keeps, for each ``(namespace, key, value)``, the Pods carrying
that label (a posting list, in input order); a selector looks up one list per
``key=value``, takes the shortest and checks its Pods against the whole
selector, so a lookup costs the size of its smallest posting list.
"""
from __future__ import annotations

from typing import Iterable, Optional

from ..model import Labels, Pod


def selects(selector: Labels, pod: Pod) -> bool:
    """True if ``pod`` carries every ``key=value`` of ``selector`` (an empty selector selects every Pod)."""
    labels = dict(pod.labels)
    return all(labels.get(key) == value for key, value in selector)


class PodIndex:
    """Pods by namespace and by ``(namespace, label key, label value)``, each list in input order."""

    __slots__ = ("_by_namespace", "_postings")

    def __init__(self, pods: Iterable[Pod]) -> None:
        """Index ``pods`` (any namespaces, any phase: callers filter what they do not want)."""
        by_namespace: dict[str, list[Pod]] = {}
        # namespace -> (label key, label value) -> the Pods carrying it: the pairs of a Pod's labels
        # are the keys, so indexing a Pod builds no tuple
        postings: dict[str, dict[tuple[str, str], list[Pod]]] = {}
        for pod in pods:
            namespace = pod.namespace
            held = by_namespace.get(namespace)
            if held is None:
                held = by_namespace[namespace] = []
                postings[namespace] = {}
            held.append(pod)
            labels = pod.labels
            # a label given twice counts with its last value, as in selects() (so through a dict,
            # unless there is one pair)
            pairs = labels if len(labels) == 1 and type(labels[0]) is tuple else dict(labels).items()
            index = postings[namespace]
            for pair in pairs:
                posting = index.get(pair)
                if posting is None:
                    index[pair] = [pod]
                else:
                    posting.append(pod)
        self._by_namespace = by_namespace
        self._postings = postings

    def namespace(self, namespace: str) -> list[Pod]:
        """Every Pod of ``namespace``, in input order (a new list)."""
        return list(self._by_namespace.get(namespace, ()))

    def _shortest(self, namespace: str, selector: Labels) -> Optional[list[Pod]]:
        """The shortest posting list of the pairs of a non-empty ``selector``; None when a pair
        has none (no Pod of the namespace carries it)."""
        index = self._postings.get(namespace)
        if index is None:
            return None
        shortest: Optional[list[Pod]] = None
        for pair in selector:
            posting = index.get(pair if type(pair) is tuple else tuple(pair))
            if posting is None:
                return None
            if shortest is None or len(posting) < len(shortest):
                shortest = posting
        return shortest

    def select(self, namespace: str, selector: Labels) -> list[Pod]:
        """The Pods of ``namespace`` that :func:`selects` ``selector``, in input order.

        Exactly ``[p for p in pods if p.namespace == namespace and selects(selector, p)]``;
        an empty selector selects every Pod of the namespace (as :func:`selects` does: callers
        that follow Kubernetes, where an empty selector gives no endpoints, skip those Services).
        """
        if not selector:
            return self.namespace(namespace)
        shortest = self._shortest(namespace, selector)
        if shortest is None:
            return []
        if len(selector) == 1:
            return list(shortest)
        return [pod for pod in shortest if selects(selector, pod)]

    def selects_any(self, namespace: str, selector: Labels) -> bool:
        """Whether :meth:`select` would find a Pod, without building its list."""
        if not selector:
            return namespace in self._by_namespace
        shortest = self._shortest(namespace, selector)
        if shortest is None:
            return False
        return len(selector) == 1 or any(selects(selector, pod) for pod in shortest)
