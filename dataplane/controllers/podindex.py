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

from typing import Iterable

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
        postings: dict[tuple[str, str, str], list[Pod]] = {}
        for pod in pods:
            namespace = pod.namespace
            by_namespace.setdefault(namespace, []).append(pod)
            # dict(): a label given twice counts with its last value, as in selects()
            for key, value in dict(pod.labels).items():
                postings.setdefault((namespace, key, value), []).append(pod)
        self._by_namespace = by_namespace
        self._postings = postings

    def namespace(self, namespace: str) -> list[Pod]:
        """Every Pod of ``namespace``, in input order (a new list)."""
        return list(self._by_namespace.get(namespace, ()))

    def select(self, namespace: str, selector: Labels) -> list[Pod]:
        """The Pods of ``namespace`` that :func:`selects` ``selector``, in input order.

        Exactly ``[p for p in pods if p.namespace == namespace and selects(selector, p)]``;
        an empty selector selects every Pod of the namespace (as :func:`selects` does: callers
        that follow Kubernetes, where an empty selector gives no endpoints, skip those Services).
        """
        if not selector:
            return self.namespace(namespace)
        shortest: list[Pod] | None = None
        for key, value in selector:
            posting = self._postings.get((namespace, key, value))
            if posting is None:
                return []
            if shortest is None or len(posting) < len(shortest):
                shortest = posting
        assert shortest is not None
        if len(selector) == 1:
            return list(shortest)
        return [pod for pod in shortest if selects(selector, pod)]

    def selects_any(self, namespace: str, selector: Labels) -> bool:
        """Whether :meth:`select` would find a Pod, without building its list."""
        if not selector:
            return namespace in self._by_namespace
        shortest: list[Pod] | None = None
        for key, value in selector:
            posting = self._postings.get((namespace, key, value))
            if posting is None:
                return False
            if shortest is None or len(posting) < len(shortest):
                shortest = posting
        assert shortest is not None
        return len(selector) == 1 or any(selects(selector, pod) for pod in shortest)
