"""The PII filters against Microsoft Presidio on one labelled corpus: run by `make bench`.

Runs both on the same texts in one run: throughput in MB/s (UTF-8 bytes of the
texts over the fastest of several passes) and precision, recall and F2 per entity
type. A finding counts when it has the gold span's entity and overlaps it (each
gold span and each finding counts once); exact-span F2 is shown beside it.
Presidio runs in its own virtual environment (`scripts/bench-venv.sh presidio`)
through `presidio_runner.py`. Writes the "filters" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from privatellm.api.access import PII_ENTITIES, InboundFilters, OutboundFilters
from privatellm.filters import InboundPipeline, OutboundPipeline
from privatellm.filters.detectors import PII_DETECTORS
from privatellm.filters.scanner import Scanner

from .pii_corpus import Sample, clean_prompts, corpus
from .report import write_section

SECTION = "filters"
ROOT = Path(__file__).resolve().parents[2]
PRESIDIO_PYTHON = ROOT / ".bench/presidio/bin/python"
RUNNER = Path(__file__).with_name("presidio_runner.py")
ENTITY_OF_PRESIDIO = {
    "EMAIL_ADDRESS": "email",
    "PHONE_NUMBER": "phone",
    "IBAN_CODE": "iban",
    "CREDIT_CARD": "paymentCard",
    "US_SSN": "usSSN",
    "UK_NINO": "ukNINO",
    "DE_TAX_ID": "deTaxID",
    "IP_ADDRESS": "ipAddress",
}
ENTITIES: tuple[str, ...] = get_args(PII_ENTITIES)
STREAM_CHUNK = 16  # characters per streamed piece, about four tokens

Span = tuple[str, int, int]


@dataclass
class Score:
    gold: int = 0
    true_positives: int = 0
    predicted: int = 0
    exact: int = 0

    def precision(self) -> float:
        return self.true_positives / self.predicted if self.predicted else 1.0

    def recall(self) -> float:
        return self.true_positives / self.gold if self.gold else 1.0

    def f2(self, exact: bool = False) -> float:
        hits = self.exact if exact else self.true_positives
        precision = hits / self.predicted if self.predicted else 1.0
        recall = hits / self.gold if self.gold else 1.0
        denominator = 4 * precision + recall
        return 5 * precision * recall / denominator if denominator else 0.0


def score(samples: Sequence[Sample], predictions: Sequence[Sequence[Span]]) -> dict[str, Score]:
    """Overlap and exact matches per entity; each gold span and prediction counts once."""
    scores = {entity: Score() for entity in ENTITIES}
    for sample, predicted in zip(samples, predictions, strict=True):
        used: set[int] = set()
        for entity, *_ in predicted:
            scores[entity].predicted += 1
        for entity, start, end in sample.spans:
            scores[entity].gold += 1
            for index, (p_entity, p_start, p_end) in enumerate(predicted):
                if index not in used and p_entity == entity and p_start < end and start < p_end:
                    used.add(index)
                    scores[entity].true_positives += 1
                    scores[entity].exact += (p_start, p_end) == (start, end)
                    break
    return scores


def fastest(passes: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(passes):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def megabytes(texts: Sequence[str]) -> float:
    return sum(len(t.encode("utf-8")) for t in texts) / 1e6


def run_presidio(texts: Sequence[str], passes: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", encoding="utf-8") as corpus_file:
        for text in texts:
            corpus_file.write(json.dumps({"text": text}) + "\n")
        corpus_file.flush()
        done = subprocess.run(
            [str(PRESIDIO_PYTHON), str(RUNNER), corpus_file.name, "--passes", str(passes)],
            check=True,
            capture_output=True,
            text=True,
        )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def presidio_spans(results: list[list[list[Any]]], threshold: float) -> list[list[Span]]:
    return [
        [
            (ENTITY_OF_PRESIDIO[kind], start, end)
            for kind, start, end, found_score in found
            if kind in ENTITY_OF_PRESIDIO and found_score >= threshold
        ]
        for found in results
    ]


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def accuracy_table(
    ours: dict[str, Score], presidio: dict[str, Score], presidio_half: dict[str, Score]
) -> list[str]:
    covered = set(ENTITY_OF_PRESIDIO.values())
    rows = [
        "| entity | gold | ours P | ours R | ours F2 | ours F2 exact | Presidio P | Presidio R "
        "| Presidio F2 | Presidio F2 exact | Presidio F2, score >= 0.5 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for entity in ENTITIES:
        mine = ours[entity]
        cells = [
            entity,
            str(mine.gold),
            percent(mine.precision()),
            percent(mine.recall()),
            percent(mine.f2()),
            percent(mine.f2(exact=True)),
        ]
        if entity in covered:
            theirs, half = presidio[entity], presidio_half[entity]
            cells += [
                percent(theirs.precision()),
                percent(theirs.recall()),
                percent(theirs.f2()),
                percent(theirs.f2(exact=True)),
                percent(half.f2()),
            ]
        else:
            cells += ["n/a"] * 5
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=1000, help="labelled samples")
    parser.add_argument("--clean", type=int, default=100, help="4 KiB prompts without PII")
    parser.add_argument("--passes", type=int, default=5, help="timed passes of ours")
    parser.add_argument("--presidio-passes", type=int, default=2, help="timed passes of Presidio")
    args = parser.parse_args(argv)
    if not PRESIDIO_PYTHON.exists():
        print(f"{PRESIDIO_PYTHON} is missing: run scripts/bench-venv.sh presidio", file=sys.stderr)
        return 2

    samples = corpus(args.samples)
    texts = [s.text for s in samples]
    prompts = clean_prompts(args.clean)
    # Presidio looks for personal data only: the like-for-like run leaves the
    # injection heuristics off, and a second run shows what they add.
    inbound = InboundPipeline.from_spec(InboundFilters(injection="off"), b"bench")
    with_injection = InboundPipeline.from_spec(InboundFilters(injection="flag"), b"bench")
    outbound = OutboundPipeline.from_spec(OutboundFilters(), [], b"bench")

    def stream_all() -> None:
        for prompt in prompts:
            stream = outbound.stream()
            for at in range(0, len(prompt), STREAM_CHUNK):
                stream.feed(prompt[at : at + STREAM_CHUNK])
            stream.finish()

    compiled, reference = Scanner(PII_DETECTORS), Scanner(PII_DETECTORS, compiled=False)
    if not compiled.compiled:
        print("the compiled scanner is missing: run make venv", file=sys.stderr)
        return 2
    scan_compiled = fastest(args.passes, lambda: [compiled.scan(t) for t in texts])
    scan_python = fastest(args.passes, lambda: [reference.scan(t) for t in texts])
    ours_corpus = fastest(args.passes, lambda: [inbound.apply(t) for t in texts])
    ours_clean = fastest(args.passes, lambda: [inbound.apply(t) for t in prompts])
    ours_stream = fastest(args.passes, stream_all)
    injection_corpus = fastest(args.passes, lambda: [with_injection.apply(t) for t in texts])
    injection_clean = fastest(args.passes, lambda: [with_injection.apply(t) for t in prompts])
    predictions = [
        [(f.entity, f.start, f.end) for f in inbound.apply(t).findings if f.entity in ENTITIES]
        for t in texts
    ]
    presidio = run_presidio(texts, args.presidio_passes)
    presidio_clean = run_presidio(prompts, args.presidio_passes)

    ours = score(samples, predictions)
    theirs = score(samples, presidio_spans(presidio["results"], 0.0))
    theirs_half = score(samples, presidio_spans(presidio["results"], 0.5))
    corpus_mb, clean_mb = megabytes(texts), megabytes(prompts)
    gold_per_kb = sum(len(s.spans) for s in samples) / (1000 * corpus_mb)
    rates = {
        "corpus": (corpus_mb / ours_corpus, corpus_mb / presidio["seconds"]),
        "clean": (clean_mb / ours_clean, clean_mb / presidio_clean["seconds"]),
    }
    compared = sorted(set(ENTITY_OF_PRESIDIO.values()), key=ENTITIES.index)
    behind = [
        e for e in compared if ours[e].f2() < theirs[e].f2() or ours[e].f2() < theirs_half[e].f2()
    ]
    slowest_ratio = min(mine / other for mine, other in rates.values())

    command = "python -m tests.benchmarks.bench_filters"
    defaults = parser.parse_args([])
    if vars(args) != vars(defaults):
        command += " " + " ".join(argv if argv is not None else sys.argv[1:])
    body = [
        "## PII filters against Presidio",
        "",
        f"`make bench` (`scripts/bench-venv.sh presidio` then `{command}`), "
        f"{datetime.date.today().isoformat()}, one core of this machine. Ours: "
        "`InboundPipeline.apply` with every entity redacted (the findings and the redacted "
        "text; the detectors run compiled), prompt-injection heuristics off as Presidio has none; "
        "Presidio "
        f"{presidio['version']} (spaCy {presidio['spacy']}, blank English "
        "pipeline, no model) with the recognizers of the compared entity types, registered for "
        "English so that they run on every text: " + ", ".join(presidio["recognizers"]) + "; "
        "phone regions US, GB, NL, DE, FR, ES. Fastest of "
        f"{args.passes} passes (ours) and {args.presidio_passes} (Presidio).",
        "",
        "| texts | MB | ours MB/s | Presidio MB/s | ours / Presidio |",
        "|---|---|---|---|---|",
        f"| labelled corpus: {len(texts)} messages of {1e6 * corpus_mb / len(texts):.0f} bytes "
        f"on average, {gold_per_kb:.1f} gold spans per KB, en/nl/de/fr/es | {corpus_mb:.2f} "
        f"| {rates['corpus'][0]:.1f} | {rates['corpus'][1]:.3f} "
        f"| {rates['corpus'][0] / rates['corpus'][1]:.0f} x |",
        f"| {len(prompts)} prompts of 4 KiB of English without PII | {clean_mb:.2f} "
        f"| {rates['clean'][0]:.1f} | {rates['clean'][1]:.3f} "
        f"| {rates['clean'][0] / rates['clean'][1]:.0f} x |",
        "",
        "With the prompt-injection heuristics on as well, ours filters the corpus at "
        f"{corpus_mb / injection_corpus:.1f} MB/s and the clean prompts at "
        f"{clean_mb / injection_clean:.1f} MB/s. The outbound stream filters the clean prompts in "
        f"{STREAM_CHUNK}-character chunks at {clean_mb / ours_stream:.1f} MB/s, holding back at "
        f"most {outbound.holdback} characters beyond a growing token. The detectors alone "
        f"scan the corpus at {corpus_mb / scan_compiled:.1f} MB/s compiled "
        f"(`native/pii_scan`) and {corpus_mb / scan_python:.1f} MB/s in Python, the "
        f"reference they agree with ({scan_python / scan_compiled:.1f} x).",
        "",
        "Precision (P), recall (R) and F2 in percent; a finding counts when it overlaps a gold "
        'span of its entity type ("exact": same start and end). Presidio\'s own default keeps '
        "every score (threshold 0); the last column keeps scores of 0.5 and more. n/a: Presidio "
        "has no recognizer for the type (no Dutch BSN; its DATE_TIME flags every date, not "
        "dates of birth; no API keys or tokens).",
        "",
        *accuracy_table(ours, theirs, theirs_half),
        "",
        f"Targets: at least 100 x Presidio's throughput (lowest ratio here: {slowest_ratio:.0f} x, "
        f"{'met' if slowest_ratio >= 100 else 'NOT met'}); F2 at least Presidio's on every "
        "entity type both detect ("
        + ("met" if not behind else "NOT met for " + ", ".join(behind))
        + "). The corpus comes from `tests/benchmarks/pii_corpus.py` (seeded), which was "
        "written together with the detectors: its formats are ones they know, so read our "
        "recall as an upper bound and the comparison as the same texts for both, not as "
        "accuracy on real traffic.",
    ]
    write_section(SECTION, "\n".join(body))
    print("\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
