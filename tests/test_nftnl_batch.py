"""The translation of partial nftables updates into nf_tables netlink messages (no kernel
needed; netns_tests/test_nft_partial_apply.py proves them against ``nft -f``).

The expected expressions are what ``nft --debug=netlink`` (nftables 1.0.6) prints for the
same statements."""
from __future__ import annotations

import struct

import pytest

from dataplane.runtime import nftnl
from nft_partial_cases import updates

THROUGH_NFT = {"local-policy-lb-firewall", "many-endpoints"}


def attrs(data: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, pos)
        out.append((kind & 0x3FFF, data[pos + 4:pos + length]))
        pos += (length + 3) & ~3
    return out


def value(nested: bytes) -> bytes:
    """The NFTA_DATA_VALUE inside a data attribute."""
    ((kind, raw),) = attrs(nested)
    assert kind == 1
    return raw


def exprs(rule_attrs: bytes) -> list[tuple]:
    """The rule's expressions, each as (name, {attribute: raw bytes})."""
    out = []
    for kind, raw in attrs(rule_attrs):
        if kind != 4:
            continue
        for _, elem in attrs(raw):
            parts = dict(attrs(elem))
            out.append((parts[1].rstrip(b"\0").decode(), dict(attrs(parts[2]))))
    return out


def u32(raw: bytes) -> int:
    return struct.unpack(">I", raw)[0]


def rule(text: str, family: str = "ip") -> bytes:
    batch = nftnl.compile_update(f"table {family} kube-proxy {{\n\tchain c {{\n\t\t{text}\n\t}}\n}}\n")
    (msg_type, _, raw, line), = [m for m in batch.messages if m[0] == nftnl.MSG_NEWRULE]
    assert line == text
    return raw


@pytest.mark.parametrize("family", ["IPv4", "IPv6"])
def test_every_update_the_proxier_writes_is_translated_but_anonymous_sets(family):
    seen = set()
    for name, text in updates(family):
        if name == "full":
            with pytest.raises(nftnl.Unsupported):  # a full script is nft's job
                nftnl.compile_update(text)
            continue
        seen.add(name)
        if name in THROUGH_NFT:
            with pytest.raises(nftnl.Unsupported):
                nftnl.compile_update(text)
        else:
            batch = nftnl.compile_update(text)
            assert batch.messages and batch.family == ("ip" if family == "IPv4" else "ip6")
    assert THROUGH_NFT < seen


def test_prefix_on_a_byte_boundary_loads_only_its_bytes():
    (payload, p), (cmp, c), (imm, i) = exprs(rule("ip saddr != 10.0.0.0/8 goto e"))
    assert (payload, cmp, imm) == ("payload", "cmp", "immediate")
    assert (u32(p[2]), u32(p[3]), u32(p[4])) == (1, 12, 1)  # network header, offset 12, 1 byte
    assert u32(c[2]) == 1 and value(c[3]) == b"\x0a"  # neq 10
    ((_, verdict),) = attrs(i[2])
    code, chain = attrs(verdict)
    assert struct.unpack(">i", code[1])[0] == -4 and chain[1] == b"e\0"  # goto e


def test_other_prefixes_mask_the_whole_address():
    names = exprs(rule("ip saddr != 10.128.0.0/9 jump mark-for-masquerade"))
    assert [n for n, _ in names] == ["payload", "bitwise", "cmp", "immediate"]
    bitwise, cmp = names[1][1], names[2][1]
    assert value(bitwise[4]) == bytes.fromhex("ff800000") and value(bitwise[5]) == bytes(4)
    assert value(cmp[3]) == bytes.fromhex("0a800000") and u32(cmp[2]) == 1


def test_ports_and_protocols():
    names = exprs(rule("ip daddr 10.96.0.16 tcp dport 80 jump x"))
    assert [n for n, _ in names] == ["payload", "cmp", "meta", "cmp", "payload", "cmp", "immediate"]
    assert value(names[1][1][3]) == bytes.fromhex("0a600010")
    assert u32(names[2][1][2]) == 16 and value(names[3][1][3]) == b"\x06"  # meta l4proto == tcp
    assert (u32(names[4][1][2]), u32(names[4][1][3]), u32(names[4][1][4])) == (2, 2, 2)
    assert value(names[5][1][3]) == b"\x00\x50"


def test_dnat_to_address_and_port_both_families():
    names = exprs(rule("meta l4proto udp dnat to 10.127.0.1:53"))
    assert [n for n, _ in names] == ["meta", "cmp", "immediate", "immediate", "nat"]
    assert value(names[1][1][3]) == b"\x11"
    assert value(names[2][1][2]) == bytes.fromhex("0a7f0001") and u32(names[2][1][1]) == 1
    assert value(names[3][1][2]) == b"\x00\x35" and u32(names[3][1][1]) == 2
    nat = names[4][1]
    assert (u32(nat[1]), u32(nat[2]), u32(nat[3]), u32(nat[5]), u32(nat[7])) == (1, 2, 1, 2, 2)
    six = exprs(rule("meta l4proto tcp dnat to [fd00::5]:8080", "ip6"))
    assert value(six[2][1][2]) == bytes.fromhex("fd000000000000000000000000000005")
    assert u32(six[4][1][2]) == 10  # NFPROTO_IPV6


