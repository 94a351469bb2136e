"""Offline stand-ins for the control-plane loops that fill in what manifests leave out.

:mod:`.portallocator` and :mod:`.ipallocator` reproduce the API server's
NodePort and ClusterIP allocators (static/dynamic bands included),
:mod:`.allocation` applies them to a whole :class:`~dataplane.model.Cluster`
the way Service creation does, and :mod:`.endpointslices` derives
EndpointSlices from Pods the way the EndpointSlice controller does.
"""
