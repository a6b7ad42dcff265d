"""The `edgerules upstream` command: its flags (one definition, shared with `edgerules`) and its server."""
from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys

from .faults import Faults, parse_count, parse_duration, parse_rate, parse_status

DESCRIPTION = ("A fake provider speaking the OpenAI, Anthropic, Azure OpenAI, Gemini or Bedrock API, "
               "with fault injection.")
_DROPPED = "ASGI callable returned without completing response."


def _arg(convert):
    # argparse shows an ArgumentTypeError's own text instead of "invalid <function> value".
    def parse(text: str):
        try:
            return convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The flags of `edgerules upstream`; `edgerules`'s own parser builds its sub-command from this."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--format", choices=("openai", "anthropic", "azure", "gemini", "bedrock"),
                        default="openai", help="the API it speaks (default openai)")
    parser.add_argument("--access-key", default=None,
                        help="bedrock: the AWS access key whose SigV4 signatures are accepted (a test key)")
    parser.add_argument("--secret-key", default=None, help="bedrock: its secret key (a test key)")
    parser.add_argument("--region", default=None, help="bedrock: the region signatures are scoped to (us-east-1)")
    parser.add_argument("--latency", type=_arg(parse_duration), default=0.0,
                        help="added before every answer, e.g. 50ms")
    parser.add_argument("--fail-rate", type=_arg(parse_rate), default=0.0,
                        help="share of requests that fail (0..1)")
    parser.add_argument("--fail-status", type=_arg(parse_status), default=503,
                        help="status of failed requests (503)")
    parser.add_argument("--status", type=_arg(parse_status), default=None,
                        help="answer every request with this status")
    parser.add_argument("--retry-after", type=_arg(parse_duration), default=None,
                        help="Retry-After seconds sent with error answers")
    parser.add_argument("--drop-after", type=_arg(parse_count), default=None,
                        help="in a stream, send N events then drop the connection")
    parser.add_argument("--error-after", type=_arg(parse_count), default=None,
                        help="in a stream, send N events then an error event")
    parser.add_argument("--chunk-delay", type=_arg(parse_duration), default=0.0,
                        help="pause between stream events")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fail-rate random generator")
    return parser


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog="edgerules upstream", description=DESCRIPTION))


class _DropFilter(logging.Filter):
    # An injected drop makes uvicorn log an error; it is the point of the drill, not a fault.
    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != _DROPPED


def _listen(host: str, port: int) -> socket.socket:
    # Bound here rather than by uvicorn, so a taken port is one clear line instead of a traceback.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def _serve(server, sock: socket.socket, args) -> int:
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            return 1
        await asyncio.sleep(0.01)
    port = sock.getsockname()[1]
    print(f"edgerules upstream listening on http://{args.host}:{port} (format {args.format})", flush=True)
    await task
    return 0


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted, with the parsed flags of `add_arguments`."""
    import uvicorn
    import uvloop

    from .app import FakeUpstream

    try:
        sock = _listen(args.host, args.port)
    except OSError as exc:
        print(f"edgerules upstream: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    faults = Faults(latency=args.latency, fail_rate=args.fail_rate, fail_status=args.fail_status,
                    status=args.status, retry_after=args.retry_after, drop_after=args.drop_after,
                    error_after=args.error_after, chunk_delay=args.chunk_delay)
    from . import bedrock
    credentials = (args.access_key or bedrock.TEST_ACCESS_KEY, args.secret_key or bedrock.TEST_SECRET_KEY,
                   args.region or bedrock.TEST_REGION)
    app = FakeUpstream(args.format, faults, args.seed, credentials)
    config = uvicorn.Config(app, loop="uvloop", http="httptools", lifespan="off", access_log=False,
                            log_level="warning", server_header=False, timeout_graceful_shutdown=1)
    logging.getLogger("uvicorn.error").addFilter(_DropFilter())
    server = uvicorn.Server(config)
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(_serve(server, sock, args))
    except KeyboardInterrupt:
        return 0
    finally:
        sock.close()


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))
