"""OpenAI-compatible serving with per-token concept readouts (`amygdala serve`).

* `engine` — the model worker: KV-cache decoding, round-robin over concurrent
  sequences, per-forward-pass hooks, and each token's readout at its own position.
* `protocol` — the OpenAI wire format plus the readout fields.
* `app` — the Starlette app: routes, Bearer auth, server-sent events.

Importing this package loads nothing heavy; import the submodules you need.
"""

__all__ = ["app", "engine", "protocol"]
