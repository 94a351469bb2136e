"""What the input's reader says about the user's input beyond its problems: unknown (misspelt)
fields as the API server's field validation warns of them, Services the input leaves without
endpoints; and the YAML ``allocate`` and ``endpoints`` print."""
from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import pytest
import yaml

from dataplane.cli import main
from dataplane.input.cluster import cluster_from_objects, load_cluster
from dataplane.input.fields import SHAPES, unknown_fields

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "in.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def unknown(warnings: tuple[str, ...]) -> list[str]:
    return [w for w in warnings if "unknown field" in w]


# ------------------------------------------------------------------ unknown fields


def test_misspelt_service_fields_are_warned_as_the_api_server_does(tmp_path, capsys):
    path = write(tmp_path, """\
        apiVersion: v1
        kind: Node
        metadata: {name: n1}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web, namespace: shop, lables: {app: web}}
        spec:
          tpye: NodePort
          clusterIP: 10.96.0.10
          Selector: {app: web}
          ports:
          - name: a
            port: 80
            targetPrt: 8080
          - {name: b, port: 81}
          - {name: c, port: 82, nodeport: 30000}
        """)
    assert main(["compile", "-f", path, "--node", "n1"]) == 0
    err = capsys.readouterr().err.splitlines()
    where = f"warning: {path}: document 2: Service shop/web: unknown field"
    assert [line for line in err if "unknown field" in line] == [
        f'{where} "metadata.lables"',
        f'{where} "spec.tpye"',
        f'{where} "spec.Selector"',  # case-sensitive, as UnmarshalStrict
        f'{where} "spec.ports[0].targetPrt"',
        f'{where} "spec.ports[2].nodeport"',
    ]


KINDS_WITH_TYPOS = [
    ({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
      "metadata": {"name": "web-1", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
      "addressType": "IPv4",
      "endpoints": [{"addresses": ["10.244.1.5"], "conditions": {"ready": True}},
                    {"addresses": ["10.244.1.6"], "conditions": {"redy": True}, "nodename": "n1",
                     "targetRef": {"kind": "Pod", "nmae": "p"}, "hints": {"forZone": [{"name": "a"}]}}],
      "ports": [{"name": "http", "port": 8080, "portocol": "TCP"}]},
     ["endpoints[1].conditions.redy", "endpoints[1].nodename", "endpoints[1].targetRef.nmae",
      "endpoints[1].hints.forZone", "ports[0].portocol"]),
    ({"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": "ext", "namespace": "shop"},
      "subsets": [{"addresses": [{"ip": "192.0.2.7", "hostName": "x"}], "port": [{"port": 80}],
                   "ports": [{"port": 80, "nmae": "http"}]}]},
     ["subsets[0].addresses[0].hostName", "subsets[0].port", "subsets[0].ports[0].nmae"]),  # document order
    ({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"},
      "spec": {"restartPolice": "Always",
               "containers": [{"name": "c", "image": "nginx", "port": [],
                               "ports": [{"containerPrt": 8080, "containerPort": 8080}]}],
               "initContainers": [{"name": "side", "restartPolicy": "Always", "ports": [{"nmae": "x",
                                                                                          "containerPort": 9}]}]},
      "status": {"podIPs": [{"ip": "10.244.1.5", "ipp": "10.244.1.5"}], "hostIPs": [{"ip": "192.0.2.1", "x": 1}],
                 "conditions": [{"type": "Ready", "staus": "True"}]}},
     ["spec.restartPolice", "spec.containers[0].port", "spec.containers[0].ports[0].containerPrt",
      "spec.initContainers[0].ports[0].nmae", "status.podIPs[0].ipp", "status.hostIPs[0].x",
      "status.conditions[0].staus"]),
    ({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
      "spec": {"podCIDR": "10.244.1.0/24", "podCidrs": ["10.244.1.0/24"]},
      "status": {"addresses": [{"type": "InternalIP", "address": "192.0.2.1", "adress": "192.0.2.1"}]}},
     ["spec.podCidrs", "status.addresses[0].adress"]),
    ({"apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
      "mode": "nftables", "clusterCidr": "10.244.0.0/16",
      "iptables": {"masqueradeAl": True}, "detectLocal": {"bridgeInterfce": "cbr0"}},
     ["clusterCidr", "iptables.masqueradeAl", "detectLocal.bridgeInterfce"]),
]


