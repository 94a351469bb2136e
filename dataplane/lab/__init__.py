"""Network-namespace labs: Kubernetes-like nodes, pods and external clients, and packets to prove rules with.

The modules, in the order they depend on each other:

* :mod:`~dataplane.lab.topology`: the declarative shape (nodes, pods, clients, addresses);
* :mod:`~dataplane.lab.server`, :mod:`~dataplane.lab.probes`, :mod:`~dataplane.lab.icmp`,
  :mod:`~dataplane.lab.sctp`: reply servers, TCP/UDP probes, ICMP error decoding, SCTP probes;
* :mod:`~dataplane.lab.namespaces`: :class:`Lab`, a topology built in network namespaces;
* :mod:`~dataplane.lab.addresses`, :mod:`~dataplane.lab.layout`: a lab :class:`Layout` derived from a
  cluster's manifests (pure);
* :mod:`~dataplane.lab.cluster`: :class:`ClusterLab`, a layout built with every node's rules loaded;
* :mod:`~dataplane.lab.state`, :mod:`~dataplane.lab.updown`, :mod:`~dataplane.lab.serve`,
  :mod:`~dataplane.lab.summary`, :mod:`~dataplane.lab.cli`: labs that outlive their process
  (``dataplane lab up/down``).
"""
from .cluster import ClusterLab
from .layout import Layout, derive_layout, families_in_use
from .namespaces import Lab, conntrack_entries
from .probes import ProbeResult, tcp_probe, udp_probe
from .sctp import SctpProbeResult, SctpSeen, sctp_probe, sctp_probe_any
from .server import Seen, Server
from .topology import ClientSpec, NodeSpec, PodSpec, Topology
from .updown import lab_down, lab_up

__all__ = [
    "NodeSpec",
    "PodSpec",
    "ClientSpec",
    "Topology",
    "Lab",
    "Server",
    "Seen",
    "ProbeResult",
    "SctpSeen",
    "SctpProbeResult",
    "tcp_probe",
    "udp_probe",
    "sctp_probe",
    "sctp_probe_any",
    "conntrack_entries",
    "Layout",
    "derive_layout",
    "families_in_use",
    "ClusterLab",
    "lab_up",
    "lab_down",
]
