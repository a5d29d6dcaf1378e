"""supervisord.conf runs the same processes as run_server.py's supervisor."""

from __future__ import annotations

import configparser
from pathlib import Path

from broker.config import load_config
from broker.supervisor import process_names

CONF = Path(__file__).resolve().parents[1] / "supervisord.conf"


def read_programs() -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(CONF, encoding="utf-8")
    return {section.split(":", 1)[1]: parser[section]["command"]
            for section in parser.sections() if section.startswith("program:")}


def test_every_process_has_program():
    programs = read_programs()

    for name in process_names(load_config(environ={})):
        assert name in programs, f"{name} missing from supervisord.conf"


def test_programs_run_their_process():
    for name, command in read_programs().items():
        assert command.endswith(f"run_server.py process {name}"), command


def test_group_lists_every_program():
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(CONF, encoding="utf-8")
    group = parser["group:art2tweet"]["programs"].split(",")

    assert sorted(group) == sorted(read_programs())
