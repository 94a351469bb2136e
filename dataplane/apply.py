"""Load a compiled rules file into a network namespace."""
from __future__ import annotations

from .compiler import CompileResult


def apply_compiled(ns: str, result: CompileResult) -> None:
    """Load ``result`` into namespace ``ns`` atomically, then set the sysctls its rules need.

    On failure (:class:`~dataplane.errors.ApplyError`) the namespace keeps the
    rules it had, and no sysctl is changed.
    """
    from . import netns  # needs pyroute2; imported only when applying

    netns.require_netns(ns)
    plan = result.plan
    if plan.mode == "iptables":
        netns.apply_iptables(ns, result.text, ipv6=plan.family == "ipv6")
    else:
        netns.apply_nftables(ns, result.text)
    netns.set_sysctls(ns, dict(plan.sysctls))
