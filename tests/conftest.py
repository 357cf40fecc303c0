"""Shared helpers: build small run folders by hand, and call the `pdlab` command."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from experiments.cli.main import main


def make_run(folder, streams, *, end_s=None, statuses=None, arrivals=None, fmt="csv"):
    """`streams`: one list of token times (seconds since the run's start) per request."""
    folder.mkdir(parents=True, exist_ok=True)
    arrivals = arrivals or [0.0] * len(streams)
    statuses = statuses or ["finished"] * len(streams)
    requests = pd.DataFrame({"request_id": range(len(streams)), "arrival_s": arrivals,
                             "prompt_tokens": [10] * len(streams), "output_tokens": [len(s) for s in streams],
                             "status": statuses})
    rows = [(r, i + 1, t) for r, stream in enumerate(streams) for i, t in enumerate(stream)]
    tokens = pd.DataFrame(rows, columns=["request_id", "index", "time_s"])
    if fmt == "csv":
        requests.to_csv(folder / "requests.csv", index=False)
        tokens.to_csv(folder / "tokens.csv", index=False)
    else:
        requests.to_parquet(folder / "requests.parquet", index=False)
        tokens.to_parquet(folder / "tokens.parquet", index=False)
    if end_s is not None:
        (folder / "run.json").write_text(json.dumps({"end_s": end_s}))
    return folder


@pytest.fixture
def pdlab(capsys):
    """Run `pdlab ARGS...`; return (exit code, stdout, stderr)."""
    def run(*args):
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture
def pdlab_json(pdlab):
    def run(*args):
        code, out, err = pdlab("metrics", *args, "--json")
        assert code == 0, err
        return json.loads(out)
    return run


@pytest.fixture(scope="session")
def local_ray():
    """One in-process Ray for every test that needs actors (2 CPUs, as CI has)."""
    import ray

    from cluster.live.raycluster import LOCAL_RAY

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             _system_config=LOCAL_RAY)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A Llama-shaped model with seeded random weights, made once per session."""
    from cluster.engines.modelfiles import make_model

    return str(make_model(tmp_path_factory.mktemp("models") / "tiny-llama"))


@pytest.fixture(scope="session")
def greedy(tiny_model):
    """Reference tokens: transformers' own greedy `generate` of a request's prompt ids."""
    import torch
    from transformers import LlamaForCausalLM

    from cluster.engines.prompts import prompt_ids

    model = LlamaForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    cache: dict[tuple[int, int, int], list[int]] = {}

    def tokens(request_id: int, prompt: int, n: int, seed: int = 0) -> list[int]:
        if (request_id, prompt, seed) not in cache or len(cache[request_id, prompt, seed]) < n:
            ids = torch.tensor([prompt_ids(request_id, prompt, model.config.vocab_size, seed)])
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                                     do_sample=False, pad_token_id=0)
            cache[request_id, prompt, seed] = out[0, prompt:].tolist()
        return cache[request_id, prompt, seed][:n]
    return tokens
