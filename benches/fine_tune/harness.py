"""Fine-tuning benchmark, run by `scripts/bench fine-tune [--quick]`.

Pairs from the pinned Debian corpus (tests/fixtures/debian, checked by
sha256): each described package's *name* as the query and its long
description as the item, in the test suite's fixed folds (crc32 of the
name, a third held out). A task where the frozen model has room to learn.

1. `cargo bench --bench fine_tune` (benches/fine_tune.rs): held-out r@1,
   r@10 and MRR of the untrained model, of an adapter, and of the model
   fine-tuned by likewise (read back through the fast encoder); its
   fine-tuning pairs/s and peak memory.
2. `baseline.py` under .cache/bench-venv, twice: sentence-transformers'
   own fine-tuning (MultipleNegativesRankingLoss, torch, CPU) with the
   same model files, pairs, batch size, learning rate, trainable layers
   and item length, as it trains (dropout, tokenizing each batch), and
   doing likewise's arithmetic (no dropout, batches tokenized ahead): its
   pairs/s and peak memory.

Writes target/bench-fine-tune/report.md; the last lines are
`pairs_per_s_ratio_vs_sentence_transformers=X.XX` and
`r1_gain_vs_untrained=X.XXX` / `r1_gain_vs_adapter=X.XXX`.
"""

import argparse
import json
import subprocess
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "clients"))
from conftest import debian_long_descriptions  # noqa: E402

OUT = ROOT / "target" / "bench-fine-tune"
MODEL = ROOT / ".cache" / "models" / "all-MiniLM-L6-v2"
BASELINE_PYTHON = ROOT / ".cache" / "bench-venv" / "bin" / "python"


def fold(name):
    return "valid" if zlib.crc32(name.encode()) % 3 == 0 else "train"


def write_pairs(path, limit):
    rows = debian_long_descriptions(limit)
    clean = lambda s: " ".join(s.split())
    path.write_text("".join(f"{fold(r['_id'])}\t{clean(r['_id'])}\t{clean(r['text'])}\n" for r in rows))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    # (pairs, trainable layers, epochs, batch, learning rate, item tokens)
    limit, layers, epochs, batch, lr, tokens = (
        (600, 2, 1, 16, 5e-5, 128) if args.quick else (4000, 3, 2, 32, 1e-4, 128))
    OUT.mkdir(parents=True, exist_ok=True)
    pairs = OUT / f"pairs-{limit}.tsv"
    write_pairs(pairs, limit)
    config = [str(layers), str(epochs), str(batch), str(lr), str(tokens)]
    started = time.perf_counter()
    ours = subprocess.run(
        ["cargo", "bench", "--quiet", "--bench", "fine_tune", "--", str(MODEL), str(pairs), *config],
        cwd=ROOT, capture_output=True, text=True, check=True)
    ours = json.loads(ours.stdout.strip().splitlines()[-1])
    def baseline(*flags):
        out = subprocess.run([str(BASELINE_PYTHON), str(ROOT / "benches/fine_tune/baseline.py"),
                              str(pairs), *config, *flags], capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    base = baseline()
    same = baseline("--same-arithmetic")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), "unknown CPU")
    ratio = ours["pairs_per_s"] / base["pairs_per_s"]
    gain_untrained = ours["fine_tuned"]["r@1"] - ours["untrained"]["r@1"]
    gain_adapter = ours["fine_tuned"]["r@1"] - ours["adapter"]["r@1"]
    lines = [
        f"# Fine-tuning benchmark ({'quick' if args.quick else 'full'}), {time.strftime('%Y-%m-%d %H:%M')}",
        f"\n{cpu}; {ours['train_pairs']} training and {ours['valid_pairs']} held-out pairs "
        f"(package name → long description); top {layers} of 6 layers trained, embeddings frozen; "
        f"{epochs} epoch(s), batch {batch}, learning rate {lr}, items cut to {tokens} tokens.\n",
        "| held out | r@1 | r@10 | MRR |", "|---|---:|---:|---:|",
    ]
    for label, key in [("untrained", "untrained"), ("adapter", "adapter"), ("fine-tuned", "fine_tuned")]:
        m = ours[key]
        lines.append(f"| {label} | {m['r@1']:.4f} | {m['r@10']:.4f} | {m['mrr']:.4f} |")
    lines += [
        "", "| fine-tuning | pairs/s | peak memory (MiB) |", "|---|---:|---:|",
        f"| likewise (candle) | {ours['pairs_per_s']:.2f} | {ours['peak_rss_mib']:.0f} |",
        f"| sentence-transformers as it trains (torch {base['torch']}, {base['threads']} threads; "
        f"dropout, tokenizing each batch) | {base['pairs_per_s']:.2f} | {base['peak_rss_mib']:.0f} |",
        f"| sentence-transformers, likewise's arithmetic (no dropout, batches tokenized ahead) | "
        f"{same['pairs_per_s']:.2f} | {same['peak_rss_mib']:.0f} |",
        f"\nepoch losses: {ours['losses']}; whole run {time.perf_counter() - started:.0f} s",
    ]
    (OUT / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"report: {OUT / 'report.md'}")
    print(f"r1_gain_vs_untrained={gain_untrained:.3f}")
    print(f"r1_gain_vs_adapter={gain_adapter:.3f}")
    print(f"pairs_per_s_ratio_vs_same_arithmetic={ours['pairs_per_s'] / same['pairs_per_s']:.2f}")
    print(f"pairs_per_s_ratio_vs_sentence_transformers={ratio:.2f}")


if __name__ == "__main__":
    main()
