"""Training throughput on MSVD-sized input: the real training loop against the bare model step.

Input: 1,200 videos with random 1280-d pooled features (the size of efficientnet_lite2's) and
the real captions of the standard MSVD train split, read from
../shared/data/msvd/captions/MSVD_train.tsv (1,200 clips, vid1-vid1200; 48,774 captions).

"train" runs `captioner.train.train_epoch`, the loop `captioner train` uses, on data built by
the same functions (`load_split`, `make_tensors`); "bare" runs only the model's forward,
backward and Adam step on the very same batches, already sliced. Rounds alternate between the
two so that load from other processes hits both alike. On a CPU with bf16 units (AVX-512 BF16 or
AMX), a third contender, "bf16", runs the same training loop with `cpu_bf16: true` (bf16
autocast), and its speed-up over the fp32 loop is printed. The last line is

    train_captions_per_s=X ratio_vs_bare=Y.YY

    python scripts/bench_train.py [--steps 60] [--rounds 3] [--device auto] [--threads N]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from captioner import open_features  # noqa: E402
from captioner.precision import cpu_has_bf16  # noqa: E402
from captioner.model import CaptionModel, ModelConfig  # noqa: E402
from captioner.text import PAD_ID, Vocabulary, tokenize  # noqa: E402
from captioner.train import (DataConfig, TrainConfig, _autocast_settings, batch_layout, load_split,  # noqa: E402
                             make_optimizer, make_tensors, train_epoch)


def make_store(path: Path, ids: list[str], dim: int) -> None:
    store = open_features(path, "a")
    rng = np.random.default_rng(0)
    for vid in ids:
        store.put(vid, rng.random((1, dim), dtype=np.float32))
    store.set_provenance({"backbone": "random", "feature_dim": dim})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch (0: torch's default); on a busy shared machine 1 is fastest")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    captions_file = Path(args.data) / "msvd" / "captions" / "MSVD_train.tsv"

    with tempfile.TemporaryDirectory() as tmp:
        from captioner.datasets import load_captions

        ids = list(load_captions(captions_file, "train"))
        make_store(Path(tmp) / "store", ids, args.dim)
        cfg = TrainConfig(batch_size=args.batch_size, epochs=1,
                          data=DataConfig(features=str(Path(tmp) / "store"), captions=str(captions_file)))
        captions, store = load_split(cfg.data.features, cfg.data.captions, cfg.data.split)
        vocab = Vocabulary.build((tokenize(c) for caps in captions.values() for c in caps), cfg.data.min_count)
        data = make_tensors(store, captions, vocab, cfg.data.max_words, device)
    print(f"{len(data.video_ids)} videos x {args.dim}-d features, {len(data)} captions "
          f"({captions_file.name}), vocabulary {len(vocab)}, batch {args.batch_size}, device {device}, "
          f"{torch.get_num_threads()} thread(s)",
          file=sys.stderr)

    torch.manual_seed(0)
    model = CaptionModel(ModelConfig(feature_dim=args.dim), len(vocab)).to(device)
    optimizer, scheduler, scaler = make_optimizer(model, cfg, batch_layout(len(data), cfg.batch_size, 1)[1])
    generator = torch.Generator().manual_seed(0)

    # The bare step's batches: the same slicing, done before the clock starts.
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(1))
    batches = [data.batch(order[i * args.batch_size:(i + 1) * args.batch_size]) for i in range(args.steps)]
    amp, amp_dtype = _autocast_settings(cfg, device)

    def bare(steps: int) -> None:
        model.train()
        for feats, tokens, sources in batches[:steps]:
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
                logits = model(feats, tokens[:, :-1], sources=sources)
                loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten(), ignore_index=PAD_ID)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

    def full(steps: int) -> None:
        train_epoch(model, data, optimizer, scheduler, scaler, cfg, generator, max_steps=steps)

    bf16_cfg = dataclasses.replace(cfg, cpu_bf16=True)

    def bf16(steps: int) -> None:
        train_epoch(model, data, optimizer, scheduler, scaler, bf16_cfg, generator, max_steps=steps)

    contenders = [("train", full), ("bare", bare)]
    if device.type == "cpu" and cpu_has_bf16():
        contenders.append(("bf16", bf16))

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        tic = time.perf_counter()
        fn(args.steps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - tic

    for _, fn in contenders:
        fn(5)  # warm-up: allocator, kernels
    seconds = dict.fromkeys((name for name, _ in contenders), 0.0)
    for round_ in range(args.rounds):
        for name, fn in contenders if round_ % 2 == 0 else contenders[::-1]:
            seconds[name] += timed(fn)
    captions_done = args.steps * args.rounds * args.batch_size
    train_rate, bare_rate = captions_done / seconds["train"], captions_done / seconds["bare"]
    print(f"train loop: {train_rate:.0f} captions/s, bare model step: {bare_rate:.0f} captions/s "
          f"({args.rounds} rounds x {args.steps} steps)", file=sys.stderr)
    if "bf16" in seconds:
        print(f"train loop in CPU bf16 autocast (cpu_bf16: true): {captions_done / seconds['bf16']:.0f} captions/s, "
              f"{seconds['train'] / seconds['bf16']:.2f}x the fp32 loop", file=sys.stderr)
    print(f"train_captions_per_s={train_rate:.0f} ratio_vs_bare={train_rate / bare_rate:.2f}")


if __name__ == "__main__":
    main()
