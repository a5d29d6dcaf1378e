"""Run the art2tweet service, one of its processes, or a command against it.

    python run_server.py [serve] [--archive PATH ...]   start the whole group
    python run_server.py process NAME                  run one process
    python run_server.py ingest PATH                   ingest an archive folder
    python run_server.py search IMAGE [--account NAME]
    python run_server.py query URL | scan HANDLE
    python run_server.py stats | workers | queues | stop

``serve`` with no ``--archive`` ingests the demo archive carried in
``demo_archive/``; archives listed in ``config.toml`` are always ingested.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from pathlib import Path

from broker.config import ConfigError, load_config
from broker.process import run_process, setup_logging

PROJECT_ROOT = Path(__file__).resolve().parent
DEMO_ARCHIVE = PROJECT_ROOT / "demo_archive"

log = logging.getLogger("run_server")

# Request kinds handled in a worker's socket thread. They only read memory
# or one SQLite row and must not wait on another service; nothing checks it.
INLINE_KINDS = {
    "pipeline": frozenset({"search.get", "ingest.get", "ingest.progress"}),
}


def run_one_process(name: str, config) -> int:
    """Run the process ``name`` of the group in this OS process."""
    setup_logging(name, config.log_folder)
    import faiss  # noqa: F401 - imported early so its threads are set per process

    if name == "broker":
        from broker.broker import Broker

        broker = Broker(config.broker)
        return run_process(name, config.log_folder, broker.run, broker.stop)
    if name == "http":
        from http_api.server import ApiServer

        server = ApiServer(config)
        return run_process(name, config.log_folder, server.run, server.stop)

    from broker.worker import Worker

    service, handlers, capacity, on_stop = _stage(name, config)
    worker = Worker(service, handlers, config.broker, capacity=capacity,
                    inline_kinds=INLINE_KINDS.get(service, frozenset()))

    def stop():
        worker.stop()

    code = run_process(name, config.log_folder, worker.run, stop)
    if on_stop is not None:
        on_stop()
    return code


def _stage(name: str, config):
    """Return (service, handlers, capacity, on_stop) of a stage process."""
    if name == "pipeline":
        from stages import pipeline

        return "pipeline", pipeline.handlers(config), 64, None
    if name == "lister":
        from stages import lister

        return "lister", lister.handlers(config), 4, None
    if name.startswith("indexer"):
        from stages import indexer

        return "indexer", indexer.handlers(config), 1, None
    if name.startswith("searcher"):
        from stages import searcher

        # One searcher writes the index file; the others only read it.
        handlers, instance = searcher.build(config, persist=name in ("searcher",
                                                                    "searcher-1"))
        return "searcher", handlers, 1, instance.close
    if name == "maintenance":
        from stages import maintenance

        extra = tuple(filter(None, os.environ.get("A2T_EXTRA_ARCHIVES", "").split(
            os.pathsep)))
        handlers, instance = maintenance.build(config, extra)
        return "maintenance", handlers, 1, instance.stop
    if name == "link_finder":
        from stages import link_finder_stage

        return "link_finder", link_finder_stage.handlers(config), 4, None
    if name == "scanner":
        from stages import scanner

        return "scanner", scanner.handlers(config), 8, None
    raise SystemExit(f"unknown process name {name!r}")


def serve(args, config, config_path: Path) -> int:
    from broker.supervisor import Supervisor

    setup_logging("supervisor", config.log_folder)
    archives = [str(Path(path).resolve()) for path in args.archive or []]
    if not archives and not args.no_demo:
        archives = [str(DEMO_ARCHIVE)]
    environment = {"A2T_EXTRA_ARCHIVES": os.pathsep.join(archives)}
    if args.data:
        environment["A2T_DATA_FOLDER"] = str(Path(args.data).resolve())
    supervisor = Supervisor(config, PROJECT_ROOT / "run_server.py", config_path,
                            environment)
    log.info("data folder %s; HTTP API on http://%s:%d", config.data_folder,
             config.http.host, config.http.port)
    supervisor.start()
    if sys.stdin is not None and sys.stdin.isatty():
        threading.Thread(target=_prompt, args=(config, supervisor), daemon=True,
                         name="prompt").start()
    return run_process("supervisor", config.log_folder, supervisor.wait,
                       supervisor.stop)


def _prompt(config, supervisor) -> None:
    from http_api.cli import Cli

    cli = Cli(config)
    print("type help for commands", flush=True)
    while True:
        try:
            line = input("art2tweet> ")
        except EOFError:
            break
        if not cli.run_line(line):
            break
    supervisor.stop()


def run_command(args, config) -> int:
    from http_api.cli import Cli, CommandError

    cli = Cli(config)
    try:
        if args.command == "ingest":
            job = cli.ingest(args.path, wait=not args.no_wait)
            return 0 if job.get("status") != "failed" else 1
        if args.command == "search":
            reply = cli.search(args.image, args.account)
            return 0 if not reply.get("error") else 1
        if args.command == "query":
            cli.query(args.url)
        elif args.command == "scan":
            cli.scan(args.handle)
        else:
            getattr(cli, args.command)()
    except CommandError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of the output went away, as in "run_server.py workers | head".
        sys.stdout = None
        return 0
    finally:
        cli.close()
    return 0


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="run_server.py", description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--config", help="configuration file (default: config.toml)")
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="start the whole process group")
    serve_parser.add_argument("--archive", action="append",
                              help="archive folder to ingest (repeatable); "
                              "replaces the demo archive")
    serve_parser.add_argument("--no-demo", action="store_true",
                              help="do not ingest the demo archive")
    serve_parser.add_argument("--data", help="data folder (overrides the config)")
    process = commands.add_parser("process", help="run one process of the group")
    process.add_argument("name")
    ingest = commands.add_parser("ingest", help="ingest an archive folder")
    ingest.add_argument("path")
    ingest.add_argument("--no-wait", action="store_true",
                        help="return once the job is started")
    search = commands.add_parser("search", help="search the tweets holding an image")
    search.add_argument("image")
    search.add_argument("--account", help="search this account only")
    query = commands.add_parser("query", help="find the tweet of an artwork URL")
    query.add_argument("url")
    scan = commands.add_parser("scan", help="index an account's tweets")
    scan.add_argument("handle")
    for name, text in (("stats", "counts of the database and requests"),
                       ("workers", "what each process is doing"),
                       ("queues", "requests waiting per service"),
                       ("stop", "stop the running service")):
        commands.add_parser(name, help=text)
    # "serve" is the default command; its options may be given without it.
    known = set(commands.choices)
    if not any(word in known for word in argv) and not {"-h", "--help"} & set(argv):
        serve_options = ("--archive", "--no-demo", "--data")
        at = next((i for i, word in enumerate(argv) if word.split("=")[0]
                   in serve_options), len(argv))
        argv = [*argv[:at], "serve", *argv[at:]]
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    config_path = Path(args.config or os.environ.get("A2T_CONFIG")
                       or PROJECT_ROOT / "config.toml").resolve()
    command = args.command or "serve"
    if command == "serve":
        if args.data:
            os.environ["A2T_DATA_FOLDER"] = str(Path(args.data).resolve())
            config = load_config(args.config)
        return serve(args, config, config_path)
    if command == "process":
        return run_one_process(args.name, config)
    return run_command(args, config)


if __name__ == "__main__":
    sys.exit(main())
