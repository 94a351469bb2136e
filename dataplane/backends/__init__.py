"""The rule backends, registered in one place.

Each backend is one :class:`~dataplane.backends.base.Backend` object; everything
that differs between iptables and nftables goes through it. Look one up with
:func:`get_backend` (an unknown name raises :class:`~dataplane.errors.UsageError`
naming the valid ones) or :func:`backend_for`.
"""
from __future__ import annotations

from typing import Optional

from ..errors import UsageError
from ..model import ProxyConfig
from ..plan import Mode
from .base import Backend
from .iptables_backend import IptablesBackend
from .nftables_backend import NftablesBackend

__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "backend_for", "backend_names", "get_backend"]

#: Every backend by name, in the order the CLI lists them.
BACKENDS: dict[str, Backend] = {b.name: b for b in (IptablesBackend(), NftablesBackend())}

#: The backend of a KubeProxyConfiguration whose mode names none (kube-proxy's default).
DEFAULT_BACKEND: Mode = "iptables"


def backend_names() -> tuple[str, ...]:
    """The valid backend names (for argparse ``choices`` and messages)."""
    return tuple(BACKENDS)


def get_backend(name: str) -> Backend:
    """The backend called ``name``; :class:`UsageError` naming the valid ones otherwise."""
    try:
        return BACKENDS[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}") from None


def backend_for(name: Optional[str], config: ProxyConfig) -> Backend:
    """The backend ``name`` when given, else that of ``config``'s mode (else the default)."""
    if name:
        return get_backend(name)
    return BACKENDS.get(config.mode, BACKENDS[DEFAULT_BACKEND])
