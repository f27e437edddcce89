"""No credentials in the repository or in what a run writes.

1. Every tracked file (``git ls-files``: code, configs, deploy recipes, docs) is scanned for
   things that look like secrets: private-key blocks, certificates, cloud/API tokens,
   ``password = "…"``-style assignments with literal values, URLs with a password. A hit
   fails naming the file and line. A line may opt out with ``pragma: allowlist secret``
   (none does today).
2. No key or certificate file is tracked, and the TLS recipe's default output directory and
   key/cert suffixes are ignored by git (``deploy/make-certs.sh`` writes them at run time).
3. What a run records — ``run.json`` (configuration, errors), ``run-summary.json``, the
   report — holds no credential from the environment or the configuration
   (:mod:`pausdenoise.redact`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pausdenoise.cli import EXIT_FAILURE, main
from pausdenoise.redact import MASK, is_sensitive_name, redact, redact_text

ROOT = Path(__file__).resolve().parents[2]

_NAME = r"[A-Za-z0-9_.-]*(?:passw(?:or)?d|passwd|passphrase|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|auth[_-]?token|client[_-]?secret)[A-Za-z0-9_]*"  # noqa: E501
#: (what, regex). Literal values only: ``$VAR``, ``${VAR}``, ``<placeholder>`` and ``***``
#: are references or masks, not secrets.
PATTERNS: list[tuple[str, re.Pattern[str]]] = [
    ("private key block", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")),
    ("certificate block", re.compile(r"-----BEGIN CERT" r"IFICATE-----")),
    ("AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    ("GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{40,})")),
    ("Slack token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}")),
    ("Google API key", re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b")),
    ("OpenAI-style key", re.compile(r"\bsk-[A-Za-z0-9]{32,}\b")),
    ("JSON web token", re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.")),
    ("URL with credentials", re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@'\"]+:(?!\$|\*)[^/\s@'\"]{3,}@")),
    ("quoted secret assignment", re.compile(
        rf"(?i)\b(?P<name>{_NAME})\b['\"]?\s*[:=]\s*(['\"])(?![$<*{{%])[^'\"\s]{{6,}}\2")),
    ("unquoted secret assignment", re.compile(
        rf"(?i)^\s*(?:export\s+)?(?P<name>{_NAME})\s*[:=]\s*(?![$<*{{%'\"])[^\s#'\"]{{6,}}\s*$")),
]
#: Names that hold a reference to a secret, not the secret (``secretName: my-tls`` in
#: Kubernetes, ``password_file: /run/…``).
_REFERENCE_NAME = re.compile(r"(?i)(name|file|path|ref|dir|env|var|id|mode|type|length|mount)$")
#: Only these files may carry the unquoted form (configs and shell, where values are
#: unquoted); in code an unquoted right-hand side is an expression, not a literal.
_UNQUOTED_SUFFIXES = {".yaml", ".yml", ".toml", ".ini", ".cfg", ".env", ".sh", ".conf",
                      ".properties", ""}
_KEY_FILE_SUFFIXES = {".pem", ".key", ".crt", ".cer", ".der", ".csr", ".p12", ".pfx", ".jks",
                      ".keystore", ".ppk", ".asc", ".gpg"}
_KEY_FILE_NAMES = {"id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", ".netrc", ".pgpass",
                   "credentials", ".env"}


def scan_text(name: str, text: str) -> list[str]:
    """``file:line: what`` for every line of ``text`` that looks like a secret."""
    hits = []
    suffix = Path(name).suffix.lower()
    for lineno, line in enumerate(text.splitlines(), 1):
        if "pragma: allowlist secret" in line:
            continue
        for what, pattern in PATTERNS:
            if what == "unquoted secret assignment" and suffix not in _UNQUOTED_SUFFIXES:
                continue
            m = pattern.search(line)
            if m is None:
                continue
            if "name" in pattern.groupindex and _REFERENCE_NAME.search(m["name"]):
                continue
            hits.append(f"{name}:{lineno}: {what}")
    return hits


def _tracked() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [f for f in out.stdout.decode().split("\0") if f]


def test_tracked_files_hold_no_secrets():
    files = _tracked()
    assert len(files) > 50  # the scan really ran over the repository
    hits = []
    for name in files:
        path = ROOT / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary
            continue
        hits += scan_text(name, data.decode("utf-8", "replace"))
    assert not hits, "possible secrets in tracked files:\n" + "\n".join(hits)


def test_no_key_or_certificate_file_is_tracked():
    bad = [f for f in _tracked()
           if Path(f).suffix.lower() in _KEY_FILE_SUFFIXES or Path(f).name in _KEY_FILE_NAMES]
    assert not bad, f"key/certificate/credential files tracked: {bad}"


@pytest.mark.parametrize("path", ["certs/ca.key", "certs/client.pem", "deploy/certs/ca.key",
                                  "tls/worker.key", "x/ca.pem"])
def test_generated_tls_material_is_ignored_by_git(path):
    """deploy/make-certs.sh writes ca.key and *.pem/*.key into OUTDIR (default ./certs)."""
    _tracked()
    out = subprocess.run(["git", "check-ignore", "-q", "--no-index", path], cwd=ROOT)
    assert out.returncode == 0, f"{path} would not be ignored by git"


def _samples() -> dict[str, str]:
    """One planted example per pattern, assembled at run time so that this file itself
    holds none of them literally."""
    k = "KEY"
    return {
        "private key block": f"-----BEGIN RSA PRIVATE {k}-----",
        "certificate block": "-----BEGIN " + "CERTIFICATE-----",
        "AWS access key id": "aws_id = " + "AKIA" + "Q" * 16,
        "GitHub token": "token " + "ghp_" + "a1" * 18,
        "Slack token": "xoxb" + "-1234567890-abcdef",
        "Google API key": "AIza" + "B" * 35,
        "OpenAI-style key": "sk-" + "c" * 40,
        "JSON web token": "eyJ" + "a" * 12 + ".eyJ" + "b" * 12 + ".sig",
        "URL with credentials": "https://alice:" + "s3cr3tpw" + "@example.org/x",
        "quoted secret assignment": "DB_PASSWORD = '" + "hunter2hunter" + "'",
        "unquoted secret assignment": "export API_TOKEN=" + "abcdef123456",
    }


@pytest.mark.parametrize("what", list(_samples()))
def test_the_scanner_finds_each_kind_of_secret(what):
    sample = _samples()[what]
    name = "deploy/env.sh" if what == "unquoted secret assignment" else "pkg/mod.py"
    hits = scan_text(name, f"first line\n{sample}\n")
    assert f"{name}:2: {what}" in hits


@pytest.mark.parametrize("line", [
    "export API_TOKEN=$API_TOKEN",
    'api_key: "${API_KEY}"',
    "password: <your password>",
    "tls://scheduler:8786",
    "key: /path/to/client.key",
    'token = "***"',
    "band_token: 0",
    "secretName: pausdenoise-dask-tls",
    "password_file: /run/secrets/db",
])
def test_the_scanner_leaves_references_and_placeholders_alone(line):
    assert scan_text("configs/x.yaml", line) == []
    assert scan_text("pkg/x.py", line) == []


@pytest.mark.parametrize("line", ['password = os.environ["DB_PASSWORD"]',
                                  "token = self._token", "api_key = load_key(path)"])
def test_the_scanner_leaves_code_expressions_alone(line):
    assert scan_text("pkg/x.py", line) == []


# --------------------------------------------------------------------------- redaction

SECRET = "pd-" + "Zq8Xv2Lm9Ks4Tn7W"  # a value no real file or output holds by chance


def test_redact_text_and_objects():
    env = {"MY_SERVICE_TOKEN": SECRET, "HOME": "/root", "SHORT_KEY": "1"}
    assert redact_text(f"path /data/{SECRET}/x", env) == f"path /data/{MASK}/x"
    assert redact_text("export WANDB_API_KEY=abc123def", {}) == f"export WANDB_API_KEY={MASK}"
    url = "https://bob:"  # the password is appended so that this file holds no URL with one
    assert redact_text(url + "pw123456@host/x", {}) == url + MASK + "@host/x"
    assert redact_text("export TOKEN=$TOKEN; band_token: 0", {}) == (
        "export TOKEN=$TOKEN; band_token: 0")
    assert redact_text("1 of 1 done", env) == "1 of 1 done"  # short values are not searched
    obj = {"db_password": "pw", "password_file": None, "n": 3, "band_token": 0,
           "prologue": [f"export X_SECRET={SECRET}"], "fingerprint": SECRET,
           "nested": {"api_key": "abc", "note": f"uses {SECRET}"}}
    out = redact(obj, env)
    assert out == {"db_password": MASK, "password_file": None, "n": 3, "band_token": 0,
                   "prologue": [f"export X_SECRET={MASK}"], "fingerprint": SECRET,
                   "nested": {"api_key": MASK, "note": f"uses {MASK}"}}
    assert obj["db_password"] == "pw"  # a copy
    for name in ("AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN", "PGPASSWORD", "WANDB_API_KEY",
                 "HF_TOKEN", "MY_KEY"):
        assert is_sensitive_name(name), name
    for name in ("HOME", "PATH", "key", "cert", "ca_file", "KEYWORDS", "monkey"):
        assert not is_sensitive_name(name), name


def test_run_records_hold_no_environment_or_config_secret(tmp_path, monkeypatch, capsys):
    """A run with a secret in the environment, in the configuration (a job-script prologue
    line) and in paths that error messages quote (a stage failure, a configuration error):
    run.json, run-summary.json and stderr hold none of them; the configuration fingerprint is
    unchanged by the redaction."""
    monkeypatch.setenv("PAUSDENOISE_TEST_TOKEN", SECRET)
    monkeypatch.setenv("PAUSDENOISE_TEST_PASSWORD", SECRET[::-1])
    cfg = {"cluster": {"kind": "threads", "n_workers": 1,
                       "jobqueue": {"job_script_prologue": [
                           "module load python", f"export DB_PASSWORD={SECRET[::-1]}"]}},
           "simulate": {"seed": 1, "ccd_shape": [64, 64], "bands": ["NB455"],
                        "exposures_per_band": 1, "galaxy_density": 40}}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["run", "--config", str(path), "--out", str(out), "--stages", "simulate"]) == 0
    capsys.readouterr()
    record_text = (out / "run.json").read_text()
    record = json.loads(record_text)
    assert record["stages"]["simulate"]["status"] == "done"
    assert record["config"]["cluster"]["jobqueue"]["job_script_prologue"] == [
        "module load python", f"export DB_PASSWORD={MASK}"]
    assert SECRET not in record_text and SECRET[::-1] not in record_text
    # a rerun still finds simulate up to date: fingerprints are not redacted
    main(["run", "--config", str(path), "--out", str(out), "--stages", "simulate"])
    assert "[simulate] up to date" in capsys.readouterr().out
    summary = (out / "run-summary.json").read_text()
    assert SECRET not in summary and SECRET[::-1] not in summary

    # a stage failure whose message quotes a path holding SECRET (ingest: input not found)
    failing = {**cfg, "input": {"source": "fits", "fits_path": str(tmp_path / SECRET / "f")}}
    path.write_text(yaml.safe_dump(failing))
    out2 = tmp_path / "out2"
    assert main(["run", "--config", str(path), "--out", str(out2),
                 "--stages", "ingest"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    record_text = (out2 / "run.json").read_text()
    record = json.loads(record_text)
    assert record["stages"]["ingest"]["status"] == "failed"
    assert MASK in record["stages"]["ingest"]["error"]
    for text in (record_text, err):
        assert SECRET not in text and SECRET[::-1] not in text

    # a configuration error quoting such a path (a missing catalogue) before any work
    bad = {**cfg, "input": {"catalogue": str(tmp_path / SECRET / "catalogue.parquet")}}
    path.write_text(yaml.safe_dump(bad))
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "out3"),
                 "--stages", "simulate,photometry"]) == 2
    err = capsys.readouterr().err
    assert MASK in err and SECRET not in err
    assert not (tmp_path / "out3").exists()
