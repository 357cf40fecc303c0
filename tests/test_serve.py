"""`pdlab serve` driven by real clients: the `openai` package (completions, chat,
streamed and whole), `vllm bench serve` (through the project's `pdlab vllm` shim), and
a client that leaves mid-stream; then the server is stopped with SIGINT and its run
folder is compared with what the clients measured."""
from __future__ import annotations

import json
import time

import httpx
import numpy as np
import pytest

from experiments.runs.imports import read_any
from experiments.scoring.compare import added_latency
from experiments.serve import drive

MODEL = "Llama-3.1-8B"
BENCH_REQUESTS = 24
LOAD_REQUESTS, LOAD_RATE = 100, 10.0


def _instances(url: str) -> list[dict]:
    return httpx.get(f"{url}/pdlab/instances", timeout=5.0).json()["instances"]


def _leave_mid_stream(url: str) -> dict:
    """Read three tokens of a long stream and hang up; then watch the decode KV come back."""
    body = {"model": MODEL, "prompt": "ba be bi " * 50, "max_tokens": 2000, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30.0) as response:
        seen = 0
        for line in response.iter_lines():
            if line.startswith("data: {"):
                seen += 1
            if seen == 3:
                during = _instances(url)
                break
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline:
        after = _instances(url)
        if all(i["free_blocks"] == i["total_blocks"] for i in after):
            break
        time.sleep(0.1)
    return {"during": during, "after": after}


