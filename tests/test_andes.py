"""Andes as a peer policy (issue 13): per decode instance a knapsack over KV of the QoE
each request would lose over the horizon, most valuable per block kept; what is left
out is parked (capped per decision), what is kept is resumed or admitted."""
from __future__ import annotations

import pytest

from router.actions import Dispatch, Handoff, Preempt, Resume
from router.registry import make_policy
from router.snapshot import DECODE, PREFILL
from tests.test_policies import request, snapshot, table


def test_a_full_decode_parks_the_reader_furthest_ahead_to_admit_a_waiting_one():
    t = table([PREFILL, DECODE], free=[1000, 5], total=200)
    running = (request(1, instance=1, context=1600, slack=30.0), request(2, instance=1, context=1400, slack=0.05))
    waiting = (request(3, instance=0, context=1000, slack=0.1),)
    actions = make_policy("andes").decide(snapshot(t, "tick", running=running, to_hand_off=waiting))
    assert actions == [Preempt(1, "swap", "knapsack")]


def test_what_fits_is_admitted_and_dispatch_takes_the_fastest_prefill():
    t = table([PREFILL, PREFILL, DECODE], free=[1000, 1000, 1000], queued_tokens=[5000, 0, 0])
    waiting = (request(3, instance=0, context=100, slack=0.1),)
    actions = make_policy("andes").decide(snapshot(t, "prefill_done", to_dispatch=(request(4),), to_hand_off=waiting))
    assert Dispatch(4, 1) in actions and Handoff(3, 2) in actions


def test_a_parked_request_comes_back_when_its_reader_is_about_to_run_dry():
    t = table([PREFILL, DECODE], free=[1000, 1000])
    policy = make_policy("andes")
    policy.homes[7] = 1
    ahead = snapshot(t, "tick", preempted=(request(7, instance=1, context=500, slack=30.0),))
    assert policy.decide(ahead) == [Resume(7, 1)]            # room to spare: the knapsack takes it too
    t.free_blocks[1] = 30
    policy.homes[7] = 1
    running = (request(1, instance=1, context=140, slack=20.0),)
    dry = snapshot(t, "tick", running=running, preempted=(request(7, instance=1, context=500, slack=0.2),))
    assert policy.decide(dry) == [Preempt(1, "swap", "knapsack"), Resume(7, 1)]


def test_no_more_parks_than_the_cap():
    t = table([PREFILL, DECODE], free=[1000, 0], total=400)
    running = tuple(request(i, instance=1, context=700, slack=40.0) for i in range(1, 6))
    waiting = tuple(request(10 + i, instance=0, context=700, slack=0.1) for i in range(5))
    actions = make_policy("andes", {"max_preemptions": 2}).decide(snapshot(t, "tick", running=running,
                                                                             to_hand_off=waiting))
    assert sum(isinstance(a, Preempt) for a in actions) == 2


@pytest.mark.parametrize("params, message", [({"horizon_s": 0}, "horizon_s: expected a number > 0"),
                                             ({"max_preemptions": -1}, "max_preemptions: expected an integer >= 0")])
def test_bad_andes_parameters_are_named(params, message):
    with pytest.raises(ValueError, match=message):
        make_policy("andes", params)
