"""OpenAI-compatible serving with per-token concept readouts (`amygdala serve`).

* `engine` — the model worker: KV-cache decoding, round-robin over concurrent
  sequences, per-forward-pass hooks, and each token's readout at the sampler's query
  position (the position whose logits sampled it), emitted in the step that samples it.
* `protocol` — the OpenAI wire format plus the readout fields.
* `app` — the Starlette app: routes, Bearer auth, server-sent events.

Importing this package loads nothing heavy; import the submodules you need.
"""

__all__ = ["app", "engine", "protocol"]