@pytest.mark.parametrize("obj,paths", KINDS_WITH_TYPOS, ids=lambda v: v["kind"] if isinstance(v, dict) else "")
def test_every_kind_read_is_checked(obj, paths):
    result = cluster_from_objects([obj])
    label = {"EndpointSlice": "EndpointSlice shop/web-1", "Endpoints": "Endpoints shop/ext", "Pod": "Pod shop/p",
             "Node": "Node n1", "KubeProxyConfiguration": "KubeProxyConfiguration"}[obj["kind"]]
    assert unknown(result.warnings) == [f'<objects>: object 1: {label}: unknown field "{p}"' for p in paths]


def test_every_kind_read_has_a_shape():
    from dataplane.input.cluster import _PARSERS

    assert {key for key in _PARSERS if key[1] in {"Service", "Endpoints", "Pod", "Node", "EndpointSlice"}
            or key == ("kubeproxy.config.k8s.io/v1alpha1", "KubeProxyConfiguration")} <= set(SHAPES)


# A Pod as `kubectl get pod -o yaml` prints one a Deployment made (Kubernetes 1.33), with fields
# from every part of the spec and status, and its managedFields (--show-managed-fields).
REAL_POD = """\
apiVersion: v1
kind: Pod
metadata:
  annotations:
    kubectl.kubernetes.io/restartedAt: "2025-05-01T10:00:00Z"
  creationTimestamp: "2025-05-02T08:15:31Z"
  generateName: web-7c9d6b8f5-
  generation: 1
  labels:
    app: web
    pod-template-hash: 7c9d6b8f5
  managedFields:
  - apiVersion: v1
    fieldsType: FieldsV1
    fieldsV1:
      f:metadata: {f:generateName: {}, f:labels: {.: {}, f:app: {}}}
    manager: kube-controller-manager
    operation: Update
    time: "2025-05-02T08:15:31Z"
  name: web-7c9d6b8f5-x2kqp
  namespace: shop
  ownerReferences:
  - apiVersion: apps/v1
    blockOwnerDeletion: true
    controller: true
    kind: ReplicaSet
    name: web-7c9d6b8f5
    uid: 0b1f0a57-8c2a-4a3e-9f4e-3f0c2f9d1e11
  resourceVersion: "48213"
  uid: 5c8e2f4a-1d3b-4a6c-8e9f-2b7d1c0a9e33
spec:
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
      - podAffinityTerm:
          labelSelector: {matchLabels: {app: web}}
          topologyKey: kubernetes.io/hostname
        weight: 100
  containers:
  - env:
    - name: POD_IP
      valueFrom: {fieldRef: {apiVersion: v1, fieldPath: status.podIP}}
    image: nginx:1.27
    imagePullPolicy: IfNotPresent
    livenessProbe:
      failureThreshold: 3
      httpGet: {path: /healthz, port: http, scheme: HTTP}
      periodSeconds: 10
      successThreshold: 1
      timeoutSeconds: 1
    name: nginx
    ports:
    - {containerPort: 8080, name: http, protocol: TCP}
    - {containerPort: 9090, name: metrics, protocol: TCP}
    readinessProbe:
      failureThreshold: 3
      httpGet: {path: /ready, port: http, scheme: HTTP}
      periodSeconds: 5
      successThreshold: 1
      timeoutSeconds: 1
    resources:
      limits: {memory: 256Mi}
      requests: {cpu: 100m, memory: 128Mi}
    securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true}
    terminationMessagePath: /dev/termination-log
    terminationMessagePolicy: File
    volumeMounts:
    - {mountPath: /var/cache/nginx, name: cache}
    - {mountPath: /var/run/secrets/kubernetes.io/serviceaccount, name: kube-api-access-8zq5d, readOnly: true}
  dnsPolicy: ClusterFirst
  enableServiceLinks: true
  initContainers:
  - image: envoyproxy/envoy:v1.33.0
    imagePullPolicy: IfNotPresent
    name: proxy
    ports:
    - {containerPort: 15001, name: proxy, protocol: TCP}
    resources: {}
    restartPolicy: Always
    terminationMessagePath: /dev/termination-log
    terminationMessagePolicy: File
  nodeName: node-a
  preemptionPolicy: PreemptLowerPriority
  priority: 0
  restartPolicy: Always
  schedulerName: default-scheduler
  securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
  serviceAccount: default
  serviceAccountName: default
  terminationGracePeriodSeconds: 30
  tolerations:
  - {effect: NoExecute, key: node.kubernetes.io/not-ready, operator: Exists, tolerationSeconds: 300}
  - {effect: NoExecute, key: node.kubernetes.io/unreachable, operator: Exists, tolerationSeconds: 300}
  topologySpreadConstraints:
  - {labelSelector: {matchLabels: {app: web}}, maxSkew: 1, topologyKey: topology.kubernetes.io/zone,
     whenUnsatisfiable: ScheduleAnyway}
  volumes:
  - emptyDir: {}
    name: cache
  - name: kube-api-access-8zq5d
    projected:
      defaultMode: 420
      sources:
      - serviceAccountToken: {expirationSeconds: 3607, path: token}
status:
  conditions:
  - {lastProbeTime: null, lastTransitionTime: "2025-05-02T08:15:33Z", observedGeneration: 1,
     status: "True", type: PodReadyToStartContainers}
  - {lastProbeTime: null, lastTransitionTime: "2025-05-02T08:15:32Z", status: "True", type: Initialized}
  - {lastProbeTime: null, lastTransitionTime: "2025-05-02T08:15:40Z", status: "True", type: Ready}
  - {lastProbeTime: null, lastTransitionTime: "2025-05-02T08:15:40Z", status: "True", type: ContainersReady}
  - {lastProbeTime: null, lastTransitionTime: "2025-05-02T08:15:31Z", status: "True", type: PodScheduled}
  containerStatuses:
  - containerID: containerd://6f0e3c1b2a
    image: docker.io/library/nginx:1.27
    imageID: docker.io/library/nginx@sha256:0a1b2c
    lastState: {}
    name: nginx
    ready: true
    restartCount: 0
    started: true
    state: {running: {startedAt: "2025-05-02T08:15:34Z"}}
    volumeMounts:
    - {mountPath: /var/cache/nginx, name: cache}
  hostIP: 192.0.2.1
  hostIPs:
  - ip: 192.0.2.1
  observedGeneration: 1
  phase: Running
  podIP: 10.244.1.10
  podIPs:
  - ip: 10.244.1.10
  qosClass: Burstable
  startTime: "2025-05-02T08:15:31Z"
"""


