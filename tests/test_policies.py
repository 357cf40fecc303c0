"""Each policy held to its documented behaviour on small hand-made clusters."""
from __future__ import annotations

import math

import pytest

from router.actions import Dispatch, Handoff, Migrate, Preempt, Reject, Resume
from router.registry import make_policy
from router.slo import SLO
from router.snapshot import COLOCATED, DECODE, PREFILL, InstanceTable, RequestView, Snapshot

SLO_ = SLO(ttft=1.0, tbt=0.05, v=0.1)
PREFILL_COEFFS = (0.01, 1e-4, 0.0)
DECODE_COEFFS = (0.01, 1e-4, 1e-7)


def table(roles, free=None, queued_tokens=None, running=None, context=None, total=1000):
    n = len(roles)
    t = InstanceTable(roles, [0] * n, [total] * n, [0] * n, 16, [PREFILL_COEFFS] * n, [DECODE_COEFFS] * n)
    for column, values in (("free_blocks", free), ("queued_tokens", queued_tokens), ("running", running),
                           ("context_tokens", context)):
        if values is not None:
            getattr(t, column)[:] = values
    for i in range(n):
        t.step_time_s[i] = t.view.decode_step_s(i)
    return t


def request(id, instance=-1, arrival=0.0, prompt=100, context=0, generated=0, idle=0.0, slack=0.0, missed=False):
    return RequestView(id, "default", arrival, prompt, 100, generated, instance, idle, slack, math.nan,
                       context, missed, SLO_)


def snapshot(t, event="arrival", now=0.0, running=(), **requests):
    grouped = {}
    for r in running:
        grouped.setdefault(r.instance, []).append(r)
    return Snapshot(now, event, t.view, running={i: tuple(rs) for i, rs in grouped.items()}, **requests)


def test_least_loaded_dispatches_to_least_queued_work_and_hands_off_to_most_free_kv():
    t = table([PREFILL, PREFILL, DECODE, DECODE], free=[1000, 1000, 300, 700], queued_tokens=[5000, 100, 0, 0])
    policy = make_policy("least_loaded")
    actions = policy.decide(snapshot(t, to_dispatch=(request(1),), to_hand_off=(request(2, instance=0, context=100),)))
    assert Dispatch(1, 1) in actions and Handoff(2, 3) in actions


def test_least_loaded_migrates_the_shortest_request_from_fullest_to_emptiest_decode():
    t = table([PREFILL, DECODE, DECODE], free=[1000, 100, 900])
    running = (request(1, instance=1, context=900), request(2, instance=1, context=50), request(3, instance=2, context=10))
    actions = make_policy("least_loaded").decide(snapshot(t, "tick", running=running))
    assert actions == [Migrate(2, 2, "live", "rebalance")]
    t.free_blocks[:] = [1000, 800, 900]
    assert make_policy("least_loaded").decide(snapshot(t, "tick", running=running)) == []


def test_classic_serves_most_urgent_first_and_can_abandon_the_late():
    t = table([PREFILL, DECODE])
    late, urgent, relaxed = request(1, arrival=-5.0, missed=True), request(2, arrival=-0.5), request(3, arrival=0.0)
    actions = make_policy("classic_goodput").decide(snapshot(t, to_dispatch=(relaxed, late, urgent)))
    assert [a.request for a in actions] == [2, 3, 1]
    actions = make_policy("classic_goodput", {"abandon": True}).decide(snapshot(t, to_dispatch=(relaxed, late, urgent)))
    assert Reject(1, "abandoned: misses its TTFT", "abandon_new") in actions and Dispatch(2, 0) in actions


