"""The iteration-time model: its arithmetic, the published fits, the roofline, KV capacity."""
from __future__ import annotations

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from cluster.hardware.perfmodel import (
    PERF_DIR,
    DoesNotFit,
    IterationModel,
    Roofline,
    iteration_model,
    kv_capacity_tokens,
    load_iteration_model,
    published_fits,
    roofline_model,
    write_iteration_model,
)
from cluster.hardware.specs import available_hardware, available_models, load_hardware, load_model
from cluster.hardware.yamlfile import ConfigError

MODELS = {name: load_model(name) for name in available_models()}
HARDWARE = {name: load_hardware(name) for name in available_hardware()}
LLMS = sorted(name for name, spec in MODELS.items() if spec.params >= 1e9)
GPUS = sorted(name for name, spec in HARDWARE.items() if spec.memory_gib >= 16)
A100 = HARDWARE["A100-80GB"]

toy = IterationModel(prefill=(0.01, 1e-4, 1e-8), decode=(0.02, 3e-4, 2e-7), source="toy")
counts = st.integers(min_value=0, max_value=100_000)


def test_formulas():
    assert toy.prefill_time(1000, 1000**2) == pytest.approx(0.01 + 0.1 + 0.01)
    assert toy.decode_time(10, 5000) == pytest.approx(0.02 + 3e-3 + 1e-3)
    mixed = toy.step_time(100, 100 * 600, 10, 5000)
    assert mixed == pytest.approx(0.02 + 100 * 1e-4 + 60_000 * 1e-8 + 3e-3 + 1e-3)
    assert toy.step_time(0, 0, 0, 0) == 0.0


@given(counts, counts, counts, counts)
def test_step_time_equals_one_side_when_the_other_is_empty(tokens, past, batch, context):
    sq = float(tokens * (tokens + past))
    if tokens:
        assert toy.step_time(tokens, sq, 0, 0) == toy.prefill_time(tokens, sq)
    if batch:
        assert toy.step_time(0, 0.0, batch, context) == toy.decode_time(batch, context)
    if tokens and batch:
        mixed = toy.step_time(tokens, sq, batch, context)
        assert mixed <= toy.prefill_time(tokens, sq) + toy.decode_time(batch, context)
        assert mixed >= max(toy.prefill_time(tokens, sq), toy.decode_time(batch, context))


@given(counts, counts)
def test_min_step_is_a_floor_for_every_non_empty_step(tokens, batch):
    floored = IterationModel(toy.prefill, toy.decode, "toy", min_step=0.05)
    assert floored.step_time(tokens, tokens**2, batch, batch * 100) >= (0.05 if tokens or batch else 0.0)
    assert floored.prefill_time(tokens, tokens**2) == max(0.05, toy.prefill_time(tokens, tokens**2))


def test_coefficients_are_checked():
    with pytest.raises(ValueError, match="prefill: expected three finite numbers >= 0"):
        IterationModel(prefill=(1.0, -1.0, 0.0), decode=(0, 0, 0))
    with pytest.raises(ValueError, match="decode: expected three"):
        IterationModel(prefill=(0, 0, 0), decode=(1.0, 2.0))
    assert IterationModel((1, 2, 3), (0, 0, 0)).prefill == (1.0, 2.0, 3.0)


@pytest.mark.parametrize("model, hardware, tp, source", [
    ("Llama-2-7B", "A100-80GB", 1, "Vidur"),
    ("Llama-2-70B", "A100-80GB", 2, "Vidur"),
    ("Llama-3.1-8B", "A100-80GB", 1, "BLIS"),
    ("Qwen2.5-7B", "A100-80GB", 1, "BLIS"),
    ("Qwen2.5-7B", "H100", 1, "BLIS"),
    ("OPT-13B", "A100-80GB", 1, "DistServe"),
])
def test_published_fits_are_picked(model, hardware, tp, source):
    chosen = iteration_model(MODELS[model], HARDWARE[hardware], tp)
    assert source in chosen.source and "shared/data/perf/README.md" in chosen.source
    assert "roofline" in iteration_model(MODELS[model], HARDWARE[hardware], tp * 4).source


def test_published_units_become_seconds():
    vidur = iteration_model(MODELS["Llama-2-7B"], A100, 1)
    assert vidur.decode == pytest.approx((11.9e-3, 0.042e-3, 3.18e-7))
    assert vidur.decode_time(1, 0) == pytest.approx(11.942e-3)
    blis = iteration_model(MODELS["Qwen2.5-7B"], HARDWARE["H100"], 1)
    assert blis.prefill == pytest.approx((7052e-6, 19.5e-6, 0.0)) and blis.decode == pytest.approx((7052e-6, 25.4e-6, 0))
    assert blis.step_time(100, 100**2, 10, 9999) == pytest.approx((7052 + 1950 + 254) * 1e-6)


@pytest.mark.parametrize("tp", [1, 2, 4, 8])
@pytest.mark.parametrize("hardware", GPUS)
@pytest.mark.parametrize("model", LLMS)
def test_every_llm_gpu_tp_builds_or_says_it_does_not_fit(model, hardware, tp):
    spec, hw = MODELS[model], HARDWARE[hardware]
    if spec.weight_bytes >= tp * hw.memory_bytes * 0.9:
        with pytest.raises(DoesNotFit, match=rf"{model} weights \(.* GiB\) do not fit on {tp} x {hardware}"):
            kv_capacity_tokens(spec, hw, tp)
        return
    built = iteration_model(spec, hw, tp)
    decode_one = built.decode_time(1, 1000)
    assert 2e-3 < decode_one < 0.2
    assert decode_one < built.decode_time(64, 64_000) < 1.0
    assert 5e-3 < built.prefill_time(1024, 1024**2) < 2.0
    assert built.prefill_time(1024, 1024**2) < built.prefill_time(4096, 4096**2)
    assert kv_capacity_tokens(spec, hw, tp) > 1000


