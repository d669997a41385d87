"""The vLLM server's command line, and the check of the extra arguments a user may add."""

from __future__ import annotations

from collections.abc import Sequence

from privatellm.api import InferenceDeploymentSpec

SERVING_PORT = 8000
WEIGHTS_DIR = "/weights"
# Writable emptyDir used as HOME: vLLM, torch, triton and Hugging Face keep caches under it.
HOME_DIR = "/home/vllm"
# The Secret follows the kubernetes.io/tls layout, with the CA that signs gateway certificates.
TLS_DIR = "/etc/privatellm/tls"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"
TLS_CA_FILE = "ca.crt"
# ssl.CERT_REQUIRED: the handshake fails without a client certificate signed by the CA.
CERT_REQUIRED = "2"

# Flags a user may add through spec.engine.extraArgs, and whether each takes a value. The
# list is short on purpose: every flag on it has been judged safe for a server that only
# the gateway reaches and that must never load code or weights from elsewhere.
ALLOWED_EXTRA_FLAGS: dict[str, bool] = {
    "--enable-prefix-caching": False,
    # Prefix caching is on by default; turning it off closes a timing side channel between
    # the tenants of one model.
    "--no-enable-prefix-caching": False,
    "--enable-chunked-prefill": False,
    "--no-enable-chunked-prefill": False,
    "--max-num-seqs": True,
    "--max-num-batched-tokens": True,
    "--kv-cache-dtype": True,
    "--block-size": True,
    "--seed": True,
    "--enable-lora": False,
    "--max-loras": True,
    "--max-lora-rank": True,
    "--speculative-config": True,
    # Which structured-output backend serves JSON schemas and grammars (JSON, a value).
    "--structured-outputs-config": True,
    "--disable-custom-all-reduce": False,
    "--enforce-eager": False,
}

# Flags the operator sets itself, and where in the spec they come from.
OPERATOR_FLAGS: dict[str, str] = {
    "--model": "spec.model.source",
    "--served-model-name": "spec.model.name",
    "--tensor-parallel-size": "spec.engine.tensorParallelSize",
    "--max-model-len": "spec.engine.maxModelLen",
    "--gpu-memory-utilization": "spec.engine.gpuMemoryUtilization",
    "--dtype": "spec.engine.dtype",
    "--quantization": "spec.engine.quantization",
    "--port": "the operator (the Service and probes depend on it)",
    "--ssl-certfile": "spec.encryption.tls",
    "--ssl-keyfile": "spec.encryption.tls",
    "--ssl-ca-certs": "spec.encryption.tls",
    "--ssl-cert-reqs": "spec.encryption.tls",
}

# Known vLLM flags that are refused, and why.
REFUSED_FLAGS: dict[str, str] = {
    "--enable-log-requests": (
        "it writes every prompt to the server's log, outside the gateway's sealed audit"
    ),
    "--trust-remote-code": (
        "it runs Python code shipped with the weights inside the server, so it is refused"
        " for security"
    ),
    "--pipeline-parallel-size": (
        "a replica gets exactly resources.gpusPerReplica GPUs, which equals"
        " engine.tensorParallelSize; pipeline stages would need more GPUs than the Pod has"
    ),
}


def vllm_args(spec: InferenceDeploymentSpec) -> list[str]:
    """Arguments of the vLLM OpenAI-compatible server for `spec`, extraArgs last."""
    engine = spec.engine
    args = [
        "--model",
        WEIGHTS_DIR,
        "--served-model-name",
        spec.model.name,
        "--tensor-parallel-size",
        str(engine.tensor_parallel_size),
    ]
    if engine.max_model_len is not None:
        args += ["--max-model-len", str(engine.max_model_len)]
    args += ["--gpu-memory-utilization", str(engine.gpu_memory_utilization)]
    args += ["--dtype", engine.dtype]
    if engine.quantization is not None:
        args += ["--quantization", engine.quantization]
    args += [
        "--port",
        str(SERVING_PORT),
        "--ssl-certfile",
        f"{TLS_DIR}/{TLS_CERT_FILE}",
        "--ssl-keyfile",
        f"{TLS_DIR}/{TLS_KEY_FILE}",
    ]
    if spec.encryption.tls == "mutual":
        args += ["--ssl-ca-certs", f"{TLS_DIR}/{TLS_CA_FILE}", "--ssl-cert-reqs", CERT_REQUIRED]
    return args + list(engine.extra_args)


def _flag_problem(flag: str, seen: set[str]) -> str | None:
    if flag in OPERATOR_FLAGS:
        return f"{flag} is set by the operator from {OPERATOR_FLAGS[flag]}"
    if flag in REFUSED_FLAGS:
        return f"{flag} is not allowed: {REFUSED_FLAGS[flag]}"
    if flag not in ALLOWED_EXTRA_FLAGS:
        allowed = ", ".join(sorted(ALLOWED_EXTRA_FLAGS))
        return f"{flag} is not a vLLM flag the operator knows; allowed: {allowed}"
    if flag in seen:
        return f"{flag} is given more than once"
    return None


def check_extra_args(extra: Sequence[str]) -> list[str]:
    """Problems with spec.engine.extraArgs, each naming its item; an empty list means fine.

    A flag is written `--flag`, `--flag=value` or `--flag value`; every flag must be on
    ALLOWED_EXTRA_FLAGS and take a value exactly when vLLM expects one.
    """
    errors: list[str] = []
    seen: set[str] = set()
    # (field, flag) of an allowed flag still waiting for its value
    awaiting: tuple[str, str] | None = None
    # after a refused flag its values are skipped: one message per mistake is enough
    skipping = False
    for i, arg in enumerate(extra):
        field = f"spec.engine.extraArgs[{i}]"
        if not arg.startswith("--"):
            if awaiting is None and not skipping:
                errors.append(f"{field}: {arg!r} is neither a --flag nor the value of one")
            awaiting = None
            continue
        if awaiting is not None:
            errors.append(f"{awaiting[0]}: {awaiting[1]} needs a value")
            awaiting = None
        flag, has_value, _ = arg.partition("=")
        problem = _flag_problem(flag, seen)
        seen.add(flag)
        skipping = problem is not None
        if problem is not None:
            errors.append(f"{field}: {problem}")
        elif ALLOWED_EXTRA_FLAGS[flag] and not has_value:
            awaiting = (field, flag)
        elif not ALLOWED_EXTRA_FLAGS[flag] and has_value:
            errors.append(f"{field}: {flag} takes no value")
    if awaiting is not None:
        errors.append(f"{awaiting[0]}: {awaiting[1]} needs a value")
    return errors
