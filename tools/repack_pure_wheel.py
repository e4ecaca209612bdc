"""Repack a wheel that carries a CPython-version-specific extension as a pure-Python wheel.

Usage: python tools/repack_pure_wheel.py WHEEL OUT_DIR

Drops every compiled extension (``.so``) and its RECORD line, and rewrites the WHEEL file to
``py3-none-any`` with ``Root-Is-Purelib: true``. Used for the detectron2 republish, whose only
compiled part (``detectron2._C``) is optional for everything this project does.
"""
import base64
import hashlib
import sys
import zipfile
from pathlib import Path


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def repack(wheel: Path, out_dir: Path) -> Path:
    distribution, version = wheel.name.split("-")[:2]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{distribution}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as src:
        members = [m for m in src.infolist() if not m.filename.endswith(".so")]
        record_name = next(m.filename for m in members if m.filename.endswith(".dist-info/RECORD"))
        records = []
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
            for member in members:
                if member.filename == record_name:
                    continue
                data = src.read(member)
                if member.filename.endswith(".dist-info/WHEEL"):
                    lines = []
                    for line in data.decode().splitlines():
                        if line.startswith("Root-Is-Purelib:"):
                            line = "Root-Is-Purelib: true"
                        elif line.startswith("Tag:"):
                            line = "Tag: py3-none-any"
                        lines.append(line)
                    data = ("\n".join(lines) + "\n").encode()
                dst.writestr(member.filename, data)
                records.append(_record_line(member.filename, data))
            records.append(f"{record_name},,")
            dst.writestr(record_name, "\n".join(records) + "\n")
    return target


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(repack(Path(sys.argv[1]), Path(sys.argv[2])))
