"""The pure parts behind `pdlab serve` and the imports: the locally made tokenizer, the
SLO state's rows added while a run goes on, vLLM's goodput rule and its chunking."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from experiments.runs.imports import chunk_sizes
from experiments.scoring.vllmgoodput import parse_goodput, vllm_goodput
from experiments.serve.tokenizer import SPECIALS, TextCodec, make_tokenizer, words
from router.slo import SLO
from router.slostate import SLOState


def test_the_tokenizer_has_the_models_vocabulary_one_word_a_token(tmp_path):
    made = make_tokenizer(tmp_path, 1024)
    codec = TextCodec(made)
    assert codec.vocab_size == 1024 and len(set(words(5000))) == 5000
    ids = list(range(3, 60))
    text = codec.decode(ids)
    assert codec.encode(text) == ids and len(text.split()) == len(ids)
    assert codec.encode("ba, zz") == [3, 0, 0]
    assert codec.decode([1, 3, 2]) == "ba" and codec.piece(2, False) == "" and codec.piece(4, False) == " be"
    assert "assistant:" in codec.chat([{"role": "user", "content": "ba"}])
    from transformers import AutoTokenizer

    loaded = AutoTokenizer.from_pretrained(str(made))
    assert loaded.encode(text, add_special_tokens=False) == ids and loaded.eos_token == SPECIALS[2]


def test_a_tokenizer_needs_more_ids_than_its_specials(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        make_tokenizer(tmp_path, 3)
    with pytest.raises(ValueError, match="tokenizer.json"):
        TextCodec(tmp_path / "none")


@given(st.lists(st.tuples(st.floats(0, 100), st.integers(0, 1), st.lists(st.floats(0, 5), max_size=4)),
                min_size=1, max_size=40))
def test_rows_added_while_running_match_rows_known_from_the_start(rows):
    slos = [SLO(v=0.1, ttft=1.0, tbt=0.2), SLO(v=0.05, ttft=0.5, tbt=0.1)]
    arrivals = np.array([a for a, _, _ in rows])
    index = np.array([k for _, k, _ in rows])
    known, grown = SLOState(arrivals, slos, index), SLOState(np.zeros(0), slos, np.zeros(0, dtype=np.int64))
    for slot, (arrival, k, gaps) in enumerate(rows):
        assert grown.add(arrival, k) == slot
        for state in (known, grown):
            for t in np.cumsum(gaps):
                state.add_token(slot, arrival + t)
    slots, now = np.arange(len(rows)), 200.0
    assert grown.size == len(rows) and len(grown.arrival) >= len(rows)
    for name in ("idle_s", "slack_s", "missed"):
        np.testing.assert_array_equal(getattr(grown, name)(slots, now), getattr(known, name)(slots, now))


@given(st.integers(2, 400), st.integers(1, 12))
def test_vllm_stream_interval_chunks_are_rebuilt_first_token_alone(tokens, every):
    chunks = 1 + -(-(tokens - 1) // every)
    sizes = chunk_sizes(tokens, chunks)
    assert sizes.sum() == tokens and len(sizes) == chunks
    if chunks > 1 and tokens > chunks:
        assert sizes[0] == 1 and (sizes[1:-1] == sizes[1]).all() and 1 <= sizes[-1] <= sizes[1]


@given(st.integers(1, 300), st.integers(1, 300))
def test_any_chunk_count_splits_every_token(tokens, chunks):
    sizes = chunk_sizes(tokens, min(chunks, tokens))
    assert sizes.sum() == tokens and (sizes >= 1).all()


def test_vllm_goodput_syntax_and_rule():
    assert parse_goodput(["ttft:50", "tpot:6", "e2el:1000"]) == {"ttft": 50.0, "tpot": 6.0, "e2el": 1000.0}
    for bad, said in ((["ttft=50"], "KEY:MILLISECONDS"), (["tbt:5"], "KEY:MILLISECONDS"), (["ttft:x"], "number"),
                      (["ttft:-1"], ">= 0")):
        with pytest.raises(ValueError, match=said):
            parse_goodput(bad)
    import pandas as pd

    table = pd.DataFrame({"finished": [True, True, True, False], "output_tokens": [5, 1, 5, 0],
                          "ttft_s": [0.05, 0.01, 0.06, np.nan], "tpot_s": [0.006, np.nan, 0.001, np.nan],
                          "e2e_s": [1.0, 0.01, 1.0, np.nan]})
    found = vllm_goodput(table, {"ttft": 50.0, "tpot": 6.0}, 2.0)
    assert found["good_requests"] == 2 and found["request_goodput"] == 1.0


class Collected:
    def __init__(self) -> None:
        import threading

        self.ids, self.end, self.done = [], None, threading.Event()

    def tokens(self, ids):
        self.ids += ids

    def ended(self, state, reason):
        self.end = (state, reason)
        self.done.set()


def test_a_server_idle_longer_than_the_stall_timeout_still_serves(local_ray):
    """The serving loop in-process: requests submitted from another thread, an idle
    spell past the stall watchdog, an unknown tenant refused, a cancelled request."""
    import threading
    import time

    import pandas as pd

    from cluster.live.raycluster import start_workers, stop
    from cluster.live.serving import ServingRuntime
    from experiments.config.experiment import load_config
    from experiments.runs.runner import build_setup, live_options
    from experiments.workloads.workload import COLUMNS

    config = load_config("configs/serve.yaml")
    setup = build_setup(config, pd.DataFrame({c: [] for c in COLUMNS}), tenants=["default"])
    workers, options = live_options(config)
    options.stall_timeout_s = 0.5
    actors, groups = start_workers(setup.instances, [int(n) for n in setup.table.node], workers)
    runtime = ServingRuntime(setup, actors, options, vocab_size=1024)
    found = {}
    thread = threading.Thread(target=lambda: found.setdefault("record", runtime.run()))
    thread.start()
    try:
        time.sleep(1.5)
        first, stranger, cancelled = Collected(), Collected(), Collected()
        runtime.submit("default", list(range(3, 40)), 20, first)
        runtime.submit("nobody", [5, 6], 4, stranger)
        gone = runtime.submit("default", list(range(3, 40)), 5000, cancelled)
        time.sleep(0.3)
        runtime.cancel(gone)
        assert first.done.wait(30) and stranger.done.wait(5) and cancelled.done.wait(10)
    finally:
        runtime.close()
        thread.join(30)
        stop(actors, groups)
    assert first.end == ("finished", "") and len(first.ids) == 20 and all(3 <= i < 1024 for i in first.ids)
    assert stranger.end[0] == "aborted" and "tenant 'nobody'" in stranger.end[1]
    assert cancelled.end == ("aborted", "client disconnected") and 0 < len(cancelled.ids) < 5000
    requests = found["record"].requests
    assert requests["status"].tolist() == ["finished", "aborted"]