def test_a_real_pod_dump_gets_no_false_warning_even_without_its_resource_version(tmp_path):
    pod = yaml.safe_load(REAL_POD)
    del pod["metadata"]["resourceVersion"]  # as an edited dump: the fields are looked at
    assert unknown_fields("v1", "Pod", pod) == []
    result = load_cluster([write(tmp_path, yaml.safe_dump(pod))])
    assert unknown(result.warnings) == []
    assert result.cluster.pods[0].container_ports  # read, not skipped


def test_objects_read_back_from_an_api_server_are_not_looked_into():
    # the server keeps no field it does not know; a newer one knows fields this list may not
    pod = yaml.safe_load(REAL_POD)
    pod["status"]["someFieldOfKubernetes2"] = True
    pod["spec"]["containers"][0]["newField"] = {}
    assert unknown_fields("v1", "Pod", pod) == []
    del pod["metadata"]["resourceVersion"]
    assert unknown_fields("v1", "Pod", pod) == ["spec.containers[0].newField"]  # status is not checked


def test_values_of_the_wrong_type_are_left_to_the_problems_and_the_example_is_clean(tmp_path):
    obj = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
           "spec": {"ports": ["80", None, {"port": 80, "x": 1}], "sessionAffinityConfig": "no"}}
    assert unknown_fields("v1", "Service", obj) == ["spec.ports[2].x"]
    assert unknown_fields("v1", "Service", {"spec": []}) == []
    assert unknown(load_cluster([str(ROOT / "examples" / "cluster.yaml")]).warnings) == []


