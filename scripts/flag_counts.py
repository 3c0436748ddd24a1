"""How many neurons get each flag on a small toy-1l index (builds it first if missing).

    PYTHONPATH=$PWD HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python scripts/flag_counts.py /tmp/flagsix/ix
"""
import sys
from pathlib import Path

from indexer.analyses import runner
from indexer.analyses.common import Options
from indexer.config import IndexConfig
from indexer.run.engine import index
from indexer.store.query import run_sql

ix = Path(sys.argv[1] if len(sys.argv) > 1 else "out/flag-counts")
if not (ix / "manifest.json").is_file():
    index(IndexConfig(model="toy-1l", corpus=["code", "prose"], out=str(ix), tokens=20000, ctx_len=128,
                      batch_size=8, device="cpu"), progress=False)
runner.analyze(ix, only="flags", force=True, options=Options(device="cpu", progress=False))
df, _ = run_sql(ix, "SELECT flag, count(*) AS n FROM flags GROUP BY flag ORDER BY flag", limit=None)
print(df.to_string(index=False))
n, _ = run_sql(ix, "SELECT count(*) AS n FROM neurons", limit=None)
print("neurons:", int(n.n[0]))
for f in ("polysemantic", "illusion"):
    d, _ = run_sql(ix, f"SELECT neuron, score, detail FROM flags WHERE flag = '{f}' ORDER BY score DESC LIMIT 15", limit=None)
    for r in d.itertuples():
        print(f, r.neuron, round(r.score, 2), r.detail[:160])
