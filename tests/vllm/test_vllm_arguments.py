"""Every command line the operator renders for vLLM, read by vLLM's own argument parser.

The golden manifests (tests/unit/golden) hold each rendered serving container; their
arguments, and each flag a user may add through spec.engine.extraArgs, are parsed by
the OpenAI server's parser of the vLLM in .bench/vllm, strictly: no abbreviations, so
a flag that only works as a prefix of vLLM's real one (`--ssl-ca-cert` for
`--ssl-ca-certs`) fails here instead of in a cluster.
"""

from __future__ import annotations

import json
import subprocess
from typing import Any, get_args

import pytest
import yaml

from privatellm.api.inference import VLLM_DTYPES, VLLM_QUANTIZATIONS
from privatellm.render.engine import ALLOWED_EXTRA_FLAGS

from .conftest import ROOT, VLLM_PYTHON

GOLDEN = ROOT / "tests" / "unit" / "golden"
SERVER_MODULE = "vllm.entrypoints.openai.api_server"

# Run in vLLM's own environment: parses each argument list on stdin, answers with the
# parser's error per list (None when it parsed).
PARSE = """
import contextlib, io, json, sys
try:
    from vllm.entrypoints.launchers.cli_args import make_arg_parser
except ImportError:  # releases before the launchers package
    from vllm.entrypoints.openai.cli_args import make_arg_parser
try:
    from vllm.utils.argparse_utils import FlexibleArgumentParser
except ImportError:
    from vllm.utils import FlexibleArgumentParser

def error_of(args):
    parser = make_arg_parser(FlexibleArgumentParser(allow_abbrev=False))
    parser.allow_abbrev = False
    message = io.StringIO()
    try:
        with contextlib.redirect_stderr(message):
            parser.parse_args(args)
    except SystemExit:
        return message.getvalue().strip().splitlines()[-1]
    return None

print(json.dumps([error_of(args) for args in json.load(sys.stdin)]))
"""


def serving_containers(document: Any) -> list[dict[str, Any]]:
    """The vLLM containers anywhere in a rendered object."""
    found: list[dict[str, Any]] = []
    if isinstance(document, dict):
        if SERVER_MODULE in (document.get("command") or []):
            found.append(document)
        for value in document.values():
            found += serving_containers(value)
    elif isinstance(document, list):
        for value in document:
            found += serving_containers(value)
    return found


def rendered_argument_lists() -> dict[str, list[str]]:
    lists = {}
    for path in sorted(GOLDEN.glob("*.yaml")):
        containers = [
            c for d in yaml.safe_load_all(path.read_text()) for c in serving_containers(d)
        ]
        for number, container in enumerate(containers):
            lists[f"{path.stem}[{number}]"] = list(container.get("args") or [])
    return lists


def parse_errors(argument_lists: list[list[str]]) -> list[str | None]:
    if not VLLM_PYTHON.exists():
        pytest.skip("vLLM is not installed: make test-vllm sets it up")
    answer = subprocess.run(
        [str(VLLM_PYTHON), "-c", PARSE],
        input=json.dumps(argument_lists),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    errors: list[str | None] = json.loads(answer.stdout.strip().splitlines()[-1])
    return errors


def test_every_rendered_vllm_command_line_parses_strictly() -> None:
    lists = rendered_argument_lists()
    assert len(lists) >= 6, sorted(lists)  # each golden model's zones
    errors = parse_errors(list(lists.values()))
    failures = {name: error for name, error in zip(lists, errors, strict=True) if error}
    assert failures == {}


def test_every_flag_a_user_may_add_is_one_vllm_knows() -> None:
    base = ["--model", "/weights"]
    samples = {
        "--speculative-config": '{"method": "ngram"}',
        "--structured-outputs-config": '{"backend": "xgrammar"}',
        "--kv-cache-dtype": "auto",
    }
    lists = {
        flag: base + ([flag, samples.get(flag, "8")] if takes_value else [flag])
        for flag, takes_value in ALLOWED_EXTRA_FLAGS.items()
    }
    errors = parse_errors(list(lists.values()))
    failures = {flag: error for flag, error in zip(lists, errors, strict=True) if error}
    assert failures == {}


def test_every_dtype_and_quantization_the_api_accepts_is_one_vllm_knows() -> None:
    lists = {
        f"--dtype {dtype}": ["--model", "/weights", "--dtype", dtype]
        for dtype in get_args(VLLM_DTYPES)
    }
    lists |= {
        f"--quantization {method}": ["--model", "/weights", "--quantization", method]
        for method in get_args(VLLM_QUANTIZATIONS)
    }
    errors = parse_errors(list(lists.values()))
    failures = {name: error for name, error in zip(lists, errors, strict=True) if error}
    assert failures == {}
