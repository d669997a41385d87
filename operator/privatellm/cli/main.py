"""Entry point of the `privatellm` command."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

from privatellm.api.crd import crd_files
from privatellm.cli.audit_cmd import UsageError, add_audit_parser, record_control_action, run_audit
from privatellm.cli.connector_cmd import add_connector_parsers, run_connector, run_sidecar
from privatellm.cli.cost_cmd import add_cost_parser, run_cost
from privatellm.cli.dataflow_cmd import add_dataflow_parser, run_dataflow
from privatellm.cli.filter_cmd import add_filter_parser, run_filter
from privatellm.cli.gateway_cmd import add_gateway_parser, run_gateway
from privatellm.cli.quarantine_cmd import add_quarantine_parser, run_quarantine
from privatellm.devcluster import LocalCluster, Toolchain
from privatellm.keys import TransitClient, VaultClient, VaultError
from privatellm.keys.drill import (
    OUTPUT_FORMATS,
    DrillError,
    format_compromise,
    format_rotation,
    rotate_key,
    run_compromise_drill,
)

DEFAULT_CRD_DIRS = (Path("crds"), Path("charts/privatellm/crds"))


def _write_crds(directories: Sequence[Path], check: bool) -> int:
    """Write the generated CRDs into each directory, or with `check` report drift."""
    stale: list[Path] = []
    for directory in directories:
        for name, text in crd_files().items():
            path = directory / name
            if check:
                if not path.exists() or path.read_text() != text:
                    stale.append(path)
                continue
            directory.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(f"wrote {path}")
    for path in stale:
        print(f"out of date: {path} (run `make crds`)", file=sys.stderr)
    return 1 if stale else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="privatellm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version('privatellm')}")
    commands = parser.add_subparsers(dest="command", required=True)
    crds = commands.add_parser("crds", help="generate the CustomResourceDefinitions")
    crds.add_argument(
        "--out",
        type=Path,
        action="append",
        help="directory to write into (repeatable; default: crds/ and the chart's crds/)",
    )
    crds.add_argument(
        "--check", action="store_true", help="exit 1 when a written CRD differs from the models"
    )
    cluster = commands.add_parser(
        "dev-cluster", help="start or stop the local simulated cluster (KWOK GPU nodes)"
    )
    cluster.add_argument("action", choices=("up", "down", "status"))
    cluster.add_argument(
        "--dir", type=Path, default=Path(".devcluster"), help="folder for state, logs, kubeconfig"
    )
    demo = commands.add_parser(
        "demo-requests",
        help="serve requests through a namespace's gateway, configured by the operator, here",
    )
    demo.add_argument("--namespace", required=True, help="the namespace the demo applied")
    demo.add_argument(
        "--dir", type=Path, default=Path(".devcluster/demo"), help="folder for keys, logs, audit"
    )
    demo.add_argument(
        "--vllm-dir",
        type=Path,
        default=Path(".bench/vllm"),
        help="vLLM's CPU build (make test-vllm); without it a stand-in model answers",
    )
    op = commands.add_parser("operator", help="run the operator (kopf) against the cluster")
    op.add_argument(
        "--namespace",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; default: every namespace)",
    )
    op.add_argument(
        "--liveness",
        default=None,
        help="serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    op.add_argument("--workers", type=int, default=4, help="objects reconciled at the same time")
    op.add_argument(
        "--audit-dir",
        type=Path,
        default=None,
        help="record control actions (AccessPolicy changes) in this audit log",
    )
    op.add_argument("--audit-signing-key", type=Path, default=None, help="its Ed25519 key (PEM)")
    op.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)"
    )
    op.add_argument(
        "--resync-seconds",
        type=float,
        default=60,
        help="period of the full re-check of every object",
    )
    _add_keys_parser(commands)
    add_filter_parser(commands)
    add_gateway_parser(commands)
    add_audit_parser(commands)
    add_quarantine_parser(commands)
    add_connector_parsers(commands)
    add_dataflow_parser(commands)
    add_cost_parser(commands)
    return parser


def _add_keys_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser(
        "keys",
        help="rotate a Transit key or run the compromise drill "
        "(Vault from BAO_ADDR/BAO_TOKEN or VAULT_ADDR/VAULT_TOKEN)",
    )
    actions = keys.add_subparsers(dest="keys_command", required=True)
    rotate = actions.add_parser("rotate", help="add a key version; print the new latest version")
    compromise = actions.add_parser(
        "compromise",
        help="rotate, rewrap every stored record, then revoke the old versions; "
        "exit 1 when a record could not be re-protected, 2 on errors",
    )
    compromise.add_argument(
        "--records",
        type=Path,
        action="append",
        required=True,
        metavar="DIR",
        help="folder holding envelope records (*.rec, searched recursively); repeat it for "
        "every place that holds records of the key, since all are rewrapped before the "
        "old versions are revoked",
    )
    for action in (rotate, compromise):
        action.add_argument("key", help="name of the Transit key")
        action.add_argument(
            "--mount", default="transit", help="path of the Transit engine (default: transit)"
        )
        action.add_argument("--format", choices=OUTPUT_FORMATS, default="table")
        action.add_argument(
            "--audit-dir",
            type=Path,
            default=None,
            help="record the action in this audit log first (with the Vault token's identity)",
        )
        action.add_argument("--audit-signing-key", type=Path, default=None)


def _run_operator(args: argparse.Namespace) -> int:
    import kopf

    if args.audit_dir and not args.audit_signing_key:
        print("operator: --audit-dir needs --audit-signing-key", file=sys.stderr)
        return 2

    from privatellm.controllers.runtime import check_settings, operator_registry

    try:
        check_settings(os.environ)
    except (ValueError, OSError) as error:
        print(f"operator: {error}", file=sys.stderr)
        return 2
    kopf.configure(verbose=False)
    # kopf logs every watch event it hands over at INFO; the controllers log what they do.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    kopf.run(
        registry=operator_registry(),
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=args.liveness,
        memo=kopf.Memo(
            options={
                "workers": args.workers,
                "resync_seconds": args.resync_seconds,
                "metrics_port": args.metrics_port,
                "audit_dir": args.audit_dir,
                "audit_signing_key": args.audit_signing_key,
            }
        ),
    )
    return 0


def _dev_cluster(action: str, workdir: Path) -> int:
    cluster = LocalCluster(workdir.resolve(), Toolchain.locate())
    if action == "up":
        if cluster.running():
            print(f"already running; KUBECONFIG={cluster.kubeconfig}")
            return 0
        cluster.stop()
        shutil.rmtree(cluster.workdir, ignore_errors=True)
        cluster.workdir.mkdir(parents=True)
        cluster.start()
        print(f"export KUBECONFIG={cluster.kubeconfig}")
    elif action == "down":
        cluster.stop()
        shutil.rmtree(cluster.workdir, ignore_errors=True)
    else:
        print("running" if cluster.running() else "stopped")
        return 0 if cluster.running() else 3
    return 0


def _run_keys(args: argparse.Namespace) -> int:
    """Exit 0 when done, 1 when the drill left records unprotected, 2 when it could not run."""
    failed = f"privatellm keys {args.keys_command}:"
    try:
        vault = VaultClient.from_env()
    except ValueError as error:
        print(failed, error, file=sys.stderr)
        return 2
    transit = TransitClient(vault, args.mount)
    try:
        if args.audit_dir:
            record_control_action(
                args.audit_dir,
                args.audit_signing_key,
                f"key.{args.keys_command}",
                vault.lookup_self(),
                key=f"{args.mount}/{args.key}",
            )
        if args.keys_command == "rotate":
            print(format_rotation(rotate_key(transit, args.key), args.format))
            return 0
        report = run_compromise_drill(transit, args.key, args.records)
    except (DrillError, VaultError, UsageError) as error:
        print(failed, error, file=sys.stderr)
        return 2
    print(format_compromise(report, args.format))
    return 0 if report.complete else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "crds":
        return _write_crds(args.out or DEFAULT_CRD_DIRS, args.check)
    if args.command == "operator":
        return _run_operator(args)
    if args.command == "dev-cluster":
        return _dev_cluster(args.action, args.dir)
    if args.command == "demo-requests":
        from privatellm.devcluster.demo import run_demo
        from privatellm.devcluster.vllm import VLLMInstall
        from privatellm.kube.client import Kube, new_api_client

        return run_demo(
            Kube(new_api_client()), args.namespace, args.dir, VLLMInstall(args.vllm_dir)
        )
    if args.command == "keys":
        return _run_keys(args)
    if args.command == "filter":
        return run_filter(args)
    if args.command == "gateway":
        return run_gateway(args)
    if args.command == "audit":
        return run_audit(args)
    if args.command == "quarantine":
        return run_quarantine(args)
    if args.command == "sidecar":
        return run_sidecar(args)
    if args.command == "connector":
        return run_connector(args)
    if args.command == "dataflow":
        return run_dataflow(args)
    if args.command == "cost":
        return run_cost(args)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
