"""The shard audit's OCR recall on screens whose identifiers we drew, and what it reads after preprocessing.

Two kinds of raw screens with known burnt-in identifiers (patient ID, date, time):

- the quickstart corpus (``sonofm.datasets.synthetic``, 128 px by default: 7 px text, the ID / date /
  time lines 2-3 px from the image);
- the vendor screens (``sonofm.datasets.synthetic.screens``, 640x480 to 1024x768, 10-15 px text; the
  patient ID and date a second time 1-3 px from the field), ``--vendor N`` seeds per layout.

Per kind it reports the share of drawn identifiers read exactly (their digits in one date / time /
digit-run match), the share of screens the audit flags, and the audit's own recall measurement
(identifiers planted into the same screens, on background and over tissue). For vendor screens it
also reads the preprocessed output (what a shard would store, text blanked by default,
``--text keep`` to compare) and counts the outputs with identifier-like text.

    OMP_NUM_THREADS=1 python benchmarks/ocr_recall.py --n 200 --vendor 4
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

import numpy as np
from tqdm import tqdm

from sonofm.datasets.preprocess.pipeline import preprocess
from sonofm.datasets.shards import ocr
from sonofm.datasets.shards.audit import measure_recall
from sonofm.datasets.sources.records import Record
from sonofm.datasets.synthetic import plan, render_sample
from sonofm.datasets.synthetic.screens import LAYOUTS, render_screen, screen_gray


def _score(screens: list[tuple[np.ndarray, list[str]]], label: str, recall_every: int) -> list[str]:
    """Exact reads per identifier kind, flagged screens, and the planted recall on every k-th screen."""
    drawn, read = Counter(), Counter()
    flagged, pairs = 0, []
    t0 = time.perf_counter()
    for image, texts in tqdm(screens, desc=label, leave=False):
        reading = ocr.read_text(image)
        pairs.append((image, reading))
        flagged += reading.has_identifier
        for text in texts:
            kinds = ocr.classify(text).identifiers
            for kind in kinds:  # one line may hold several (the vendor line "ID 1234567  2019/07/23")
                drawn[kind] += 1
            if kinds:
                read_all = ocr.exact_read(reading, text)
                for kind in kinds:
                    read[kind] += read_all
    per_image = (time.perf_counter() - t0) / max(1, len(screens))
    rec = measure_recall(pairs[::recall_every], seed=0)
    n = len(screens)
    lines = [f"**{label}** ({n} screens, {per_image:.2f} s per OCR read)", "",
             "| identifier | drawn | read exactly | share |", "|---|---:|---:|---:|"]
    for kind in ocr.KINDS:
        if drawn[kind]:
            lines.append(f"| {kind} | {drawn[kind]} | {read[kind]} | {read[kind] / drawn[kind]:.0%} |")
    total_d, total_r = sum(drawn.values()), sum(read.values())
    lines += [f"| **all** | {total_d} | {total_r} | {total_r / max(1, total_d):.0%} |", "",
              f"- screens flagged as holding identifier-like text: {flagged} of {n} ({flagged / n:.0%})",
              f"- the audit's own measurement on these screens: {rec.line()}", ""]
    return lines


def _vendor_outputs(n: int, text: str) -> list[str]:
    """OCR of what preprocessing stores for each vendor screen (identifier-like text left?)."""
    hits, total = [], 0
    for lay in LAYOUTS:
        for seed in range(n):
            sc = render_screen(lay, seed)
            out = preprocess(Record(sc.image, None, {"path": f"{lay}_{seed}.png"}), max_side=4096, text=text)
            total += 1
            reading = ocr.read_text(out.image)
            if reading.has_identifier:
                hits.append(f"{lay} seed {seed}: {reading.identifiers}")
    lines = [f"- preprocessed vendor screens (text={text}) whose stored image holds identifier-like text: "
             f"{len(hits)} of {total}"]
    return lines + [f"  - {h}" for h in hits] + [""]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="quickstart-corpus screens (seed 0, first N)")
    ap.add_argument("--size", type=int, default=128, help="quickstart-corpus screen side (the quickstart's: 128)")
    ap.add_argument("--vendor", type=int, default=4, help="vendor screens per layout (0: none)")
    ap.add_argument("--text", choices=("blank", "keep"), default="blank", help="preprocessing of the vendor outputs")
    args = ap.parse_args(argv)
    ocr.check_ocr()
    t0 = time.time()
    out = [f"OCR: {ocr.engine_name()}", ""]
    corpus = []
    for i, src, patient in plan(args.n, 0):
        s = render_sample(src, 0, patient, i, args.size)
        corpus.append((s.image, s.texts))
    out += _score(corpus, f"quickstart corpus, {args.size} px", recall_every=2)
    if args.vendor:
        vendor = []
        for lay in LAYOUTS:
            for seed in range(args.vendor):
                sc = render_screen(lay, seed)
                # ID and date are printed twice (top band, and 1-3 px from the field): read once counts
                vendor.append((screen_gray(sc.image), sc.identifiers))
        out += _score(vendor, "vendor screens", recall_every=1)
        out += _vendor_outputs(args.vendor, args.text)
    print("\n".join(out))
    print(f"({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
