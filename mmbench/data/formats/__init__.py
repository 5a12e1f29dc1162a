"""Readers of the upstream raw formats (one module per format) and the checks every text reader shares."""

from __future__ import annotations

from pathlib import Path

from mmbench.errors import DataError, located

BOM = b"\xef\xbb\xbf"


def read_text(path: Path, what: str = "file") -> str:
    """A raw text file as UTF-8, or one line naming the file (and line) of what is wrong with it: missing,
    a folder, unreadable, empty, a byte-order mark, a NUL byte, bytes that are not UTF-8 (e.g. latin-1).
    CRLF line ends are left to the caller (every reader strips `\\r`)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected a {what}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not data.strip():
        raise DataError(f"{path}: empty {what}")
    if data.startswith(BOM):
        raise DataError(located(path, 1, "starts with a UTF-8 byte-order mark (BOM); save it as UTF-8 without one"))
    if b"\x00" in data:
        raise DataError(located(path, data[: data.index(b"\x00")].count(b"\n") + 1, "NUL byte in the text"))
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(located(path, line, f"not UTF-8 (byte 0x{data[exc.start]:02x}; latin-1 or another encoding?); "
                                            "save the file as UTF-8")) from None