def test_interface_names_fib_numgen_and_comments():
    wildcard = exprs(rule('iifname "veth*" goto e'))
    assert u32(wildcard[0][1][2]) == 6 and value(wildcard[1][1][3]) == b"veth"
    exact = exprs(rule('iifname != "cni0" goto e'))
    assert value(exact[1][1][3]) == b"cni0" + bytes(12) and u32(exact[1][1][2]) == 1
    raw = rule('fib saddr type local jump m comment "masquerade local traffic"')
    fib = exprs(raw)
    assert fib[0][0] == "fib" and value(fib[1][1][3]) == struct.pack("=I", 2)  # RTN_LOCAL, host order
    assert dict(attrs(raw))[7] == b"\x00\x19masquerade local traffic\x00"
    numgen = exprs(rule("numgen random mod 7 0 goto e"))
    assert [u32(numgen[0][1][k]) for k in (2, 3, 4)] == [7, 1, 0]


def test_set_lookups_and_updates():
    lookup = exprs(rule("ip saddr @affinity-x goto e"))
    assert [n for n, _ in lookup] == ["payload", "lookup", "immediate"]
    assert lookup[1][1][1] == b"affinity-x\0" and 5 not in lookup[1][1]
    update = exprs(rule("update @affinity-x { ip saddr }"))
    assert update[1][0] == "dynset" and u32(update[1][1][3]) == 1 and update[1][1][1] == b"affinity-x\0"


def test_affinity_set_declaration():
    batch = nftnl.compile_update("table ip kube-proxy {\n\tset affinity-x {\n\t\ttype ipv4_addr\n"
                                 "\t\tflags dynamic,timeout\n\t\ttimeout 600s\n\t}\n}\n")
    ((msg_type, _, raw, _),) = batch.messages
    got = dict(attrs(raw))
    assert msg_type == nftnl.MSG_NEWSET
    assert (u32(got[3]), u32(got[4]), u32(got[5])) == (0x30, 7, 4)  # dynamic,timeout; ipv4_addr
    assert struct.unpack(">Q", got[11])[0] == 600_000


def test_element_keys_verdicts_and_comments():
    batch = nftnl.compile_update(
        'add element ip kube-proxy service-ips { 10.96.0.16 . tcp . 80 comment "ns/svc:http" : goto s }\n'
        "add element ip kube-proxy service-nodeports { udp . 30053 : drop }\n"
        "delete element ip kube-proxy cluster-ips { 10.96.0.16 }\n")
    keys = []
    for _, _, raw, _ in batch.messages:
        ((_, elem),) = attrs(dict(attrs(raw))[3])
        keys.append(dict(attrs(elem)))
    assert value(keys[0][1]) == bytes.fromhex("0a600010" "06000000" "00500000")
    assert keys[0][6] == b"\x00\x0cns/svc:http\x00"
    assert value(keys[1][1]) == bytes.fromhex("11000000" "75650000")
    assert value(keys[2][1]) == bytes.fromhex("0a600010") and 2 not in keys[2]
    assert batch.keys == {"service-ips": [12], "service-nodeports": [8], "cluster-ips": [4]}


def test_chain_operations_in_order():
    batch = nftnl.compile_update("add chain ip kube-proxy a\nflush chain ip kube-proxy a\n"
                                 "delete chain ip kube-proxy b\ndelete set ip kube-proxy affinity-b\n")
    assert [m[0] for m in batch.messages] == [nftnl.MSG_NEWCHAIN, nftnl.MSG_DELRULE, nftnl.MSG_DELCHAIN,
                                              nftnl.MSG_DELSET]
    assert dict(attrs(batch.messages[1][2])) == {1: b"kube-proxy\0", 2: b"a\0"}  # no handle: every rule


@pytest.mark.parametrize("text", [
    "table ip kube-proxy {\n\tchain c {\n\t\tip saddr != { 10.0.0.0/8, 192.0.2.1 } drop\n\t}\n}\n",
    "table ip kube-proxy {\n\tchain c {\n\t\tnumgen random mod 2 vmap { 0 : goto a, 1 : goto b }\n\t}\n}\n",
    "table ip kube-proxy {\n\tchain c {\n\t\tth dport 9 counter\n\t}\n}\n",
    "table ip kube-proxy {\n\tchain c {\n\t\tip6 saddr ::1 drop\n\t}\n}\n",
    "add element ip kube-proxy cluster-ips { 10.96.0.1, 10.96.0.2 }\n",
    "add element ip kube-proxy m { 10.0.0.0/8 : drop }\n",
    "add chain ip kube-proxy a\nadd chain ip6 kube-proxy a\n",
    "flush ruleset\n",
    "",
])
def test_anything_else_is_left_to_nft(text):
    with pytest.raises(nftnl.Unsupported):
        nftnl.compile_update(text)


@pytest.mark.parametrize("text", ["numgen random mod 7 3 goto endpoint-x", "goto endpoint-x",
                                  "jump mark-for-masquerade", "numgen random mod 2 0 jump e"])
def test_the_cascade_fast_path_encodes_what_the_general_path_does(text):
    """A policy chain's pick (``numgen … goto``) skips the tokenizer; with a comment the same rule
    takes the general path, and only the comment attribute may differ."""
    fast = rule(text)
    general = rule(text + ' comment "c"')
    assert general == fast + nftnl._attr(7, nftnl._udata_comment("c"))