def test_seventy_b_does_not_fit_on_one_small_gpu():
    with pytest.raises(DoesNotFit, match=r"Llama-2-70B weights \(128.5 GiB\) do not fit on 1 x A100-40GB"):
        iteration_model(MODELS["Llama-2-70B"], HARDWARE["A100-40GB"], 1)
    assert "roofline" in iteration_model(MODELS["Llama-2-70B"], HARDWARE["A100-40GB"], 4).source


@pytest.mark.parametrize("model, hardware, tp", [
    ("Llama-2-7B", "A100-80GB", 1), ("Llama-2-70B", "A100-80GB", 2), ("OPT-13B", "A100-80GB", 1),
    ("Qwen2.5-7B", "A100-80GB", 1), ("Qwen2.5-7B", "H100", 1), ("Llama-3.1-8B", "A100-80GB", 1),
])
def test_roofline_lands_near_the_published_fits(model, hardware, tp):
    fit = iteration_model(MODELS[model], HARDWARE[hardware], tp)
    roof = roofline_model(MODELS[model], HARDWARE[hardware], tp)
    assert roof.decode_time(1, 1000) == pytest.approx(fit.decode_time(1, 1000), rel=0.3)
    assert roof.decode_time(64, 64_000) == pytest.approx(fit.decode_time(64, 64_000), rel=0.35)
    assert roof.prefill_time(1024, 1024**2) == pytest.approx(fit.prefill_time(1024, 1024**2), rel=0.45)


def test_roofline_responds_to_hardware_tp_and_assumptions():
    model = MODELS["Llama-2-13B"]
    one, two = roofline_model(model, A100, 1), roofline_model(model, A100, 2)
    assert two.decode_time(1, 1000) < one.decode_time(1, 1000)
    assert two.prefill_time(2048, 2048**2) < one.prefill_time(2048, 2048**2)
    assert roofline_model(model, HARDWARE["H100"], 1).decode_time(8, 8000) < one.decode_time(8, 8000)
    assert roofline_model(model, HARDWARE["A100-40GB"], 1).decode_time(8, 8000) > one.decode_time(8, 8000)
    slower = roofline_model(model, A100, 1, Roofline(prefill_mfu=0.3))
    assert slower.prefill[1] == pytest.approx(2 * one.prefill[1])
    assert "prefill MFU 0.3" in slower.source and "roofline" in one.source
    assert one.min_step == pytest.approx(one.decode[0])


def test_kv_capacity():
    free = 80 * 2**30 * 0.9 - MODELS["Llama-2-7B"].weight_bytes
    assert kv_capacity_tokens(MODELS["Llama-2-7B"], A100, 1) == int(free // (512 * 1024))
    assert kv_capacity_tokens(MODELS["Llama-2-7B"], A100, 1, 0.5) < kv_capacity_tokens(MODELS["Llama-2-7B"], A100, 1)
    qwen = MODELS["Qwen2-7B"]   # 4 KV heads: at tp 8 each head is held twice
    free8 = 8 * 80 * 2**30 * 0.9 - qwen.weight_bytes
    assert kv_capacity_tokens(qwen, A100, 8) == int(free8 // (2 * qwen.kv_bytes_per_token))
    with pytest.raises(ValueError, match="memory_utilization"):
        kv_capacity_tokens(qwen, A100, 1, 1.5)
    with pytest.raises(ValueError, match="tp: expected a whole number"):
        kv_capacity_tokens(qwen, A100, 0)


def test_perf_yaml_round_trip_and_lookup(tmp_path):
    path = write_iteration_model(tmp_path / "fit.yaml", toy, model_name="Llama-2-7B", hardware="H100", tp=2)
    assert load_iteration_model(path) == toy
    chosen = iteration_model(MODELS["Llama-2-7B"], HARDWARE["H100"], 2, perf_dir=tmp_path)
    assert chosen == toy
    write_iteration_model(tmp_path / "unlabelled.yaml", toy)
    assert list(published_fits(tmp_path)) == [("llama-2-7b", "h100", 2)]
    write_iteration_model(tmp_path / "again.yaml", toy, model_name="llama-2-7b", hardware="h100", tp=2)
    with pytest.raises(ConfigError, match="(?i)a second fit for llama-2-7b on 2 x h100 .the first is"):
        published_fits(tmp_path)


def test_bad_perf_yaml(tmp_path):
    data = yaml.safe_load((PERF_DIR / "vidur-llama-2-7b-a100-tp1.yaml").read_text())
    data["unit"] = "minutes"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"bad.yaml: unit: Input should be 's', 'ms' or 'us'"):
        load_iteration_model(path)
    data["unit"], data["decode"] = "ms", [1, 2]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"decode.2: missing"):
        load_iteration_model(path)


def test_every_built_in_fit_names_its_source():
    for path in PERF_DIR.glob("*.yaml"):
        fit = load_iteration_model(path)
        assert "shared/data/perf/README.md" in fit.source or fit.source.startswith("calibrated from"), path
