#!/usr/bin/env python3
"""Dev-set measures of a checkpoint, never on the MSVD test split:

1. The 12 held-out MSVD dev clips (`configs/lists/msvd_dev_clips.txt`, as build_default_model.py's
   dev step): BLEU-4 / METEOR / CIDEr; the share of captions that are among MSVD training's 10
   most frequent sentences (generic fallback) or copied verbatim from its training captions;
   hallucinated content words per caption (`captioner.grounding`); for each reranking weight.
2. Language transfer on MSR-VTT val (497 videos no recipe trains on): each video's concepts
   derived from 10 of its captions (corrupted as the training set corrupts them), decoded, and
   scored against its other 10; and caption retrieval: the model's log-likelihood ranks one held
   caption of each of --retrieval videos against the others' (recall@1, @5, median rank).

    OMP_NUM_THREADS=1 python3 scripts/dev_quality.py --checkpoint runs/.../best.pt \
        --clips-store runs/quality/pipeline/extract-train/KEY/features --weights 0,1,2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
DATA = ROOT.parent / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "pipeline_quality.yaml")
    parser.add_argument("--dev-store", type=Path, default=ROOT / "runs" / "quality" / "features" / "msvd_dev")
    parser.add_argument("--clips-store", type=Path, default=None,
                        help="the training clips' store (their heads' outputs calibrate the MSR-VTT vectors); "
                             "without it only the MSVD dev clips are measured")
    parser.add_argument("--weights", default="0,1,2", help="reranking weights to try on the n-best list")
    parser.add_argument("--beam", type=int, default=3)
    parser.add_argument("--n-best", type=int, default=3)
    parser.add_argument("--msrvtt", type=int, default=497, help="MSR-VTT val videos to caption")
    parser.add_argument("--retrieval", type=int, default=200, help="MSR-VTT val videos in the retrieval pool")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from build_default_model import LISTS, dev_clips
    from captioner.concepts import agreement_shares, caption_probabilities, heads, text_only_vector
    from captioner.corpora import load_msrvtt
    from captioner.datasets import load_captions
    from captioner.extract import extract
    from captioner.grounding import copied_share, generic_share, hallucinated_words, head_support, rerank
    from captioner.metrics import Scorer
    from captioner.model import load_checkpoint
    from captioner.store import open_features
    from captioner.text import tokenize
    from pipelines import load_pipeline

    torch.set_num_threads(1)
    checkpoint = load_checkpoint(args.checkpoint)
    concept_heads = heads(checkpoint.provenance)
    decoding = checkpoint.decoding.but(beam=args.beam)
    weights = [float(w) for w in args.weights.split(",")]
    report: dict = {"checkpoint": str(args.checkpoint), "beam": args.beam, "n_best": args.n_best}

    # ---- 1. MSVD dev clips
    config = load_pipeline(args.config)
    summary = extract([LISTS / "msvd_dev_clips.txt"], args.dev_store, config.extract, progress=False)
    if summary.failed:
        sys.exit(f"extraction failed for {summary.failed} dev clips")
    ids = [c.stem for c in dev_clips()]
    vectors = open_features(args.dev_store).pooled_matrix(ids)[1]
    msvd_train = load_captions(DATA / "msvd" / "captions" / "MSVD_train.tsv")
    references = {**msvd_train, **load_captions(DATA / "msvd" / "captions" / "MSVD_val.tsv")}
    corpus = [c for vid, caps in msvd_train.items() if vid not in set(ids) for c in caps]
    nbests = checkpoint.predict(vectors, "video", n_best=args.n_best, decoding=decoding)
    supports = [head_support(v, concept_heads) for v in vectors]
    with Scorer(["BLEU", "METEOR", "CIDEr"]) as scorer:
        report["msvd_dev"] = {}
        for weight in weights:
            predictions = {vid: rerank(nbest, support, weight)[0].caption
                           for vid, nbest, support in zip(ids, nbests, supports)}
            scores = scorer.score(predictions, {vid: references[vid] for vid in ids})
            false_words = {vid: hallucinated_words(predictions[vid], references[vid], supports[k])
                           for k, vid in enumerate(ids)}
            row = {"BLEU-4": scores["BLEU-4"], "METEOR": scores["METEOR"], "CIDEr": scores["CIDEr"],
                   "generic": generic_share(predictions.values(), corpus),
                   "copied": copied_share(predictions.values(), corpus),
                   "hallucinated_per_caption": float(np.mean([len(w) for w in false_words.values()])),
                   "captions": {vid: [predictions[vid], false_words[vid]] for vid in ids}}
            report["msvd_dev"][weight] = row
            print(f"MSVD dev, rerank weight {weight:g}: BLEU-4 {row['BLEU-4']:.3f} METEOR {row['METEOR']:.3f} "
                  f"CIDEr {row['CIDEr']:.3f} generic {row['generic']:.2f} copied {row['copied']:.2f} "
                  f"hallucinated words/caption {row['hallucinated_per_caption']:.2f}", flush=True)
        for vid in ids:
            print(f"  {vid}: {report['msvd_dev'][weights[0]]['captions'][vid]} | {references[vid][0]}")

        if args.clips_store is None:
            _write(args.out, report)
            return
        # ---- 2. MSR-VTT val: language transfer from concept vectors
        msrvtt = load_msrvtt(DATA / "msrvtt" / "train_val_videodatainfo.json")
        val = sorted(msrvtt.videos("val"))[:args.msrvtt]
        clips = open_features(args.clips_store)
        clip_captions = {vid: caps for vid, caps in msvd_train.items() if vid in set(clips.ids())}
        clip_ids = sorted(clip_captions)
        clip_vectors = clips.pooled_matrix(clip_ids)[1]
        real = {h.kind: clip_vectors[:, h.start:h.end] for h in concept_heads}
        shares = {h.kind: agreement_shares(np.stack([caption_probabilities([tokenize(c) for c in clip_captions[v]], h)
                                                     for v in clip_ids]), real[h.kind]) for h in concept_heads}
        rng = np.random.default_rng(0)
        dim = clip_vectors.shape[1]
        val_vectors = np.stack([text_only_vector([tokenize(c) for c in msrvtt.captions[v][:10]], dim, concept_heads,
                                                 real, rng, shares) for v in val])
        transfer = checkpoint.predict(val_vectors, "video", n_best=args.n_best, decoding=decoding)
        held = {v: msrvtt.captions[v][10:] for v in val}
        report["msrvtt_val"] = {}
        msrvtt_train = [c for v in msrvtt.videos("train") for c in msrvtt.captions[v]]
        for weight in weights:
            predictions = {v: rerank(nbest, head_support(vec, concept_heads), weight)[0].caption
                           for v, nbest, vec in zip(val, transfer, val_vectors)}
            scores = scorer.score(predictions, held)
            row = {"BLEU-4": scores["BLEU-4"], "METEOR": scores["METEOR"], "CIDEr": scores["CIDEr"],
                   "generic": generic_share(predictions.values(), msrvtt_train),
                   "distinct": len(set(predictions.values())) / len(predictions)}
            report["msrvtt_val"][weight] = row
            print(f"MSR-VTT val ({len(val)}) from caption-derived concepts, weight {weight:g}: "
                  f"BLEU-4 {row['BLEU-4']:.3f} METEOR {row['METEOR']:.3f} CIDEr {row['CIDEr']:.3f} "
                  f"generic {row['generic']:.2f} distinct {row['distinct']:.2f}", flush=True)

    # ---- retrieval: rank each video's held caption among the pool's by log-likelihood
    pool = val[:args.retrieval]
    candidates = [msrvtt.captions[v][10] for v in pool]
    model, vocab = checkpoint.model.eval(), checkpoint.vocab
    tokens, _ = vocab.encode_batch([tokenize(c) for c in candidates], 20)
    tokens = torch.as_tensor(tokens)
    source = torch.tensor([1] * len(pool))  # "video"
    ranks = []
    with torch.no_grad():
        for k in range(len(pool)):
            feats = torch.as_tensor(val_vectors[k][None].repeat(len(pool), 0))
            logits = model(feats, tokens[:, :-1], sources=source)
            logp = torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None])[..., 0]
            mask = (tokens[:, 1:] != 0).float()
            per_caption = (logp * mask).sum(1) / mask.sum(1)
            ranks.append(int((per_caption > per_caption[k]).sum()) + 1)
    ranks = np.array(ranks)
    report["msrvtt_retrieval"] = {"pool": len(pool), "R@1": float((ranks <= 1).mean()),
                                  "R@5": float((ranks <= 5).mean()), "median_rank": float(np.median(ranks))}
    print(f"MSR-VTT val caption retrieval from concept vectors ({len(pool)} candidates): "
          f"R@1 {report['msrvtt_retrieval']['R@1']:.3f} R@5 {report['msrvtt_retrieval']['R@5']:.3f} "
          f"median rank {report['msrvtt_retrieval']['median_rank']:.0f}")
    _write(args.out, report)


def _write(path: Path | None, report: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
