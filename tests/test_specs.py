"""Model and hardware YAML: the built-in figures, the loaders and their errors."""
from __future__ import annotations

import pytest
import yaml

from cluster.hardware.specs import (
    CONFIGS,
    LINK_KINDS,
    HardwareSpec,
    available_hardware,
    available_models,
    load_hardware,
    load_model,
)
from cluster.hardware.yamlfile import ConfigError

KIB = 1024
REQUIRED_MODELS = {"Llama-3.1-8B", "Qwen2-7B", "Qwen2.5-14B", "Qwen2.5-7B", "Llama-2-7B", "Llama-2-13B", "Llama-2-70B"}


def test_kv_bytes_per_token_of_known_models():
    assert load_model("Llama-2-7B").kv_bytes_per_token == 512 * KIB
    assert load_model("Llama-3.1-8B").kv_bytes_per_token == 128 * KIB
    assert load_model("Llama-2-13B").kv_bytes_per_token == 800 * KIB
    assert load_model("Llama-2-70B").kv_bytes_per_token == 320 * KIB
    assert load_model("Qwen2.5-7B").kv_bytes_per_token == 56 * KIB


def test_weight_bytes_are_two_per_parameter():
    model = load_model("Llama-2-7B")
    assert model.bytes_per_element == 2 and model.weight_bytes == 2 * 6_738_415_616


def _llama_like_params(m) -> int:
    embeddings = 2 * m.vocab_size * m.hidden_size
    attention = 2 * m.hidden_size * m.heads * m.head_dim + 2 * m.hidden_size * m.kv_heads * m.head_dim
    mlp = 3 * m.hidden_size * m.intermediate_size
    return embeddings + m.layers * (attention + mlp + 2 * m.hidden_size) + m.hidden_size


@pytest.mark.parametrize("name", sorted(REQUIRED_MODELS))
def test_parameter_count_agrees_with_the_architecture(name):
    model = load_model(name)
    assert model.params == pytest.approx(_llama_like_params(model), rel=0.002)   # Qwen adds QKV biases only


def test_every_built_in_model_and_hardware_loads_with_sources():
    assert REQUIRED_MODELS <= set(available_models())
    assert {"A100-40GB", "A100-80GB", "H100"} <= set(available_hardware())
    for name in available_models():
        model = load_model(name)
        assert model.name == name and model.source and model.dtype in ("bf16", "fp16", "fp32")
    for name in available_hardware():
        hardware = load_hardware(name)
        assert hardware.name == name
        assert set(hardware.links) == set(LINK_KINDS)
        assert all(link.source for link in hardware.links.values())
        assert all(hardware.sources[key] for key in ("memory_gib", "hbm_bandwidth", "bf16_flops"))


def test_datasheet_figures():
    a100 = load_hardware("A100-80GB")
    assert (a100.memory_gib, a100.hbm_bandwidth, a100.bf16_flops) == (80, 2.039e12, 312e12)
    assert load_hardware("A100-40GB").hbm_bandwidth == 1.555e12
    h100 = load_hardware("H100")
    assert (h100.bf16_flops, h100.hbm_bandwidth, h100.link("nvlink").bandwidth) == (989e12, 3.35e12, 450e9)
    assert a100.link("network").bandwidth == 12.5e9


def test_link_transfer_time_matches_the_readme_example():
    a100 = load_hardware("A100-80GB")
    one_k_prompt = 1024 * load_model("Llama-2-7B").kv_bytes_per_token
    assert a100.link("nvlink").transfer_time(one_k_prompt) == pytest.approx(1.8e-3, rel=0.05)
    assert a100.link("network").transfer_time(one_k_prompt) == pytest.approx(42e-3, rel=0.05)
    with pytest.raises(ConfigError, match="no link 'ethernet'"):
        a100.link("ethernet")


def test_names_are_case_insensitive_and_paths_work(tmp_path):
    assert load_model("llama-2-7b").name == "Llama-2-7B"
    assert load_hardware(CONFIGS / "hardware" / "H100.yaml").name == "H100"
    assert isinstance(hash(load_hardware("H100")), int)
    assert isinstance(load_hardware("h100"), HardwareSpec)


def test_unknown_name_lists_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown model 'GPT-5'; available: .*Llama-2-7B"):
        load_model("GPT-5")
    with pytest.raises(ConfigError, match=r"unknown hardware 'TPU'; available: A100-40GB, A100-80GB, CPU, H100"):
        load_hardware("TPU")


def _write_model(tmp_path, **changes):
    data = yaml.safe_load((CONFIGS / "models" / "Llama-2-7B.yaml").read_text())
    data.update(changes)
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp_path / "model.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"layers": -1}, r"layers: Input should be greater than 0, got -1"),
    ({"layers": "many"}, r"layers: .*valid integer.*'many'"),
    ({"dtype": "int4"}, r"dtype: Input should be 'bf16', 'fp16' or 'fp32'"),
    ({"kv_heads": 5}, r"kv_heads: expected a divisor of heads \(32\), got 5"),
    ({"head_dim": None}, r"head_dim: missing"),
    ({"colour": "red"}, r"colour: unknown key"),
])
def test_bad_model_file_names_file_and_key(tmp_path, changes, message):
    path = _write_model(tmp_path, **changes)
    with pytest.raises(ConfigError, match=message) as caught:
        load_model(path)
    assert str(path) in str(caught.value)


def test_bad_hardware_files(tmp_path):
    data = yaml.safe_load((CONFIGS / "hardware" / "A100-80GB.yaml").read_text())
    del data["links"]["pcie"]
    path = tmp_path / "hw.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"links: expected links .* missing \['pcie'\]"):
        load_hardware(path)
    data = yaml.safe_load((CONFIGS / "hardware" / "A100-80GB.yaml").read_text())
    del data["sources"]["bf16_flops"]
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"expected a source for every figure, missing \['bf16_flops'\]"):
        load_hardware(path)
    data["links"]["nvlink"]["bandwidth"] = 0
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"links.nvlink.bandwidth: Input should be greater than 0"):
        load_hardware(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_model(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("layers: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_model(broken)
    broken.write_text("- just a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_model(broken)
