"""The scheduler's decisions on plain-dict clusters: filters with kube's reasons, scores, sampling, the
assumed-pod cache. No server: the pure core (cache, filters, scores, algorithm) is exercised directly."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skiff.cluster.scheduler.algorithm import Algorithm, FitError, feasible_nodes_to_find
from skiff.cluster.scheduler.cache import SchedulerCache
from skiff.cluster.scheduler.podinfo import PodInfo
from skiff.cluster.scheduler.quantity import milli_value, resource_value, whole_value
from skiff.errors import InvalidArgument
from tests.cluster.scheduler.objects import node, pod, taint


def cluster(*nodes: dict) -> tuple[SchedulerCache, Algorithm]:
    cache = SchedulerCache()
    for n in nodes:
        cache.set_node(n)
    return cache, Algorithm(cache, rng=random.Random(7))


def place(cache: SchedulerCache, algorithm: Algorithm, obj: dict) -> str:
    info = PodInfo.of(obj)
    decision = algorithm.schedule(info)
    cache.assume(info, decision.node)
    return decision.node


def fit_error(algorithm: Algorithm, obj: dict) -> str:
    with pytest.raises(FitError) as caught:
        algorithm.schedule(PodInfo.of(obj))
    return caught.value.message


# Quantities -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "milli"), [("1", 1000), ("100m", 100), ("0.5", 500), ("1.5", 1500), ("2k", 2_000_000),
                                            ("1e3", 1_000_000), ("0.0001", 1), (3, 3000)])
def test_cpu_quantities_in_millicores(text: str | int, milli: int) -> None:
    assert milli_value(text) == milli


@pytest.mark.parametrize(("text", "value"), [("128Mi", 128 << 20), ("1Gi", 1 << 30), ("1G", 10**9), ("500", 500),
                                            ("1.5Ki", 1536), ("100m", 1)])
def test_memory_quantities_in_bytes_rounded_up(text: str, value: int) -> None:
    assert whole_value(text) == value


@pytest.mark.parametrize("bad", ["", "1x", "Mi", "1.2.3", "--1", True])
def test_malformed_quantities_are_refused(bad: object) -> None:
    with pytest.raises(InvalidArgument):
        milli_value(bad)  # type: ignore[arg-type]


@given(st.integers(min_value=0, max_value=10**9))
def test_millicores_round_trip(n: int) -> None:
    assert resource_value("cpu", f"{n}m") == n
    assert resource_value("memory", f"{n}Ki") == n * 1024


# Sampling -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("nodes", "found"), [(10, 10), (99, 99), (100, 100), (300, 144), (1000, 420), (5000, 500),
                                              (10000, 500), (20000, 1000)])
def test_feasible_nodes_to_find_is_kubes_adaptive_percentage(nodes: int, found: int) -> None:
    assert feasible_nodes_to_find(nodes) == found


def test_search_resumes_where_the_last_one_stopped() -> None:
    _cache, algorithm = cluster(*(node(f"n{i}") for i in range(1000)))
    first = algorithm.schedule(PodInfo.of(pod("a")))
    assert first.evaluated == 420 and first.feasible == 420
    assert algorithm.next_start == 420
    algorithm.schedule(PodInfo.of(pod("b")))
    assert algorithm.next_start == 840


# Filters and their reasons ----------------------------------------------------------------------------------

def test_fit_error_lists_every_reason_as_kube_does() -> None:
    _, algorithm = cluster(node("small", cpu="1"), node("gpu1", taints=[taint("dedicated", "gpu")]),
                           node("gpu2", taints=[taint("dedicated", "gpu")]))
    assert fit_error(algorithm, pod("big", cpu="2")) == (
        "0/3 nodes are available: 1 Insufficient cpu, 2 node(s) had untolerated taint {dedicated: gpu}.")


def test_no_nodes_at_all() -> None:
    _, algorithm = cluster()
    assert fit_error(algorithm, pod("p")) == "no nodes available to schedule pods"


def test_not_ready_and_unreachable_nodes_carry_their_taints() -> None:
    _, algorithm = cluster(node("down", ready="False"), node("gone", ready="Unknown"), node("cordoned",
                                                                                           unschedulable=True))
    assert fit_error(algorithm, pod("p")) == (
        "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/not-ready: }, "
        "1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, 1 node(s) were unschedulable.")


def test_a_pod_tolerating_not_ready_may_use_such_a_node() -> None:
    cache, algorithm = cluster(node("down", ready="False"))
    tolerant = pod("p", tolerations=[{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}])
    assert place(cache, algorithm, tolerant) == "down"


@pytest.mark.parametrize(("toleration", "fits"), [
    ({"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}, True),
    ({"key": "dedicated", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}, False),
    ({"key": "dedicated", "operator": "Exists"}, True),
    ({"operator": "Exists"}, True),
    ({"key": "dedicated", "operator": "Exists", "effect": "NoExecute"}, False),
    ({"key": "other", "operator": "Exists"}, False),
])
def test_tolerations(toleration: dict, fits: bool) -> None:
    cache, algorithm = cluster(node("gpu", taints=[taint("dedicated", "gpu")]))
    obj = pod("p", tolerations=[toleration])
    if fits:
        assert place(cache, algorithm, obj) == "gpu"
    else:
        assert "untolerated taint {dedicated: gpu}" in fit_error(algorithm, obj)


def test_no_execute_taints_also_refuse() -> None:
    _, algorithm = cluster(node("n", taints=[taint("evict", "now", "NoExecute")]))
    assert fit_error(algorithm, pod("p")) == "0/1 nodes are available: 1 node(s) had untolerated taint {evict: now}."


def test_node_selector() -> None:
    cache, algorithm = cluster(node("a", labels={"disk": "ssd"}), node("b", labels={"disk": "hdd"}))
    assert place(cache, algorithm, pod("p", nodeSelector={"disk": "ssd"})) == "a"
    assert fit_error(algorithm, pod("q", nodeSelector={"disk": "nvme"})) == (
        "0/2 nodes are available: 2 node(s) didn't match Pod's node affinity/selector.")


def required(*exprs: dict, fields: list | None = None) -> dict:
    term: dict = {"matchExpressions": list(exprs)}
    if fields:
        term["matchFields"] = fields
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


@pytest.mark.parametrize(("expr", "chosen"), [
    ({"key": "zone", "operator": "In", "values": ["z2", "z3"]}, {"b", "c"}),
    ({"key": "zone", "operator": "NotIn", "values": ["z1", "z2"]}, {"c", "d"}),
    ({"key": "gpu", "operator": "Exists"}, {"c"}),
    ({"key": "gpu", "operator": "DoesNotExist"}, {"a", "b", "d"}),
    ({"key": "cores", "operator": "Gt", "values": ["8"]}, {"b"}),
    ({"key": "cores", "operator": "Lt", "values": ["8"]}, {"a"}),
])
def test_required_node_affinity_operators(expr: dict, chosen: set[str]) -> None:
    _cache, algorithm = cluster(node("a", labels={"zone": "z1", "cores": "4"}),
                               node("b", labels={"zone": "z2", "cores": "16"}),
                               node("c", labels={"zone": "z3", "gpu": "yes", "cores": "x"}), node("d"))
    seen = {algorithm.schedule(PodInfo.of(pod(f"p{i}", affinity=required(expr)))).node for i in range(40)}
    assert seen == chosen


def test_match_fields_names_the_node() -> None:
    _cache, algorithm = cluster(node("a"), node("b"), node("c"))
    affinity = required(fields=[{"key": "metadata.name", "operator": "In", "values": ["b"]}])
    assert {algorithm.schedule(PodInfo.of(pod(f"p{i}", affinity=affinity))).node for i in range(10)} == {"b"}


def test_node_affinity_terms_are_ored_and_an_empty_term_matches_nothing() -> None:
    _, algorithm = cluster(node("a", labels={"x": "1"}), node("b", labels={"y": "1"}))
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "x", "operator": "Exists"}]}, {},
        {"matchExpressions": [{"key": "y", "operator": "Exists"}]}]}}}
    assert {algorithm.schedule(PodInfo.of(pod(f"p{i}", affinity=affinity))).node for i in range(20)} == {"a", "b"}
    nothing = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{}]}}}
    assert "didn't match Pod's node affinity/selector" in fit_error(algorithm, pod("q", affinity=nothing))


def test_host_port_conflicts() -> None:
    cache, algorithm = cluster(node("a"), node("b"))
    ports = [{"containerPort": 80, "hostPort": 8080}]
    placed = {place(cache, algorithm, pod(f"web{i}", ports=ports)) for i in range(2)}
    assert placed == {"a", "b"}
    assert fit_error(algorithm, pod("web3", ports=ports)) == (
        "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports.")
    # another protocol, or another host address on both sides, does not conflict
    assert place(cache, algorithm, pod("dns", ports=[{"containerPort": 53, "hostPort": 8080, "protocol": "UDP"}]))


def test_resources_and_pod_count() -> None:
    cache, algorithm = cluster(node("a", cpu="1", memory="1Gi", pods=2))
    place(cache, algorithm, pod("p1", cpu="600m", memory="512Mi"))
    assert fit_error(algorithm, pod("p2", cpu="500m", memory="600Mi")) == (
        "0/1 nodes are available: 1 Insufficient cpu, 1 Insufficient memory.")
    place(cache, algorithm, pod("p3", cpu="400m"))
    assert fit_error(algorithm, pod("p4")) == "0/1 nodes are available: 1 Too many pods."


def test_limits_count_as_requests_and_init_containers_as_their_peak() -> None:
    info = PodInfo.of({"metadata": {"name": "p"}, "spec": {
        "containers": [{"name": "a", "resources": {"limits": {"cpu": "1"}}},
                       {"name": "b", "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}}}],
        "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2", "memory": "64Mi"}}}],
        "overhead": {"cpu": "100m"}}})
    assert info.milli_cpu == 2100 and info.memory == 1 << 30


def test_extended_resources() -> None:
    gpu_node = node("g")
    gpu_node["status"]["allocatable"]["example.com/gpu"] = "1"
    cache, algorithm = cluster(gpu_node, node("plain"))
    obj = pod("p")
    obj["spec"]["containers"][0]["resources"] = {"limits": {"example.com/gpu": "1"}}
    assert place(cache, algorithm, obj) == "g"
    obj2 = pod("q")
    obj2["spec"]["containers"][0]["resources"] = {"limits": {"example.com/gpu": "1"}}
    assert fit_error(algorithm, obj2) == "0/2 nodes are available: 2 Insufficient example.com/gpu."


# Pod affinity and anti-affinity -----------------------------------------------------------------------------

def anti(app: str, key: str = "kubernetes.io/hostname") -> dict:
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": app}}, "topologyKey": key}]}}


def with_(app: str, key: str) -> dict:
    return {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": [app]}]},
         "topologyKey": key}]}}


def test_required_anti_affinity_puts_replicas_on_distinct_nodes() -> None:
    cache, algorithm = cluster(*(node(f"n{i}") for i in range(3)))
    placed = [place(cache, algorithm, pod(f"db{i}", labels={"app": "db"}, affinity=anti("db"))) for i in range(3)]
    assert sorted(placed) == ["n0", "n1", "n2"]
    assert fit_error(algorithm, pod("db3", labels={"app": "db"}, affinity=anti("db"))) == (
        "0/3 nodes are available: 3 node(s) didn't match pod anti-affinity rules.")


def test_existing_pods_anti_affinity_keeps_others_away() -> None:
    cache, algorithm = cluster(node("a"), node("b"))
    assert place(cache, algorithm, pod("loner", labels={"app": "loner"}, affinity=anti("web"))) in ("a", "b")
    loner_node = cache.pods["default/loner"].node_name
    for i in range(6):
        assert place(cache, algorithm, pod(f"web{i}", labels={"app": "web"})) != loner_node
    cache2, algorithm2 = cluster(node("a"))
    place(cache2, algorithm2, pod("loner", affinity=anti("web")))
    assert fit_error(algorithm2, pod("web", labels={"app": "web"})) == (
        "0/1 nodes are available: 1 node(s) didn't satisfy existing pods anti-affinity rules.")


def test_required_affinity_follows_the_pods_it_names_into_their_zone() -> None:
    zones = {"a": "z1", "b": "z1", "c": "z2", "d": "z2"}
    cache, algorithm = cluster(*(node(n, labels={"topology.kubernetes.io/zone": z}) for n, z in zones.items()))
    cache.assume(PodInfo.of(pod("cache", labels={"app": "cache"})), "c")
    for i in range(10):
        assert zones[place(cache, algorithm, pod(f"web{i}", affinity=with_("cache", "topology.kubernetes.io/zone")))] \
            == "z2"


def test_affinity_with_no_match_anywhere_refuses_unless_the_pod_matches_itself() -> None:
    cache, algorithm = cluster(node("a", labels={"rack": "r1"}))
    assert fit_error(algorithm, pod("web", affinity=with_("cache", "rack"))) == (
        "0/1 nodes are available: 1 node(s) didn't match pod affinity rules.")
    assert place(cache, algorithm, pod("first", labels={"app": "cache"}, affinity=with_("cache", "rack"))) == "a"


# Topology spread ----------------------------------------------------------------------------------------------

def test_hard_topology_spread_keeps_zones_within_max_skew() -> None:
    zones = {"a": "z1", "b": "z1", "c": "z2"}
    cache, algorithm = cluster(*(node(n, labels={"topology.kubernetes.io/zone": z}) for n, z in zones.items()))
    constraint = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
                   "labelSelector": {"matchLabels": {"app": "web"}}}]
    placed = Counter(zones[place(cache, algorithm, pod(f"w{i}", labels={"app": "web"},
                                                       topologySpreadConstraints=constraint))] for i in range(8))
    assert placed == {"z1": 4, "z2": 4}


def test_hard_topology_spread_refuses_nodes_without_the_key() -> None:
    _, algorithm = cluster(node("a"))
    constraint = [{"maxSkew": 1, "topologyKey": "rack", "whenUnsatisfiable": "DoNotSchedule",
                   "labelSelector": {"matchLabels": {"app": "web"}}}]
    assert fit_error(algorithm, pod("w", labels={"app": "web"}, topologySpreadConstraints=constraint)) == (
        "0/1 nodes are available: 1 node(s) didn't match pod topology spread constraints (missing required label).")


# Scores -------------------------------------------------------------------------------------------------------

def test_replicas_of_one_owner_spread_over_nodes() -> None:
    cache, algorithm = cluster(*(node(f"n{i}") for i in range(10)))
    placed = Counter(place(cache, algorithm, pod(f"web{i}", cpu="10m", owner="web-rs")) for i in range(30))
    assert sorted(placed.values()) == [3] * 10


def test_soft_zone_spread_without_owner() -> None:
    zones = {"a": "z1", "b": "z1", "c": "z1", "d": "z2"}
    cache, algorithm = cluster(*(node(n, labels={"topology.kubernetes.io/zone": z}) for n, z in zones.items()))
    constraint = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
                   "labelSelector": {"matchLabels": {"app": "web"}}}]
    placed = Counter(zones[place(cache, algorithm, pod(f"w{i}", labels={"app": "web"},
                                                       topologySpreadConstraints=constraint))] for i in range(6))
    assert placed["z2"] >= 2  # the lone node of z2 gets its zone's share, not a quarter


def test_least_allocated_prefers_the_emptier_node() -> None:
    cache, algorithm = cluster(node("busy"), node("idle"))
    cache.assume(PodInfo.of(pod("hog", cpu="3", memory="6Gi")), "busy")
    assert place(cache, algorithm, pod("p", cpu="100m", memory="100Mi")) == "idle"


def test_prefer_no_schedule_taints_are_avoided_but_not_refused() -> None:
    cache, algorithm = cluster(node("tainted", taints=[taint("spot", "yes", "PreferNoSchedule")]), node("clean"))
    assert place(cache, algorithm, pod("p")) == "clean"
    _, only = cluster(node("tainted", taints=[taint("spot", "yes", "PreferNoSchedule")]))
    assert only.schedule(PodInfo.of(pod("q"))).node == "tainted"


def test_preferred_node_affinity_is_followed() -> None:
    _cache, algorithm = cluster(node("a", labels={"disk": "hdd"}), node("b", labels={"disk": "ssd"}), node("c"))
    affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "preference": {"matchExpressions": [{"key": "disk", "operator": "In", "values": ["ssd"]}]}}]}}
    assert {algorithm.schedule(PodInfo.of(pod(f"p{i}", affinity=affinity))).node for i in range(10)} == {"b"}


def test_preferred_pod_anti_affinity_spreads_and_affinity_gathers() -> None:
    cache, algorithm = cluster(node("a"), node("b"), node("c"))
    cache.assume(PodInfo.of(pod("db", labels={"app": "db"})), "b")
    near = {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
        "labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}}]}}
    far = {"podAntiAffinity": near["podAffinity"]}
    assert {algorithm.schedule(PodInfo.of(pod(f"n{i}", affinity=near))).node for i in range(10)} == {"b"}
    assert "b" not in {algorithm.schedule(PodInfo.of(pod(f"f{i}", affinity=far))).node for i in range(10)}


# The assumed-pod cache ----------------------------------------------------------------------------------------

def test_assumed_pods_count_before_their_binding_is_confirmed() -> None:
    cache, algorithm = cluster(node("a", cpu="4"), node("b", cpu="4"))
    first = place(cache, algorithm, pod("p1", cpu="3"))
    second = place(cache, algorithm, pod("p2", cpu="3"))
    assert {first, second} == {"a", "b"}
    assert "Insufficient cpu" in fit_error(algorithm, pod("p3", cpu="3"))
    cache.forget("default/p1")  # its bind failed
    assert place(cache, algorithm, pod("p3", cpu="3")) == first


def test_confirmation_replaces_the_assumed_copy_and_expiry_drops_an_unconfirmed_one() -> None:
    cache, algorithm = cluster(node("a", cpu="4"))
    place(cache, algorithm, pod("p1", cpu="1"))
    confirmed = PodInfo.of({**pod("p1", cpu="1"), "spec": {**pod("p1", cpu="1")["spec"], "nodeName": "a"}})
    cache.add_pod(confirmed)
    assert not cache.is_assumed("default/p1")
    assert cache.nodes["a"].requested_cpu == 1000
    place(cache, algorithm, pod("p2", cpu="1"))
    cache.finish_binding("default/p2", now=0.0)
    assert cache.expire_assumed(now=31.0) == ["default/p2"]
    assert cache.nodes["a"].requested_cpu == 1000


def test_pods_on_unknown_nodes_are_kept_until_the_node_appears() -> None:
    cache, algorithm = cluster()
    cache.add_pod(PodInfo.of({**pod("early", cpu="3"), "spec": {**pod("early", cpu="3")["spec"], "nodeName": "late"}}))
    cache.set_node(node("late", cpu="4"))
    assert "Insufficient cpu" in fit_error(algorithm, pod("p", cpu="2"))
    cache.remove_pod("default/early")
    assert algorithm.schedule(PodInfo.of(pod("p", cpu="2"))).node == "late"


# Properties ---------------------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(nodes=st.lists(st.tuples(st.integers(1, 8), st.integers(1, 16), st.integers(1, 6)), min_size=1, max_size=12),
       pods=st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 4096)), min_size=1, max_size=40))
def test_no_node_is_ever_overcommitted(nodes: list[tuple[int, int, int]], pods: list[tuple[int, int]]) -> None:
    cache, algorithm = cluster(*(node(f"n{i}", cpu=str(c), memory=f"{m}Gi", pods=p)
                                 for i, (c, m, p) in enumerate(nodes)))
    for i, (cpu, memory) in enumerate(pods):
        info = PodInfo.of(pod(f"p{i}", cpu=f"{cpu}m", memory=f"{memory}Mi"))
        fits_somewhere = any(len(n.pods) < n.allocatable_pods and cpu <= n.allocatable_cpu - n.requested_cpu
                             and memory << 20 <= n.allocatable_memory - n.requested_memory
                             for n in cache.node_list)
        try:
            decision = algorithm.schedule(info)
        except FitError:
            assert not fits_somewhere
            continue
        cache.assume(info, decision.node)
    for n in cache.node_list:
        assert n.requested_cpu <= n.allocatable_cpu
        assert n.requested_memory <= n.allocatable_memory
        assert len(n.pods) <= n.allocatable_pods


@settings(max_examples=30, deadline=None)
@given(sizes=st.lists(st.tuples(st.integers(1, 8), st.integers(1, 16)), min_size=2, max_size=150),
       pods=st.lists(st.tuples(st.sampled_from(["a", "b", None]), st.integers(0, 900)), min_size=1, max_size=60),
       refusing=st.booleans())
def test_the_sliced_fast_path_picks_a_node_the_plain_computation_ranks_best(
        sizes: list[tuple[int, int]], pods: list[tuple[str | None, int]], refusing: bool) -> None:
    """Each decision, recomputed node by node the plain way (filters, then least allocated + balanced allocation
    + default spreading from the cache's dicts) over the window the algorithm looked at, is a best node."""
    from skiff.cluster.scheduler import scores
    from skiff.cluster.scheduler.filters import local_reasons

    nodes = [node(f"n{i}", cpu=str(c), memory=f"{m}Gi", labels={"small": "yes"} if c < 3 else {})
             for i, (c, m) in enumerate(sizes)]
    cache, algorithm = cluster(*nodes)
    for i, (owner, cpu) in enumerate(pods):
        extra = {"nodeSelector": {"small": "yes"}} if refusing and i % 3 == 0 else {}
        info = PodInfo.of(pod(f"p{i}", cpu=f"{cpu}m", memory="64Mi", owner=owner, **extra))
        start, total = algorithm.next_start, len(cache.node_list)
        try:
            decision = algorithm.schedule(info)
        except FitError:
            continue
        window = [cache.node_list[(start + k) % total] for k in range(decision.evaluated)]
        feasible = [n for n in window if not local_reasons(info, n)]
        plain = [scores.least_allocated(info, n) + scores.balanced_allocation(info, n) for n in feasible]
        spread = scores.spread(info, cache, feasible)
        if spread is not None and len(feasible) > 1:
            plain = [p + scores.SPREAD_WEIGHT * s for p, s in zip(plain, spread, strict=True)]
        chosen = next(k for k, n in enumerate(feasible) if n.name == decision.node)
        assert plain[chosen] == max(plain)
        cache.assume(info, decision.node)
