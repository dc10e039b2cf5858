"""Fixtures that start the project's binaries on free loopback ports.

Each server prints one line on stdout, `... listening on http://ADDR`, once it
accepts connections; fixtures read it and stop the process by its PID afterwards.
Binaries come from $BEDROCK_BIN_DIR (default: target/debug).
"""
import json
import os
import pathlib
import subprocess
import urllib.request

import boto3
import pytest
from botocore.config import Config

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN_DIR = pathlib.Path(os.environ.get("BEDROCK_BIN_DIR", ROOT / "target" / "debug"))

HAIKU = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
HAIKU_BASE = "anthropic.claude-3-5-haiku-20241022-v1:0"


class Server:
    """A running binary and the URLs it printed."""

    def __init__(self, args, env=None):
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.urls = {}
        for line in self.proc.stdout:
            if " listening on " in line:
                name, url = line.strip().split(" listening on ")
                self.urls[name] = url
            if line.strip() == "ready" or (self.urls and not args[0].endswith("bedrock-proxy")):
                break
        if not self.urls:
            self.stop()
            raise RuntimeError(f"{args[0]} did not start: {self.proc.stderr.read()}")

    @property
    def url(self):
        return next(iter(self.urls.values()))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_sim(*extra):
    return Server([str(BIN_DIR / "bedrock-sim"), "--listen", "127.0.0.1:0", *extra])


@pytest.fixture
def sim():
    server = start_sim("--time-scale", "0")
    yield server
    server.stop()


def bedrock_client(endpoint, **kwargs):
    """boto3's bedrock-runtime client as an application would build it, retries off."""
    params = dict(
        service_name="bedrock-runtime",
        endpoint_url=endpoint,
        region_name="us-east-2",
        aws_access_key_id="AKIDPYTHONTEST",
        aws_secret_access_key="python-secret",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, read_timeout=60),
    )
    params.update(kwargs)
    return boto3.client(**params)


def http_json(method, url, body=None, headers=None):
    """A plain HTTP call returning (status, parsed JSON or None)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


def user(text):
    return [{"role": "user", "content": [{"text": text}]}]
