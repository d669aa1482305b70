"""Agent settings: one model, from a TOML file (section ``[agent]``) plus ``BAI_AGENT_*`` env vars.

Precedence: explicit overrides > environment > TOML file > defaults. Example::

    [agent]
    agent_id = "node-1"
    port = 6011
    manager_endpoints = "http://10.0.0.1:8091,http://10.0.0.2:8091"
    cluster_token = "..."
    runtime = "process"
    slot_cpu = "2"          # offer 2 cores whatever the host has
    slot_cuda_device = "2"  # a mock accelerator: 2 whole "GPUs" for scheduling tests
"""

from __future__ import annotations

import socket
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from bai.common.settings import TomlSettings

#: settings field -> resource slot it overrides
SLOT_FIELDS = {
    "slot_cpu": "cpu",
    "slot_mem": "mem",
    "slot_cuda_device": "cuda.device",
    "slot_cuda_shares": "cuda.shares",
}


class AgentSettings(TomlSettings):
    toml_section = "agent"

    model_config = SettingsConfigDict(env_prefix="BAI_AGENT_", extra="ignore")

    agent_id: str = Field(
        default_factory=lambda: f"agent-{socket.gethostname()}",
        description="unique name of this agent in the cluster",
    )
    host: str = Field("127.0.0.1", description="address the agent API listens on")
    port: int = Field(6011, ge=0, le=65535, description="port of the agent API (0 = any free port)")
    public_address: str | None = Field(
        None, description="URL managers use to reach this agent; default http://<host>:<port>"
    )
    manager_endpoints: str = Field(
        "", description="comma-separated manager URLs for heartbeats and events"
    )
    cluster_token: str = Field("", description="shared secret of the cluster (required)")
    runtime: Literal["process", "dummy", "docker"] = Field(
        "process", description="runtime backend that runs kernels"
    )
    scratch_root: str = Field(
        "/var/tmp/bai-scratch", description="folder holding each kernel's scratch/work dir"
    )
    storage_roots: dict[str, str] = Field(
        default_factory=dict,
        description="storage host name -> the folder where this agent sees it (a local folder, "
                    "or a shared filesystem every agent of the group mounts at the same path); "
                    "session folders are bound from beneath it")
    apps_socket: str = Field(
        "", description="unix socket where a manager of the same machine takes the connected "
                        "socket of a session's service (SCM_RIGHTS) and hands it to bai's CLI, "
                        "so the apps tunnel relays nothing; empty: the manager relays")
    scaling_group: str = Field("default", description="resource group this agent belongs to")
    heartbeat_interval: float = Field(
        3.0, description="seconds between heartbeats (while the agent has nothing new to say, "
                         "as seldom as the manager allows, at most twice this)")
    # resource slot overrides (decimal strings; mem accepts sizes such as 4g)
    slot_cpu: str | None = Field(None, description="cores to offer (default: host cores)")
    slot_mem: str | None = Field(None, description="memory to offer (default: host memory)")
    slot_cuda_device: str | None = Field(
        None, description="MOCK accelerator for tests: whole fake devices (replaces detection)")
    slot_cuda_shares: str | None = Field(
        None, description="MOCK accelerator for tests: fractional shares (replaces detection)")
    cuda_detect: bool = Field(
        True, description="find NVIDIA GPUs through NVML (extra 'gpu': nvidia-ml-py)")
    cuda_shares_per_device: int = Field(
        4, ge=1, description="cuda.shares one GPU counts (4: cuda.shares=2 is half a GPU)")
    cuda_mps_pipe_dir: str = Field(
        "", description="CUDA_MPS_PIPE_DIRECTORY of the MPS control daemon that enforces "
                        "cuda.shares (empty: the default /tmp/nvidia-mps)")
    # process runtime
    process_interpreter: str = Field(
        "/usr/bin/python3",
        description="python for kernels whose image has no bai.process.interpreter label",
    )
    process_cgroups: bool = Field(True, description="use cgroups for limits when possible")
    process_namespaces: bool = Field(True, description="own PID and mount namespaces if possible")
    process_run_as: str = Field("", description="user kernels run as (empty: the agent's user)")
    process_sandbox: bool = Field(
        True, description="run kernels in a bubblewrap sandbox when the host can (see security docs)")
    bwrap_path: str = Field("bwrap", description="the bubblewrap program (name on PATH or path)")
    sandbox_uid_first: int = Field(
        2_000_000, gt=0, description="first host uid given to kernels (each its own, when root)")
    sandbox_uid_count: int = Field(65_536, gt=0, description="how many uids kernels may take")
    sandbox_uid_lock_dir: str = Field(
        "/run/bai/uids", description="host-wide folder where agents lock the uids they hand out")
    cgroup_parent: str = Field("bai", description="cgroup folder under which kernels are made")
    pids_limit: int = Field(
        1024, description="most processes/threads one kernel may have when its policy sets none")
    disk_quota: int = Field(
        4 * 1024**3, description="bytes a kernel's work dir may hold when its policy sets none "
                                 "(also the size pre-started runners are made with); 0 = none")
    pids_total: int = Field(
        0, description="most processes/threads of all kernels together (pids.max of "
                       "cgroup_parent); 0 = half of the host's pid_max, -1 = no cap")
    process_pool_size: int = Field(
        4, description="most kernel runners kept pre-started per interpreter, and never more "
                       "than the agent's free whole CPU slots (0: start each cold)")
    process_direct_command: bool = Field(
        True, description="a batch session whose work is its startup command runs that command "
                          "in the sandbox itself, without the Python runner (false: with it)")
    kernel_ready_timeout: float = Field(30.0, description="seconds for a runner to answer")
    monitor_interval: float = Field(0.5, description="seconds between kernel liveness checks")
    # docker runtime
    docker_host: str | None = Field(None, description="Docker/Podman API URL (default: local)")
    docker_pool_size: int = Field(
        3, ge=0, description="standby containers kept started per image for fast creates (0: off)"
    )
    # dummy runtime (benchmarks and scheduler tests)
    dummy_create_delay: float = Field(0.0, description="seconds a dummy create takes")
    dummy_destroy_delay: float = Field(0.0, description="seconds a dummy destroy takes")
    dummy_fail_rate: float = Field(0.0, description="probability that a dummy create fails")
    dummy_fail_images: str = Field(
        "", description="comma-separated images whose dummy creation always fails"
    )
    dummy_lifetime: float = Field(
        0.0, description="dummy kernels end by themselves after this many seconds (0: never)"
    )
    log_level: str = Field("INFO", description="logging level")
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text or as JSON objects (one a line)")
    log_levels: str = Field(
        "", description="levels per component, e.g. bai.agent.kernels=DEBUG,bai.access=WARNING")
    ops_host: str = Field("127.0.0.1", description="address of the unauthenticated "
                          "/metrics and /health/* listener (see ops_port)")
    ops_port: int | None = Field(
        None, ge=0, le=65535,
        description="port of that listener; unset: none (then /metrics on the agent "
        "API needs the cluster token); 0: any free port")

    @field_validator("manager_endpoints", "dummy_fail_images", mode="before")
    @classmethod
    def _join_list(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return ",".join(str(v) for v in value)
        return value

    @property
    def managers(self) -> list[str]:
        return [e.strip().rstrip("/") for e in self.manager_endpoints.split(",") if e.strip()]

    @property
    def address(self) -> str:
        return self.public_address or f"http://{self.host}:{self.port}"

    def slot_overrides(self) -> dict[str, str]:
        return {slot: str(getattr(self, f)) for f, slot in SLOT_FIELDS.items()
                if getattr(self, f) not in (None, "")}