def _openai_clients(url: str) -> dict:
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)
    whole = client.completions.create(model=MODEL, prompt="ba be bi bo bu", max_tokens=12)
    streamed = list(client.completions.create(model=MODEL, prompt="da de di", max_tokens=9, stream=True,
                                              stream_options={"include_usage": True}))
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "ga ge gi"}],
                                          max_tokens=7)
    chat_stream = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "ha"}],
                                                      max_tokens=5, stream=True))
    parts = client.chat.completions.create(model=MODEL, max_tokens=3, messages=[
        {"role": "user", "content": [{"type": "text", "text": "ga "}, {"type": "text", "text": "ge"}]}])
    image = httpx.post(f"{url}/v1/chat/completions", json={"model": MODEL, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]})
    models = client.models.list()
    bad = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": -3})
    return {"whole": whole, "streamed": streamed, "chat": chat, "chat_stream": chat_stream, "models": models,
            "bad": bad, "parts": parts, "image": image}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One server session: every client above against it, then SIGINT."""
    folder = tmp_path_factory.mktemp("serve")
    server = drive.start("configs/serve.yaml", folder / "run")
    try:
        found = {"started_s": server.started_s, "openai": _openai_clients(server.url),
                 "left": _leave_mid_stream(server.url),
                 "bench": drive.vllm_bench(server, folder / "bench.json", BENCH_REQUESTS, 8.0,
                                           extra=("--goodput", "ttft:60", "tpot:25")),
                 "load": drive.vllm_bench(server, folder / "load.json", LOAD_REQUESTS, LOAD_RATE, input_len=128,
                                          output_len=32, prefix="load-")}
    finally:
        code, stdout, stderr = server.stop()
    found.update(code=code, stdout=stdout, stderr=stderr, run=folder / "run", bench_file=folder / "bench.json",
                 load_file=folder / "load.json")
    return found


def test_the_server_starts_in_seconds_and_stops_cleanly_on_sigint(served):
    assert served["started_s"] < 60
    assert served["code"] == 0, served["stderr"][-2000:]
    assert "Traceback" not in served["stderr"]
    assert "wrote run" in served["stdout"]


def test_openai_client_completions_and_chat(served):
    found = served["openai"]
    whole = found["whole"]
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.completion_tokens == 12 and whole.usage.prompt_tokens == 5
    assert len(whole.choices[0].text.split()) == 12
    texts = [chunk.choices[0].text for chunk in found["streamed"] if chunk.choices]
    assert len([t for t in texts if t]) == 9
    assert found["streamed"][-1].usage.completion_tokens == 9
    assert found["chat"].choices[0].message.role == "assistant"
    assert len(found["chat"].choices[0].message.content.split()) == 7
    pieces = [c.choices[0].delta.content for c in found["chat_stream"] if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 5
    assert [m.id for m in found["models"].data] == [MODEL]
    bad = found["bad"]
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "max_tokens"
    assert found["parts"].usage.prompt_tokens == found["chat"].usage.prompt_tokens - 1
    image = found["image"]
    assert image.status_code == 400 and image.json()["error"]["param"] == "messages.0.content"
    assert "image_url" in image.json()["error"]["message"]


def test_a_client_that_leaves_mid_stream_frees_its_kv(served):
    during, after = served["left"]["during"], served["left"]["after"]
    assert any(i["free_blocks"] < i["total_blocks"] for i in during)
    assert all(i["free_blocks"] == i["total_blocks"] for i in after)
    run = read_any(served["run"])
    aborted = run.requests[run.requests["status"] == "aborted"]
    assert len(aborted) == 1 and aborted["prompt_tokens"].iloc[0] == 150
    reasons = run.events[(run.events["kind"] == "abort")]["detail"].tolist()
    assert reasons == ["client disconnected"]


def test_vllm_bench_serve_completes_against_the_server(served):
    bench = served["bench"]
    assert bench.returncode == 0, bench.stderr[-3000:]
    result = json.loads(served["bench_file"].read_text())
    assert result["completed"] == BENCH_REQUESTS and result["failed"] == 0
    assert result["output_lens"] == [24] * BENCH_REQUESTS


def test_client_and_server_agree_within_the_loopback_latency(served):
    server = read_any(served["run"])
    client = read_any(served["bench_file"])
    ids = server.requests["client_request_id"]
    matched = server.requests[ids.str.startswith("bench-")].copy()
    assert len(matched) == BENCH_REQUESTS
    matched["index"] = matched["client_request_id"].str.removeprefix("bench-").astype(int)
    first = server.tokens[server.tokens["index"] == 1].set_index("request_id")["time_s"]
    last = server.tokens.groupby("request_id")["time_s"].max()
    server_ttft = (first[matched["request_id"]].to_numpy() - matched["arrival_s"].to_numpy())
    server_e2e = (last[matched["request_id"]].to_numpy() - matched["arrival_s"].to_numpy())
    result = json.loads(served["bench_file"].read_text())
    order = matched["index"].to_numpy()
    client_ttft = np.asarray(result["ttfts"])[order]
    client_e2e = client_ttft + np.array([sum(gaps) for gaps in result["itls"]])[order]
    added_ttft, added_e2e = client_ttft - server_ttft, client_e2e - server_e2e
    assert np.all(added_ttft > -0.005), added_ttft
    assert np.percentile(added_ttft, 50) < 0.05 and np.percentile(added_e2e, 50) < 0.05, (added_ttft, added_e2e)
    assert len(client.requests) == BENCH_REQUESTS


def test_vllm_goodput_syntax_and_duration_give_vllms_own_figures(served, pdlab_json):
    result = json.loads(served["bench_file"].read_text())
    ours = pdlab_json(served["bench_file"], "--goodput", "ttft:60", "tpot:25", "--interval", "bench")
    assert ours["vllm_goodput"]["request_goodput"] == pytest.approx(result["request_goodput"], rel=1e-12)
    assert ours["request_throughput_per_s"] == pytest.approx(result["request_throughput"], rel=1e-12)
    assert ours["parameters"]["ttft"] == 0.06 and ours["parameters"]["tpot"] == 0.025
    assert 0 < ours["vllm_goodput"]["good_requests"] < BENCH_REQUESTS or result["request_goodput"] > 0


def test_a_load_test_on_loopback_holds_the_rate_and_adds_little_latency(served):
    """A bounded load (100 requests at 10/s, 128-token prompts): every request completes,
    the client's request rate keeps up with what it offered, and the front door adds
    little to the TTFT the workers gave (client minus server, per request). At 25/s the
    client, the server and the workers keep two cores 90% busy, and a slower machine's
    backlog put a second on every request (CI); 10/s keeps them half busy."""
    load = served["load"]
    assert load.returncode == 0, load.stderr[-3000:]
    result = json.loads(served["load_file"].read_text())
    assert result["completed"] == LOAD_REQUESTS and result["failed"] == 0
    assert result["request_throughput"] > 0.75 * LOAD_RATE
    added = added_latency(read_any(served["load_file"]), read_any(served["run"]))
    assert added["matched"] == LOAD_REQUESTS
    assert added["ttft_s"]["p50"] < 0.05 and added["ttft_s"]["p99"] < 0.25, added


def test_metrics_compare_prints_both_sides(served, pdlab):
    code, out, err = pdlab("metrics", served["bench_file"], "--compare", served["run"])
    assert code == 0, err
    assert "TTFT p50" in out and "client" in out and "server" in out
    assert "matched 24 requests" in out


REAL_ENGINES = {"hf": ["--set", "cluster.kv_blocks=256", "--set", "cluster.scheduler.block_size=16"],
                "vllm": ["--set", "cluster.kv_blocks=96", "--set", "cluster.scheduler.block_size=32",
                         "--set", "ray.worker_cpus=0.1", "--set", "ray.start_timeout_s=200"]}


@pytest.mark.parametrize("engine", sorted(REAL_ENGINES))
def test_real_workers_serve_the_models_own_greedy_tokens(tmp_path, tiny_model, engine):
    """Real engines behind the front door (transformers over pdlab's paged KV, vLLM's
    CPU build with NIXL hand-offs): a prompt of token ids comes back as the text of
    transformers' own greedy continuation, written by the served tokenizer."""
    import torch
    from openai import OpenAI
    from transformers import LlamaForCausalLM

    from experiments.serve.tokenizer import TextCodec

    server = drive.start("configs/serve.yaml", tmp_path / "run", "--set", "cluster.model=tiny-llama",
                         "--set", f"ray.engine={engine}", "--set", f"ray.model_path={tiny_model}",
                         *REAL_ENGINES[engine], "--model", "tiny", timeout_s=300)
    prompt = [5, 17, 300, 42, 999, 7, 64, 128]
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0)
        whole = client.completions.create(model="tiny", prompt=prompt, max_tokens=12)
        streamed = "".join(c.choices[0].text for c in client.completions.create(
            model="tiny", prompt=prompt, max_tokens=12, stream=True) if c.choices)
    finally:
        code, _, stderr = server.stop()
    assert code == 0, stderr[-2000:]
    model = LlamaForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                             do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
    expected = TextCodec(tmp_path / "run" / "tokenizer").decode(out)
    assert whole.choices[0].text == expected
    assert streamed.split() == expected.split() and len(expected.split()) == len([t for t in out if t >= 3])
    tokens = read_any(tmp_path / "run").tokens
    assert tokens.groupby("request_id")["token_id"].apply(list).tolist() == [out, out]