# ------------------------------------------------------------------ Services without endpoints

APP = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec: {selector: {matchLabels: {app: web}}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


def test_a_service_selecting_no_pod_without_slices_is_warned_once(tmp_path, capsys):
    others = """\
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: plain, namespace: shop}
        spec: {ports: [{port: 81}]}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: ext, namespace: shop}
        spec: {type: ExternalName, externalName: example.com, selector: {app: web}}
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: other-ns, namespace: default}
        spec: {selector: {app: web}, ports: [{port: 82}]}
        """
    path = write(tmp_path, APP + textwrap.dedent(others))
    warnings = [w for w in load_cluster([path]).warnings if "selects no Pod" in w]
    hint = ("selects no Pod and has no EndpointSlice in the input, so it has no endpoints and its rules reject "
            "all traffic to it; to get its endpoints, include its Pods (kubectl get pods -o yaml) or its "
            "EndpointSlices (kubectl get endpointslices -o yaml)")
    assert warnings == [f"{path}: document 2: Service shop/web: {hint}",
                        f"{path}: document 5: Service default/other-ns: {hint}"]
    assert main(["endpoints", "-f", path]) == 0
    err = capsys.readouterr().err
    assert err.count("Service shop/web: selects no Pod") == 1


def test_no_warning_once_the_pods_or_the_slices_are_given(tmp_path):
    pod = """\
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web-1, namespace: shop, labels: {app: web, pod-template-hash: x}}
        spec: {containers: [{name: c, image: nginx}]}
        status: {podIP: 10.244.1.5}
        """
    slice_ = """\
        ---
        apiVersion: discovery.k8s.io/v1
        kind: EndpointSlice
        metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
        addressType: IPv4
        endpoints: []
        """
    for extra in (pod, slice_):
        result = load_cluster([write(tmp_path, APP + textwrap.dedent(extra))])
        assert not [w for w in result.warnings if "selects no Pod" in w]


# ------------------------------------------------------------------ printed YAML


def test_allocate_prints_no_yaml_anchors_for_shared_values(tmp_path, capsys):
    path = write(tmp_path, """\
        apiVersion: v1
        kind: Service
        metadata:
          name: a
          labels: &labels {app: web}
        spec:
          selector: *labels
          ports: [{name: http, port: 80}]
        """)
    assert main(["allocate", "--seed", "1", "-f", path]) == 0
    out = capsys.readouterr().out
    assert "&" not in out and "*" not in out
    (svc,) = yaml.safe_load_all(out)
    assert svc["metadata"]["labels"] == svc["spec"]["selector"] == {"app": "web"}


def test_endpoints_says_in_plain_words_why_there_is_nothing_to_derive(tmp_path, capsys):
    selectorless = write(tmp_path, """\
        apiVersion: v1
        kind: Service
        metadata: {name: a}
        spec: {ports: [{port: 80}]}
        """, "a.yaml")
    assert main(["endpoints", "-f", selectorless]) == 0
    assert capsys.readouterr().err == "warning: nothing to derive: no Service in the input has a selector\n"
    with_slices = write(tmp_path, APP + """\
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
endpoints: []
""", "b.yaml")
    assert main(["endpoints", "-f", with_slices]) == 0
    assert capsys.readouterr().err.splitlines()[-1] == (
        "warning: nothing to derive: every Service with a selector has EndpointSlices in the input already")


def test_objects_are_not_changed_by_the_check():
    obj = copy.deepcopy(KINDS_WITH_TYPOS[0][0])
    before = copy.deepcopy(obj)
    unknown_fields("discovery.k8s.io/v1", "EndpointSlice", obj)
    assert obj == before
