"""Runs Presidio's pattern recognizers over a JSON-lines corpus; prints findings and timing as JSON.

Runs in its own virtual environment (`scripts/bench-venv.sh presidio` creates
.bench/presidio), so it imports nothing from this project. spaCy models cannot
be downloaded here, so the NLP engine is a blank English spaCy pipeline: Presidio's
pattern recognizers, checksums and context words work as usual; its NER-based
entities (names, locations) do not, and none of them is compared.

Usage: python presidio_runner.py CORPUS.jsonl [--passes N] [--regions US,GB,...]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib.metadata import version

import spacy
import tldextract
from presidio_analyzer import AnalyzerEngine, RecognizerRegistry
from presidio_analyzer.nlp_engine import SpacyNlpEngine
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    DeTaxIdRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    PhoneRecognizer,
    UkNinoRecognizer,
    UsSsnRecognizer,
)

LANGUAGE = "en"


class BlankSpacyNlpEngine(SpacyNlpEngine):
    """Presidio's spaCy engine on `spacy.blank`: tokens and lemmas-as-text, no model."""

    def load(self) -> None:
        self.nlp = {LANGUAGE: spacy.blank(LANGUAGE)}


def offline_suffix_list() -> None:
    """The e-mail recognizer's domain check uses the bundled Public Suffix List, not the web."""
    tldextract.tldextract.TLD_EXTRACTOR = tldextract.TLDExtract(suffix_list_urls=())


def analyzer(regions: tuple[str, ...]) -> AnalyzerEngine:
    """Presidio with the recognizers of the entity types the benchmark compares.

    Country-specific recognizers (UK NINO, German tax ID) are registered for the
    pipeline's language, so they run on every text as ours do.
    """
    engine = BlankSpacyNlpEngine(models=[{"lang_code": LANGUAGE, "model_name": "blank"}])
    engine.load()
    registry = RecognizerRegistry(supported_languages=[LANGUAGE])
    for recognizer in (
        EmailRecognizer(supported_language=LANGUAGE),
        PhoneRecognizer(supported_language=LANGUAGE, supported_regions=regions),
        IbanRecognizer(supported_language=LANGUAGE),
        CreditCardRecognizer(supported_language=LANGUAGE),
        UsSsnRecognizer(supported_language=LANGUAGE),
        UkNinoRecognizer(supported_language=LANGUAGE),
        DeTaxIdRecognizer(supported_language=LANGUAGE),
        IpRecognizer(supported_language=LANGUAGE),
    ):
        registry.add_recognizer(recognizer)
    return AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=[LANGUAGE])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("corpus", help="JSON lines with a text field each")
    parser.add_argument("--passes", type=int, default=2, help="timed passes; the fastest counts")
    parser.add_argument("--regions", default="US,GB,NL,DE,FR,ES", help="phone number regions")
    args = parser.parse_args()
    with open(args.corpus, encoding="utf-8") as lines:
        texts = [json.loads(line)["text"] for line in lines if line.strip()]
    offline_suffix_list()
    engine = analyzer(tuple(args.regions.split(",")))
    engine.analyze(text=texts[0], language=LANGUAGE)  # warm up: compile, load tables
    seconds = float("inf")
    results: list[list[list[object]]] = []
    for _ in range(args.passes):
        started = time.perf_counter()
        found = [engine.analyze(text=text, language=LANGUAGE) for text in texts]
        seconds = min(seconds, time.perf_counter() - started)
        results = [[[r.entity_type, r.start, r.end, r.score] for r in one] for one in found]
    json.dump(
        {
            "version": version("presidio-analyzer"),
            "spacy": version("spacy"),
            "recognizers": sorted(r.name for r in engine.registry.recognizers),
            "seconds": seconds,
            "results": results,
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
