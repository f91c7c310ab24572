"""The LiteLLM proxy the gateway bench measures next to the service (--litellm): its virtualenv under --data-dir,
created once, and its process, configured to route one model to the simulator."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from processes import Proc, free_port, log  # bench/processes.py

LITELLM_SPEC = "litellm[proxy]>=1.74,<1.110"  # 1.109.x's proxy extras are not all on every index; pip picks the newest
LITELLM_MODEL = "bench-haiku"
LITELLM_KEY = "sk-cascade-bench-0000000000000000"  # the proxy refuses to start without a master key


def ensure_litellm(data_dir: Path) -> Path | None:
    venv = data_dir / "litellm-venv"
    exe = venv / "bin" / "litellm"
    python = venv / "bin" / "python"
    if exe.exists() and python.exists():
        check = subprocess.run(
            [str(python), "-c", "import litellm.proxy.proxy_server"], capture_output=True, check=False
        )
        if check.returncode == 0:
            return exe
    log(f"installing {LITELLM_SPEC} into {venv} (once; takes a minute)")
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
        pip = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", LITELLM_SPEC],
            capture_output=True, text=True, timeout=1800, check=False,
        )  # fmt: skip
    except (subprocess.SubprocessError, OSError) as exc:
        log(f"LiteLLM: could not create its virtualenv: {exc}; skipping LiteLLM")
        return None
    if pip.returncode != 0 or not exe.exists():
        errors = [x for x in pip.stderr.splitlines() if not x.startswith("WARNING: Location")]
        log("LiteLLM: pip install failed; skipping LiteLLM:\n  " + "\n  ".join(errors[-5:]))
        return None
    return exe


def start_litellm(exe: Path, sim_port: int, work: Path, tag: str) -> tuple[Proc, int]:
    port = free_port()
    config = work / f"litellm-{tag}.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {LITELLM_MODEL}\n"
        "    litellm_params:\n"
        "      model: anthropic/claude-haiku-4-5\n"
        f"      api_base: http://127.0.0.1:{sim_port}\n"
        "      api_key: sim\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # no fetch of the cost map from GitHub
    for name in ("DATABASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        env.pop(name, None)  # no database: LiteLLM would try to use one
    argv = [str(exe), "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "2"]
    proc = Proc("litellm", argv, work / f"litellm-{tag}.log", env, cwd=work)
    return proc, port
