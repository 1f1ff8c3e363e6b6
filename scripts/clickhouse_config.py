"""Write a private ClickHouse server config that listens on 127.0.0.1 only.

Used by scripts/test: it copies Debian's /etc/clickhouse-server/config.xml and
users.xml into a folder under var/, and points every path (data, tmp, logs,
user files, format schemas) into that folder, so the test server never touches
the system's data and never listens on ::1 or a wildcard address.

    python3 scripts/clickhouse_config.py SOURCE_DIR TARGET_DIR TCP_PORT HTTP_PORT
"""

from __future__ import annotations

import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

DROPPED = ("listen_host", "interserver_http_port", "interserver_http_host", "https_port", "tcp_port_secure")


def _set(root: ET.Element, tag: str, value: str) -> None:
    node = root.find(tag)
    if node is None:
        node = ET.SubElement(root, tag)
    node.text = value


def write_config(source: Path, target: Path, tcp_port: int, http_port: int) -> Path:
    """Write ``target/config.xml`` and ``target/users.xml``; return the config's path."""
    target.mkdir(parents=True, exist_ok=True)
    for sub in ("data", "tmp", "user_files", "format_schemas", "log"):
        (target / sub).mkdir(exist_ok=True)
    tree = ET.parse(source / "config.xml")  # noqa: S314 - a local, trusted file
    root = tree.getroot()
    for tag in DROPPED:
        for node in root.findall(tag):
            root.remove(node)
    ET.SubElement(root, "listen_host").text = "127.0.0.1"
    _set(root, "tcp_port", str(tcp_port))
    _set(root, "http_port", str(http_port))
    _set(root, "path", f"{target / 'data'}/")
    _set(root, "tmp_path", f"{target / 'tmp'}/")
    _set(root, "user_files_path", f"{target / 'user_files'}/")
    _set(root, "format_schema_path", f"{target / 'format_schemas'}/")
    _set(root, "users_config", str(target / "users.xml"))
    logger = root.find("logger")
    if logger is None:
        logger = ET.SubElement(root, "logger")
    _set(logger, "log", str(target / "log" / "clickhouse-server.log"))
    _set(logger, "errorlog", str(target / "log" / "clickhouse-server.err.log"))
    _set(logger, "level", "information")
    config = target / "config.xml"
    tree.write(config, encoding="utf-8", xml_declaration=True)
    shutil.copyfile(source / "users.xml", target / "users.xml")
    return config


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    config = write_config(Path(argv[1]), Path(argv[2]).resolve(), int(argv[3]), int(argv[4]))
    print(config)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
