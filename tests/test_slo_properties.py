"""The SLO math on random timelines: the idle-latency identity, the online and the
vectorised forms agreeing, chunks, unfinished requests and edge cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.slo import SCHEMES, SLO, benefit
from router.timelines import Timelines, idle_latency, meets, slack
from router.tracker import RequestTracker

gaps = st.lists(st.floats(0.0, 3.0, allow_nan=False), min_size=0, max_size=40)
slos = st.builds(SLO, ttft=st.floats(0.0, 3.0), tbt=st.floats(0.01, 1.0), tpot=st.floats(0.01, 1.0),
                 e2e=st.floats(0.0, 60.0), v=st.floats(0.01, 0.5), l=st.floats(0.0, 3.0),
                 alpha=st.floats(0.0, 10.0), f=st.sampled_from(["tokens", "seconds", "fraction", "step"]),
                 l_max=st.floats(0.1, 20.0))


def display_recursion(times, v):
    u = 0.0
    for t in times:
        u = max(t, u + v)
    return u


@given(gaps, st.floats(0.01, 0.5))
def test_idle_latency_is_the_display_time_lag(gaps, v):
    times = list(np.cumsum(gaps))
    tl = Timelines.from_lists([times])
    idle = idle_latency(tl, v, np.array([True]), np.array([0.0]))[0]
    assert idle == pytest.approx(display_recursion(times, v) - v * len(times), abs=1e-9)


def chunked(times, sizes):
    """Group consecutive tokens into chunks that share the chunk's last time."""
    out, i = [], 0
    for size in sizes:
        if i >= len(times):
            break
        chunk = times[i:i + size]
        out.append((chunk[-1], len(chunk)))
        i += size
    if i < len(times):
        out.append((times[-1], len(times) - i))
    return out


@settings(max_examples=300)
@given(st.lists(st.tuples(gaps, st.lists(st.integers(1, 4), max_size=10), st.booleans(),
                          st.floats(0.0, 100.0)), min_size=1, max_size=8), slos, st.floats(0.0, 200.0))
def test_online_and_vectorised_forms_agree(requests, slo, end):
    timelines, trackers, finished, waited = [], [], [], []
    for gap_list, sizes, done, arrival in requests:
        chunks = chunked(list(arrival + np.cumsum(gap_list)), sizes)
        stream = [t for t, count in chunks for _ in range(count)]
        tracker = RequestTracker(arrival, slo)
        for t, count in chunks:
            tracker.add_tokens(t, count)
        timelines.append([t - arrival for t in stream])
        trackers.append(tracker)
        finished.append(done)
        waited.append(max(end, stream[-1] if stream else arrival) - arrival)
    tl = Timelines.from_lists(timelines)
    finished, waited = np.array(finished), np.array(waited)
    idle = idle_latency(tl, slo.v, finished, waited)
    status = meets(tl, slo, finished)
    gains = benefit(tl.counts, idle, finished, slo)
    for r, tracker in enumerate(trackers):
        now = tracker.arrival + waited[r]
        assert tracker.idle_latency(now, finished[r]) == pytest.approx(idle[r], abs=1e-9)
        assert tracker.benefit(now, finished[r]) == pytest.approx(gains[r], rel=1e-9, abs=1e-6)
        for scheme in SCHEMES:
            assert tracker.meets(scheme, finished[r]) == bool(status[scheme][r]), scheme
        assert tracker.display - slo.v * tracker.n == pytest.approx(tracker.lateness, abs=1e-9)


@given(st.lists(gaps, min_size=1, max_size=10), st.floats(0.01, 0.5), st.floats(0.0, 3.0))
def test_step_with_alpha_one_is_classic_token_goodput(streams, v, tolerated):
    slo = SLO(v=v, l=tolerated, alpha=1.0, f="step")
    tl = Timelines.from_lists([list(np.cumsum(g)) for g in streams])
    finished = np.array([i % 3 != 0 for i in range(len(streams))])
    idle = idle_latency(tl, v, finished, np.full(len(streams), 50.0))
    met = meets(tl, slo, finished)["smooth"]
    assert benefit(tl.counts, idle, finished, slo).sum() == pytest.approx((tl.counts * met).sum())


def test_unfinished_request_keeps_waiting():
    slo = SLO(v=0.1)
    tracker = RequestTracker(10.0, slo)
    tracker.add_tokens(10.2, 2)
    assert tracker.idle_latency() == pytest.approx(0.1)          # token 1 at 0.2 vs 0.1
    assert tracker.idle_latency(now=15.0, finished=False) == pytest.approx(5.0 - 0.3)
    assert not tracker.meets("e2e", finished=False)
    rejected = RequestTracker(0.0, slo)
    assert rejected.idle_latency(now=4.0, finished=False) == pytest.approx(3.9)
    assert rejected.benefit(now=4.0, finished=False) == pytest.approx(-5 * 39)


def test_slack_is_what_is_left_to_read():
    tracker = RequestTracker(0.0, SLO(v=0.1))
    tracker.add_tokens(1.0, 5)                                   # display: 1.0, 1.1, ..., 1.4
    assert tracker.slack(1.2) == pytest.approx(0.3)              # reads until 1.5
    assert tracker.slack(2.0) == 0.0


def test_edge_cases_one_and_zero_tokens():
    slo = SLO(ttft=1.0, tbt=0.1, tpot=0.1, e2e=5.0, v=0.1, l=1.0)
    tl = Timelines.from_lists([[0.5], [], [2.0]])
    finished = np.array([True, True, True])
    status = meets(tl, slo, finished)
    assert [bool(status[s][0]) for s in SCHEMES] == [True, True, True, True]
    assert [bool(status[s][1]) for s in SCHEMES] == [True, True, True, True]
    assert [bool(status[s][2]) for s in SCHEMES] == [False, False, True, False]
    assert math.isnan(tl.max_gap()[0]) and math.isnan(tl.max_gap()[1])
    assert list(tl.gaps()) == []


@pytest.mark.parametrize("field,value", [("v", 0.0), ("tbt", -1.0), ("alpha", float("nan")), ("f", "cubic"), ("l", "x")])
def test_bad_slo_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"slo.{field}"):
        SLO(**{field: value})


@given(gaps, st.floats(0.01, 0.5), st.floats(0.0, 20.0))
def test_online_and_vectorised_slack_agree(gaps, v, at):
    times = list(np.cumsum(gaps))
    tracker = RequestTracker(5.0, SLO(v=v))
    for t in times:
        if t <= at:
            tracker.add_tokens(5.0 + t)
    tl = Timelines.from_lists([times])
    assert slack(tl, v, np.array([0]), np.array([at]))[0] == pytest.approx(tracker.slack(5.0 + at), abs=1e-9)


@given(st.lists(gaps, min_size=1, max_size=5), st.floats(0.01, 0.5))
def test_adding_tokens_in_batches_equals_one_by_one(batches, v):
    slo = SLO(v=v)
    one, many = RequestTracker(1.0, slo), RequestTracker(1.0, slo)
    clock = 1.0
    for batch in batches:
        times = clock + np.cumsum(batch)
        for t in times:
            one.add_tokens(float(t))
        many.add_times(times)
        clock = float(times[-1]) if len(times) else clock
    for field in ("n", "lateness", "display", "max_gap"):
        assert getattr(many, field) == pytest.approx(getattr(one, field), abs=1e-9), field
    for scheme in SCHEMES:
        assert many.meets(scheme) == one.meets(scheme)