def test_classic_hands_off_within_tbt_or_sacrifices_an_instance_already_over():
    t = table([PREFILL, DECODE, DECODE], running=[0, 10, 400], context=[0, 10_000, 100_000])
    assert t.view.decode_step_s(1, 1, 100) <= SLO_.tbt < t.view.decode_step_s(2)
    actions = make_policy("classic_goodput").decide(snapshot(t, "prefill_done", to_hand_off=(request(1, 0, context=100),)))
    assert actions == [Handoff(1, 1)]
    t.running[:] = [0, 390, 400]
    t.step_time_s[1], t.step_time_s[2] = t.view.decode_step_s(1), t.view.decode_step_s(2)
    assert t.view.decode_step_s(1, 1, 100) > SLO_.tbt
    actions = make_policy("classic_goodput").decide(snapshot(t, "prefill_done", to_hand_off=(request(1, 0, context=100),)))
    assert actions == [Handoff(1, 2)]


def test_classic_rescues_an_instance_over_tbt():
    t = table([PREFILL, DECODE, DECODE], running=[0, 400, 1], context=[0, 10_000, 100])
    running = (request(1, 1, context=50), request(2, 1, context=50, missed=True), request(3, 2, context=50))
    actions = make_policy("classic_goodput").decide(snapshot(t, "tick", running=running))
    assert Migrate(1, 2, "live", "rescue") in actions and Preempt(2, "recompute", "shed") in actions


def test_smooth_never_abandons_and_re_prefills_preempted_first():
    t = table([PREFILL, DECODE, DECODE], running=[0, 900, 0], context=[0, 10_000, 0])
    actions = make_policy("smooth_goodput").decide(snapshot(
        t, "tick", preempted=(request(9, -1, context=300, idle=3.0),), to_dispatch=(request(1, missed=True),)))
    assert actions[0] == Resume(9, 0) and Dispatch(1, 0) in actions          # re-prefilled on the prefill instance
    assert not any(isinstance(a, Reject) for a in actions)


def test_smooth_moves_only_requests_whose_slack_covers_the_stall():
    t = table([PREFILL, DECODE, DECODE], running=[0, 900, 1], context=[0, 10_000, 100])
    assert t.step_time_s[1] > SLO_.v
    running = (request(1, 1, context=50, slack=2.0), request(2, 1, context=50, slack=0.0), request(3, 2, context=10))
    actions = make_policy("smooth_goodput").decide(snapshot(t, "tick", running=running))
    assert actions == [Migrate(1, 2, "live", "spend_slack")]


def test_smooth_hands_off_where_it_adds_the_least_idle():
    t = table([PREFILL, DECODE, DECODE], running=[0, 900, 10], context=[0, 10_000, 1000])
    actions = make_policy("smooth_goodput").decide(snapshot(t, "prefill_done", to_hand_off=(request(1, 0, context=100),)))
    assert actions == [Handoff(1, 2)]


def test_smooth_leaves_room_for_growth_and_never_preempts_by_itself():
    t = table([PREFILL, DECODE, DECODE], running=[0, 10, 10], free=[1000, 12, 40], context=[0, 1000, 1000])
    actions = make_policy("smooth_goodput").decide(snapshot(t, "prefill_done", to_hand_off=(request(1, 0, context=100),)))
    assert actions == [Handoff(1, 2)]              # instance 1 fits its 7 blocks but not 10 more of growth
    running = (request(2, 1, context=50, slack=9.0),)
    assert make_policy("smooth_goodput").decide(snapshot(t, "tick", running=running)) == []


def test_colocated_requests_decode_where_they_were_prefilled():
    t = table([COLOCATED, COLOCATED])
    for name in ("round_robin", "least_loaded", "classic_goodput", "smooth_goodput"):
        actions = make_policy(name).decide(snapshot(t, "prefill_done", to_hand_off=(request(1, 1, context=10),)))
        assert actions == [Handoff(1, 1)], name


def test_unknown_parameters_are_named():
    with pytest.raises(ValueError, match="router.params"):
        make_policy("smooth_goodput", {"alpha_boost": 2})
    with pytest.raises(ValueError, match="classic_goodput.scheme"):
        make_policy("classic_goodput", {"scheme": "e2e"})


