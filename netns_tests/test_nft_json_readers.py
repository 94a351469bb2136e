"""dataplane.runtime.netns reads the live nft state from ``nft -j`` (JSON), not from listing text."""
from __future__ import annotations

import pytest

from dataplane.runtime import netns

pytestmark = pytest.mark.netns

SCRIPT = """\
table ip kube-proxy {
	map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }
	chain services { ip daddr . meta l4proto . th dport vmap @service-ips; }
	chain service-ABC-default/web/tcp/http { comment "chain fake {"; }
	chain nat-prerouting { type nat hook prerouting priority dstnat; jump services; }
}
table ip6 kube-proxy {
	chain services6 { }
}
table inet other {
	chain kube-proxy { }
	chain input { type filter hook input priority 0; }
}
table ip other {
	chain services { }
}
"""


def test_installed_chains_and_tables_come_from_nft_json(bare_ns):
    assert netns.installed_chains(bare_ns, "nftables") == set()
    assert netns._nft_existing_tables(bare_ns) == set()
    netns.apply_nftables(bare_ns, SCRIPT)
    # only the chains of our table of that family: not another table's, nor a chain-like comment
    assert netns.installed_chains(bare_ns, "nftables") == {
        "services", "service-ABC-default/web/tcp/http", "nat-prerouting"}
    assert netns.installed_chains(bare_ns, "nftables", ipv6=True) == {"services6"}
    assert netns._nft_existing_tables(bare_ns) == {
        ("ip", "kube-proxy"), ("ip6", "kube-proxy"), ("inet", "other"), ("ip", "other")}
