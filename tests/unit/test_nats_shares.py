"""Partition shares and preferences of the NATS leases (service/nats/leases.py), without a server."""

from __future__ import annotations

from service.nats.leases import member_key, rank, targets


def test_targets_split_every_partition_and_differ_by_one_at_most() -> None:
    for partitions in (1, 4, 16, 17, 64):
        for n in range(1, 9):
            members = {f"replica-{i}" for i in range(n)}
            got = targets(partitions, members)
            assert set(got) == members and sum(got.values()) == partitions
            assert max(got.values()) - min(got.values()) <= 1
            assert max(got.values()) == -(-partitions // n)  # ceil(P / M)


def test_targets_do_not_depend_on_who_asks() -> None:
    # Every replica computes the same split from the same members: no negotiation needed.
    assert targets(16, {"b", "a", "c"}) == targets(16, {"c", "b", "a"}) == {"a": 6, "b": 5, "c": 5}


def test_rank_is_stable_and_spreads_preferences() -> None:
    assert rank(3, "a") == rank(3, "a") and rank(3, "a") != rank(3, "b")
    # Each of 3 replicas is the first choice for some of 64 partitions.
    firsts = {max(("a", "b", "c"), key=lambda r, p=p: rank(p, r)) for p in range(64)}
    assert firsts == {"a", "b", "c"}


def test_member_keys_are_valid_kv_keys_for_any_hostname() -> None:
    assert member_key("gw-01-1234") == "m.gw-01-1234"
    assert member_key("host.example.org-99") == "m.host_example_org-99"
    assert member_key("wéird host") == "m.w_ird_host"