def test_who_goes_when_kv_runs_out():
    t = table([DECODE])
    running = (request(1, 0, arrival=-3.0, slack=0.1), request(2, 0, arrival=-2.0, slack=2.0, missed=True),
               request(3, 0, arrival=-1.0, slack=0.5))
    shot = snapshot(t, "preempting", running=running)
    assert make_policy("classic_goodput").choose_victim(shot, 0) == 2       # already missed
    assert make_policy("smooth_goodput").choose_victim(shot, 0) == 2        # most slack
    assert make_policy("round_robin").choose_victim(shot, 0) is None        # vLLM's choice
    calm = snapshot(t, "preempting", running=(request(1, 0, arrival=-3.0, slack=3.0), request(3, 0, arrival=-1.0)))
    assert make_policy("classic_goodput").choose_victim(calm, 0) is None
    assert make_policy("smooth_goodput").choose_victim(calm, 0) == 1


class Untouchable(dict):
    """Running requests a policy must not read."""

    def __getitem__(self, instance):
        raise AssertionError(f"read the requests of instance {instance}")

    def __iter__(self):
        raise AssertionError("listed the running requests")


@pytest.mark.parametrize("policy", ["smooth_goodput", "classic_goodput"])
def test_a_tick_with_every_step_within_every_slo_reads_no_running_request(policy):
    fast = table([PREFILL, DECODE, DECODE], running=[0, 10, 1], context=[0, 1_000, 100])
    assert fast.step_time_s.max() < SLO_.tbt
    quiet = Snapshot(0.0, "tick", fast.view, running=Untouchable(), slos=(SLO_,))
    assert make_policy(policy).decide(quiet) == []
    slow = table([PREFILL, DECODE, DECODE], running=[0, 900, 1], context=[0, 10_000, 100])
    busy = Snapshot(0.0, "tick", slow.view, running=Untouchable(), slos=(SLO_,))
    with pytest.raises(AssertionError, match="running requests"):
        make_policy(policy).decide(busy)


def test_smooth_holds_new_requests_while_prefill_is_busy_and_sends_the_shortest_first():
    t = table([PREFILL, DECODE], queued_tokens=[0, 0])
    waiting = (request(1, arrival=0.0, prompt=900), request(2, arrival=0.1, prompt=100), request(3, arrival=0.2,
                                                                                               prompt=400))
    policy = make_policy("smooth_goodput", {"prefill_order": "shortest", "hold_s": 0.05})
    actions = policy.decide(snapshot(t, to_dispatch=waiting))
    assert actions == [Dispatch(2, 0), Dispatch(3, 0)]    # shortest first, until 0.01 + 1e-4 * 500 s are queued
    assert make_policy("smooth_goodput").decide(snapshot(t, to_dispatch=waiting)) == \
        [Dispatch(1, 0), Dispatch(2, 0), Dispatch(3, 0)]          # by default: every one at once, by deadline
    t.queued_tokens[0] = 5_000
    assert policy.decide(snapshot(t, to_dispatch=waiting)) == []   # all held while the queue is long
    with pytest.raises(ValueError, match="prefill_order: expected one of"):
        make_policy("smooth_goodput", {"prefill_order": "random"})


def test_response_ratio_sends_the_shortest_first_until_a_long_prompt_has_waited_its_turn():
    t = table([PREFILL, DECODE], queued_tokens=[0, 0])
    policy = make_policy("smooth_goodput", {"prefill_order": "response_ratio"})
    long, short = request(1, arrival=0.0, prompt=2_000), request(2, arrival=0.0, prompt=100)
    prefill_s = {1: 0.01 + 1e-4 * 2_000, 2: 0.01 + 1e-4 * 100}
    assert policy.decide(snapshot(t, now=0.05, to_dispatch=(long, short))) == [Dispatch(2, 0), Dispatch(1, 0)]
    fresh = request(3, arrival=1.0, prompt=100)
    now = 1.0 + 1e-3
    assert (now + prefill_s[1]) / prefill_s[1] > (now - 1.0 + prefill_s[2]) / prefill_s[2]
    assert policy.decide(snapshot(t, now=now, to_dispatch=(long, fresh))) == [Dispatch(1, 0), Dispatch(3, 0)]
