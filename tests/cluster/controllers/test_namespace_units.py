"""Unit tests of the namespace controller's conditions (skiff/cluster/controllers/namespace.py): kube's types,
reasons and messages for a namespace emptied, one with content left, and one whose deletion failed."""

from __future__ import annotations

from collections import Counter

from skiff.cluster.controllers.namespace import Progress


def test_all_done_is_five_false_conditions() -> None:
    conditions = Progress().conditions()
    assert {kind: status for kind, (status, _, _) in conditions.items()} == {
        "NamespaceDeletionDiscoveryFailure": "False", "NamespaceDeletionGroupVersionParsingFailure": "False",
        "NamespaceDeletionContentFailure": "False", "NamespaceContentRemaining": "False",
        "NamespaceFinalizersRemaining": "False"}
    assert conditions["NamespaceContentRemaining"][1:] == ("ContentRemoved", "All content successfully removed")
    assert Progress().done


def test_remaining_content_and_failures_are_reported_as_kube_words_them() -> None:
    progress = Progress(discovery_error="apps/v1: boom", failures=["leases.coordination.k8s.io: denied"],
                        remaining=Counter({"pods.": 2, "configmaps.": 1}), finalizers=Counter({"example.com/x": 1}))
    conditions = progress.conditions()
    assert not progress.done
    assert conditions["NamespaceContentRemaining"] == (
        "True", "SomeResourcesRemain",
        "Some resources are remaining: configmaps. has 1 resource instances, pods. has 2 resource instances")
    assert conditions["NamespaceFinalizersRemaining"] == (
        "True", "SomeFinalizersRemain",
        "Some content in the namespace has finalizers remaining: example.com/x in 1 resource instances")
    assert conditions["NamespaceDeletionContentFailure"][:2] == ("True", "ContentDeletionFailed")
    assert conditions["NamespaceDeletionContentFailure"][2].startswith(
        "Failed to delete all resource types, 1 remaining: leases")
    assert conditions["NamespaceDeletionDiscoveryFailure"][:2] == ("True", "DiscoveryFailed")
