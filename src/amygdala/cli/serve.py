"""`amygdala serve`: an OpenAI-compatible server that streams per-token readouts."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

from amygdala import _defaults
from amygdala._net import DEFAULT_MAX_REQUEST_BYTES, byte_count_arg, describe_bytes, port_arg
from amygdala.cli._options import (
    add_device_option,
    add_dtype_option,
    add_manifest_option,
    add_model_code_options,
)

HELP = "serve a model over an OpenAI-compatible API, with per-token concept readouts"
DESCRIPTION = """\
Serve a Hugging Face decoder LM over the OpenAI API (/v1/models, /v1/completions,
/v1/chat/completions) with a KV cache. With --vectors, every streamed chunk carries
choices[i].readout: [n_layers][n_concepts] raw dot products of the residual stream at
the position whose logits sampled that token (the last prompt position for the first
token) with each concept vector, in manifest order, and readout_z when the manifest is
calibrated; GET /v1/readout/manifest names them.

Usage:
  AMYGDALA_API_KEY=secret amygdala serve --model Qwen/Qwen3-0.6B \\
      --vectors out/readout.safetensors --port 8000
  amygdala watch --url http://127.0.0.1:8000 "Tell me about your day."

Without a key in $AMYGDALA_API_KEY the server is open; it binds to 127.0.0.1 by
default, so only this machine can reach it.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="Hugging Face id or local directory of a decoder LM"
    )
    parser.add_argument(
        "--vectors",
        type=Path,
        default=None,
        help="readout.safetensors; without it the server runs with readout off",
    )
    add_manifest_option(parser)
    parser.add_argument(
        "--host",
        default=_defaults.HOST,
        help=f"address to bind; default {_defaults.HOST} (this machine only)",
    )
    parser.add_argument(
        "--port",
        type=port_arg,
        default=_defaults.SERVE_PORT,
        help=f"port, 0…65535; default {_defaults.SERVE_PORT} (0 picks a free port and prints it)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=byte_count_arg,
        default=DEFAULT_MAX_REQUEST_BYTES,
        metavar="N",
        help="larger request bodies get 413 before they are read; by default "
        f"{describe_bytes(DEFAULT_MAX_REQUEST_BYTES)}; K, M, G suffixes work (64M)",
    )
    parser.add_argument(
        "--served-model-name", default=None, help="the model id clients see; by default --model"
    )
    parser.add_argument(
        "--api-key-env",
        default=_defaults.API_KEY_ENV,
        help="environment variable holding the Bearer key; default "
        f"{_defaults.API_KEY_ENV} (unset or empty: no key)",
    )
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=_defaults.MAX_CONCURRENCY,
        help="sequences decoded at once (round-robin); more wait; "
        f"default {_defaults.MAX_CONCURRENCY}",
    )
    parser.add_argument(
        "--chat-template",
        type=Path,
        default=None,
        help="a Jinja chat template file; by default the tokenizer's (a plain "
        "'role: content' template when it has none)",
    )
    add_device_option(parser)
    add_dtype_option(parser)
    parser.add_argument("--revision", default=None, help="model revision")
    add_model_code_options(parser)
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="uvicorn log level; default warning",
    )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from amygdala._net import bind
    from amygdala._text import read_text_file
    from amygdala.artifact import load_artifact
    from amygdala.errors import ConfigError
    from amygdala.models import load_model
    from amygdala.serve.app import ServerConfig, create_app
    from amygdala.serve.engine import Engine

    if args.manifest is not None and args.vectors is None:
        raise ConfigError("--manifest needs --vectors")
    template = None
    if args.chat_template is not None:  # a FIFO or a folder there is an error, never a hang
        label = f"--chat-template {args.chat_template}"
        template = read_text_file(args.chat_template, label=label, error=ConfigError)
    api_key = os.environ.get(args.api_key_env) or None
    # bound before the model loads: a busy port is an error in a second, not after minutes;
    # connections wait until uvicorn listens on it
    sock = bind(args.host, args.port)
    try:
        artifact = load_artifact(args.vectors, args.manifest) if args.vectors else None
        lm = load_model(
            args.model,
            device=args.device,
            dtype=args.dtype,
            revision=args.revision,
            blocks_path=args.blocks_path,
            trust_remote_code=args.trust_remote_code,
        )
        engine = Engine(lm, artifact, max_concurrency=args.max_concurrency)
        config = ServerConfig(
            model_name=args.served_model_name or args.model,
            manifest=artifact.manifest if artifact else None,
            api_key=api_key,
            chat_template=template,
            max_request_bytes=args.max_request_bytes,
        )
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        if api_key is None and not _is_loopback(args.host):
            print(
                f"warning: serving on {args.host} with no API key: anyone who can reach this "
                f"port can use the model; set ${args.api_key_env}",
                file=sys.stderr,
            )
        readout = (
            f"readout {len(artifact.concepts)} concepts x layers {artifact.layers}"
            if artifact
            else "readout off"
        )
        print(
            f"amygdala serve: {config.model_name} ({readout}) on http://{shown}:{port}",
            file=sys.stderr,
            flush=True,
        )
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(engine, config), log_level=args.log_level, timeout_graceful_shutdown=5
            )
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0
