"""deploy/ checked against the real tools.

- A real Prometheus (Debian's package) scrapes a real bedrock-proxy in front of
  bedrock-sim while boto3 and the OpenAI SDK run a small workload (cache hits
  and misses, streams, a single-flight join, a fallback, a hedge, an upstream
  error, a latency downgrade, Bedrock prompt-cache writes and reads, evictions,
  load shedding, config reloads good and bad, a shared Redis tier that is down);
  then every dashboard query and every rule expression is evaluated through
  Prometheus's HTTP API: each must parse, each dashboard query must return data,
  and the alerts this workload should trip do.
- promtool checks the scrape config and the rules, and runs the rules' unit tests.
- The Kubernetes base and overlays render with kustomize and validate against the
  Kubernetes API schemas (and the Prometheus Operator's CRD models); the configs
  they carry pass `bedrock-proxy check-config`.
- The compose file parses under the compose spec, and what it wires together
  (mounts, ports, provisioning paths, the demo config, the load generator) works.
"""
import concurrent.futures
import hashlib
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml
from botocore.exceptions import ClientError
from openai import OpenAI

from conftest import BIN_DIR, HAIKU, HAIKU_BASE, ROOT, Server, bedrock_client, http_json, start_sim, user

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "bedrock-proxy.json"
SONNET = "us.anthropic.claude-sonnet-4-5-20250929-v1:0"
FAKE_SHA256 = "ab" * 32


def need(tool):
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"`{tool}` is not installed; scripts/test.sh installs it")
    return path


def run(*args, **kwargs):
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, **kwargs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alert_rules():
    groups = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"]
    return [r for g in groups for r in g["rules"]]


def dashboard_targets():
    """(panel title, expr) for every query of every panel."""
    board = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] if p["type"] != "row" for t in p["targets"]]


# ---------------------------------------------------------------- promtool


def test_promtool_checks_the_scrape_config_and_rules_and_runs_their_unit_tests():
    promtool = need("promtool")
    checked = run(promtool, "check", "config", DEPLOY / "prometheus" / "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    rules = run(promtool, "check", "rules", RULES / "alerts.yml", RULES / "objectives.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr
    tested = run(promtool, "test", "rules", DEPLOY / "prometheus" / "tests" / "alerts_test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_alert_is_complete_unit_tested_both_ways_and_documented():
    tests = yaml.safe_load((DEPLOY / "prometheus" / "tests" / "alerts_test.yml").read_text())["tests"]
    cases = [c for t in tests for c in t["alert_rule_test"]]
    readme = (DEPLOY / "README.md").read_text()
    alerts = [r for r in alert_rules() if "alert" in r]
    assert len(alerts) >= 10
    for rule in alerts:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name} has no `for`"
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        for key in ("summary", "description", "runbook"):
            assert rule["annotations"].get(key), f"{name} has no {key}"
        mine = [c for c in cases if c["alertname"] == name]
        assert any(c["exp_alerts"] for c in mine), f"no unit test where {name} fires"
        assert any(not c["exp_alerts"] for c in mine), f"no unit test where {name} stays quiet"
        assert f"`{name}`" in readme, f"deploy/README.md does not explain {name}"


def test_the_prometheusrule_carries_exactly_the_rule_files():
    sys.path.insert(0, str(DEPLOY / "k8s"))
    try:
        import render_prometheusrule
    finally:
        sys.path.pop(0)
    assert (DEPLOY / "k8s" / "base" / "prometheusrule.yaml").read_text() == render_prometheusrule.render(), (
        "deploy/k8s/base/prometheusrule.yaml is stale: run python3 deploy/k8s/render_prometheusrule.py"
    )


# ---------------------------------------------------------------- dashboard (static)


def test_dashboard_is_well_formed_for_grafana_provisioning():
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["title"] and board["schemaVersion"] >= 36
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for name in ("instance", "route"):
        assert variables[name]["includeAll"] and variables[name]["multi"] and variables[name]["allValue"] == ".*"
        assert variables[name]["definition"].startswith("label_values(bedrock_proxy_requests_total")
    ids, cells = set(), set()
    readme = (DEPLOY / "README.md").read_text()
    for p in board["panels"]:
        assert p["id"] not in ids, f"duplicate panel id {p['id']}"
        ids.add(p["id"])
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps another"
                cells.add((x, y))
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["description"], p["title"]
        assert f"**{p['title']}**" in readme, f"deploy/README.md does not explain panel {p['title']!r}"
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            # Every query follows the dashboard's variables.
            assert 'instance=~"$instance"' in t["expr"], (p["title"], t["expr"])
            if "route" in t["expr"] and "bedrock_proxy_cache_redis" not in t["expr"]:
                assert 'route=~"$route"' in t["expr"], (p["title"], t["expr"])


# ---------------------------------------------------------------- a real Prometheus


def prom_get(base, path, **params):
    url = f"{base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as e:
        body = e.read().decode(errors="replace")
        try:
            return json.loads(body)  # Prometheus's own error document (bad_data, ...)
        except ValueError:
            return {"status": "error", "error": f"{e.code}: {body}"}  # e.g. 503 while it starts


def query(base, expr):
    return prom_get(base, "/api/v1/query", query=expr)


def wait_for(what, check, attempts=150, pause=0.2):
    """Polls `check` until it returns something truthy (a bounded loop, not a timing assertion)."""
    for _ in range(attempts):
        got = check()
        if got:
            return got
        time.sleep(pause)
    pytest.fail(f"gave up waiting for {what}")


def grafana(expr, route=".*", instance=".*"):
    """A dashboard query as Grafana sends it with both variables set (All is `.*`)."""
    out = expr.replace("$__rate_interval", "1m").replace("$route", route).replace("$instance", instance)
    assert "$" not in out, f"unsubstituted variable in {expr}"
    return out


def proxy_config(sim_url, redis_port):
    return textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:0"
        auth = "none"
        [admin]
        listen = "127.0.0.1:0"
        [limits]
        max_concurrent_requests = 3       # the workload fills it to see shedding
        [upstreams.sim]
        kind = "simulator"
        endpoint = "{sim_url}"
        [cache]
        max_bytes = 6000                  # a few answers: the workload evicts
        [cache.redis]
        url = "redis://127.0.0.1:{redis_port}/0"
        timeout = "50ms"
        [[routes]]
        name = "haiku"
        aliases = ["haiku"]
        models = ["{HAIKU}", "{HAIKU_BASE}"]
        upstream = "sim"
        upstream_model = "{HAIKU}"
        latency = "optimized"
        fallback = [{{ latency = "standard" }}]
        retries = 1
        hedge_after = "300ms"
        cache = {{ mode = "deterministic", ttl = "1h" }}
        prompt_cache = {{ mode = "auto" }}
        [[routes]]
        name = "sonnet"
        aliases = ["sonnet"]
        models = ["{SONNET}"]
        upstream = "sim"
        latency = "client"
        cache = {{ mode = "deterministic", ttl = "1h" }}
        [[routes]]
        name = "limited"                  # one request a minute: the workload meets the limit
        aliases = ["limited"]
        models = ["{HAIKU_BASE}-limited"]
        upstream = "sim"
        upstream_model = "{HAIKU}"
        cache = {{ mode = "off" }}
        requests_per_minute = 1
        [[tenants]]
        name = "anonymous"                # everyone, with auth = "none": a budget to watch
        usd_per_month = 1000
    """)


@pytest.fixture
def observed(tmp_path):
    """bedrock-sim, bedrock-proxy (its Redis tier pointed at a closed port) and a
    Prometheus scraping the proxy every second with the shipped scrape job and rules."""
    prometheus = need("prometheus")
    sim = start_sim("--time-scale", "0")
    config = tmp_path / "proxy.toml"
    config.write_text(proxy_config(sim.url, free_port()))
    proxy = Server([str(BIN_DIR / "bedrock-proxy"), "--config", str(config)])
    admin = proxy.urls["admin"]

    shipped = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    shipped["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    shipped["rule_files"] = [str(DEPLOY / "prometheus" / f) for f in shipped["rule_files"]]
    (job,) = shipped["scrape_configs"]
    job["static_configs"] = [{"targets": [urllib.parse.urlparse(admin).netloc]}]
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(yaml.safe_dump(shipped))
    port = free_port()
    prom = subprocess.Popen(
        [prometheus, f"--config.file={prom_config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "prometheus.log", "w"),
    )
    base = f"http://127.0.0.1:{port}"

    def scraping():
        if prom.poll() is not None:
            pytest.fail(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()}")
        try:
            return query(base, f'up{{job="{job["job_name"]}"}} == 1').get("data", {}).get("result")
        except urllib.error.URLError:
            return None  # not listening yet

    try:
        wait_for("Prometheus to scrape the proxy", scraping)
        yield {"proxy": proxy, "sim": sim, "prom": base, "config": config, "job": job["job_name"]}
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=15)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait()
        proxy.stop()
        sim.stop()


def headers(resp):
    return resp["ResponseMetadata"]["HTTPHeaders"]


def converse(client, model, text, max_tokens=60, temperature=0, **extra):
    inference = {"maxTokens": max_tokens}
    if temperature is not None:
        inference["temperature"] = temperature
    return client.converse(modelId=model, messages=user(text), inferenceConfig=inference, **extra)


def fault(sim, rule):
    status, _ = http_json("POST", f"{sim.url}/_sim/faults", rule)
    assert status == 201


def until_hit(call):
    """A repeated request is a hit once the first answer's store (off the
    response path) has landed; ask a few times rather than assume it has."""
    for _ in range(20):
        resp = call()
        if resp[1] == "hit":
            return resp
        time.sleep(0.05)
    pytest.fail("a repeated temperature-0 request never became a cache hit")


def together(clients, call):
    """Runs `call(client)` for every client at the same moment (the clients are
    built beforehand and the threads released together, so none starts late)."""
    gate = threading.Barrier(len(clients))

    def go(client):
        gate.wait()
        return call(client)

    with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
        return list(pool.map(go, clients))


def workload(env):
    """What users do, through boto3 and the OpenAI SDK; asserts what they would see."""
    proxy, sim, admin = env["proxy"], env["sim"], env["proxy"].urls["admin"]
    brt = bedrock_client(proxy.url)

    # Misses, then hits (whole answers and a replayed stream).
    first = converse(brt, "haiku", "What is a response cache?")
    assert headers(first)["x-cache"] == "miss"
    again, _ = until_hit(lambda: (r := converse(brt, "haiku", "What is a response cache?"), headers(r)["x-cache"]))
    assert again["output"] == first["output"]

    def stream():
        resp = brt.converse_stream(modelId="haiku", messages=user("Stream me a haiku"),
                                   inferenceConfig={"maxTokens": 60, "temperature": 0})
        events = [next(iter(e)) for e in resp["stream"]]
        assert events[0] == "messageStart" and events[-1] == "metadata"
        return resp, headers(resp)["x-cache"]

    stream()
    until_hit(stream)

    # The OpenAI SDK on the same route: a miss, a hit, a stream.
    oai = OpenAI(base_url=f"{proxy.url}/v1", api_key="unused", max_retries=0)
    chat = lambda: oai.chat.completions.with_raw_response.create(  # noqa: E731
        model="haiku", temperature=0, max_tokens=40, messages=[{"role": "user", "content": "Name a cache"}])
    assert chat().headers["x-cache"] == "miss"
    until_hit(lambda: (r := chat(), r.headers["x-cache"]))
    chunks = list(oai.chat.completions.create(model="haiku", max_tokens=30, stream=True,
                                              messages=[{"role": "user", "content": "Count to three"}]))
    assert any(choice.finish_reason for chunk in chunks for choice in chunk.choices)

    # Two identical requests at once cost one upstream call.
    fault(sim, {"model": "sonnet", "fault": "slow-first-byte", "ms": 3000, "times": 1})
    pair = together([bedrock_client(proxy.url) for _ in range(2)],
                    lambda client: converse(client, "sonnet", "Shared question"))
    assert pair[0]["output"] == pair[1]["output"]
    assert sorted(headers(r)["x-cache"] for r in pair) == ["hit", "miss"]

    # Throttled twice on the optimized tier: retried, then served by the standard fallback.
    fault(sim, {"model": "haiku", "latency": "optimized", "fault": "throttle", "times": 2})
    fell = converse(brt, "haiku", "Fall back, please", temperature=None)
    assert headers(fell)["x-proxy-attempts"] == "3" and headers(fell)["x-proxy-latency-tier"] == "standard"

    # The optimized tier stalls: a hedge on the standard target answers first.
    fault(sim, {"model": "haiku", "latency": "optimized", "fault": "slow-first-byte", "ms": 3000, "times": 1})
    hedged = converse(brt, "haiku", "Hedge me", temperature=None)
    assert headers(hedged)["x-proxy-latency-tier"] == "standard"

    # An upstream error on a route without fallback reaches the client as Bedrock's.
    fault(sim, {"model": "sonnet", "fault": "internal", "times": 1})
    with pytest.raises(ClientError) as failed:
        converse(brt, "sonnet", "Fail once", temperature=None)
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    assert failed.value.response["Error"]["Code"] == "InternalServerException"

    # Optimized asked where the catalog says it cannot work: standard sent.
    down = converse(brt, "sonnet", "Fast please", temperature=None, performanceConfig={"latency": "optimized"})
    assert headers(down)["x-proxy-latency-tier"] == "standard"

    # A long fixed system prompt: seen twice, marked; Bedrock writes, then reads it.
    system = [{"text": " ".join(f"Rule {n}: be brief, be kind, cite the manual." for n in range(400))}]
    usages = [converse(brt, "haiku", f"Turn {n}", temperature=None, system=system)["usage"] for n in range(3)]
    assert usages[1].get("cacheWriteInputTokens", 0) > 0, usages
    assert usages[2].get("cacheReadInputTokens", 0) > 0, usages

    # More distinct answers than cache.max_bytes holds: the oldest are evicted.
    for n in range(8):
        converse(brt, "sonnet", f"Distinct question {n}", max_tokens=200)

    # Shedding: three slow requests hold every slot; the others are refused at
    # once. Twice, with a scrape between, so the counter is seen to grow.
    def burst():
        fault(sim, {"model": "sonnet", "fault": "slow-first-byte", "ms": 3000, "times": 3})

        def one(client):
            try:
                converse(client, "sonnet", "Busy", temperature=None)
                return "ok"
            except ClientError as e:
                return e.response["Error"]["Code"]

        outcomes = together([bedrock_client(proxy.url) for _ in range(6)], one)
        assert "ServiceUnavailableException" in outcomes, outcomes
        http_json("DELETE", f"{sim.url}/_sim/faults")

    burst()
    wait_for("the shed counter in Prometheus", lambda: query(
        env["prom"], 'bedrock_proxy_rejected_total{reason="overloaded"}')["data"]["result"])
    burst()

    # A route limited to one request a minute: the second is refused, with the headers.
    converse(brt, "limited", "Once", temperature=None)
    with pytest.raises(ClientError) as limited:
        converse(brt, "limited", "Twice", temperature=None)
    assert limited.value.response["Error"]["Code"] == "ThrottlingException"
    assert limited.value.response["ResponseMetadata"]["HTTPHeaders"]["x-ratelimit-remaining-requests"] == "0"

    # Reloads: one applied, one refused (the running config stays), then the good file back.
    good = env["config"].read_text()
    assert http_json("POST", f"{admin}/admin/reload")[0] == 200
    env["config"].write_text(good + "\nnot_a_key = true\n")
    status, body = http_json("POST", f"{admin}/admin/reload")
    assert status == 400 and "not_a_key" in json.dumps(body)
    env["config"].write_text(good)
    assert http_json("POST", f"{admin}/admin/reload")[0] == 200
    assert converse(brt, "haiku", "Still serving?", temperature=None)["stopReason"]


def test_every_dashboard_query_and_alert_expression_against_a_real_prometheus(observed):
    base = observed["prom"]
    workload(observed)
    done = time.time()
    # Two scrapes after the last request, so every counter has its final value
    # and rates over the last minute see it.
    wait_for("two scrapes after the workload", lambda: float(
        query(base, f'timestamp(up{{job="{observed["job"]}"}})')["data"]["result"][0]["value"][1]) > done + 2.2)

    instance = urllib.parse.urlparse(observed["proxy"].urls["admin"]).netloc
    board = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v["definition"] for v in board["templating"]["list"] if v["type"] == "query"}
    # Grafana's label_values(metric{...}, label) is the label-values API with a match[].
    for name, definition in variables.items():
        metric, label = re.fullmatch(r"label_values\((.+), (\w+)\)", definition).groups()
        got = prom_get(base, f"/api/v1/label/{label}/values", **{"match[]": grafana(metric)})
        assert got["status"] == "success", (name, got)
        assert (instance in got["data"]) if name == "instance" else {"haiku", "sonnet"} <= set(got["data"]), got

    empty, broken = [], []
    for title, expr in dashboard_targets():
        for route in (".*", "(haiku|sonnet)"):
            got = query(base, grafana(expr, route=route, instance=instance))
            if got["status"] != "success":
                broken.append((title, expr, got.get("error")))
            elif route == ".*" and not got["data"]["result"]:
                empty.append((title, expr))
    assert not broken, f"dashboard queries Prometheus refused: {broken}"
    assert not empty, f"dashboard queries with no data after the workload: {empty}"

    rules = alert_rules()
    for rule in rules:
        got = query(base, rule["expr"])
        assert got["status"] == "success", (rule.get("alert") or rule.get("record"), got)

    # The rules loaded into Prometheus evaluate without errors...
    def evaluated():
        groups = prom_get(base, "/api/v1/rules")["data"]["groups"]
        loaded = [r for g in groups for r in g["rules"]]
        return loaded if all(r["health"] != "unknown" for r in loaded) else None

    loaded = wait_for("every rule to be evaluated", evaluated)
    assert len(loaded) == len(rules) + 1  # and objectives.yml's default
    assert all(r["health"] == "ok" and not r.get("lastError") for r in loaded), [
        (r["name"], r.get("lastError")) for r in loaded if r["health"] != "ok"]

    # ...and those this workload should trip see it: a refused reload, the Redis
    # tier down (its port is closed), load shed.
    exprs = {r["alert"]: r["expr"] for r in rules if "alert" in r}
    for name in ("BedrockProxyConfigReloadFailed", "BedrockProxyRedisTierDown", "BedrockProxyRedisTierErrors",
                 "BedrockProxyShedding"):
        # Polled: Redis connect errors come every few seconds, and a rate needs two of them.
        wait_for(f"{name}'s condition to hold", lambda: query(base, exprs[name])["data"]["result"])
    pending = wait_for("the reload alert to go pending", lambda: query(
        base, 'ALERTS{alertname="BedrockProxyConfigReloadFailed"}')["data"]["result"])
    assert pending[0]["metric"]["alertstate"] in ("pending", "firing")
    # What the alerts never see, they say nothing about: no breaker opened.
    assert not query(base, exprs["BedrockProxyBreakerOpen"])["data"]["result"]


# ---------------------------------------------------------------- Kubernetes


def kustomize(directory):
    if shutil.which("kustomize"):
        cmd = ["kustomize", "build", str(directory)]
    else:
        cmd = [need("kubectl"), "kustomize", str(directory)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def check_config(text, tmp_path, **env):
    path = tmp_path / "config.toml"
    path.write_text(text)
    out = subprocess.run([str(BIN_DIR / "bedrock-proxy"), "check-config", str(path)],
                         capture_output=True, text=True, env={**os.environ, **env})
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def by_kind(docs):
    kinds = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    return kinds


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", ["base", "overlays/single", "overlays/replicated"])
def test_kubernetes_manifests_render_and_validate(overlay, tmp_path):
    import kubernetes_validate
    from cloudcoil.models.prometheus_operator.v1 import PrometheusRule, ServiceMonitor

    docs = kustomize(DEPLOY / "k8s" / overlay)
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            model = {"ServiceMonitor": ServiceMonitor, "PrometheusRule": PrometheusRule}[doc["kind"]]
            # The CRD's model keeps only fields the CRD defines: a round trip that
            # loses nothing means no misspelt or unknown field.
            parsed = model.model_validate(doc).model_dump(by_alias=True, exclude_none=True, mode="json")
            assert parsed == doc, f"{doc['kind']} has fields its CRD does not define"
            continue
        # 1.30 is the oldest supported (preStop sleep); and the newest schemas known.
        for version in ("1.30.0", kubernetes_validate.latest_version()):
            kubernetes_validate.validate(doc, version, strict=True)

    kinds = by_kind(docs)
    (deployment,) = [d for d in kinds["Deployment"] if d["metadata"]["name"] == "bedrock-proxy"]
    pod = deployment["spec"]["template"]
    spec = pod["spec"]
    (proxy,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in proxy["ports"]}
    assert ports == {"http": 8080, "admin": 9090}
    assert proxy["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert proxy["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert proxy["resources"]["requests"] and proxy["resources"]["limits"]["memory"]
    assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] != 0
    assert proxy["securityContext"]["readOnlyRootFilesystem"]
    assert not proxy["securityContext"]["allowPrivilegeEscalation"]
    mounts = {m["name"]: m for m in proxy["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["tmp"]["name"]]
    # The config: a ConfigMap mounted as a directory (subPath mounts never see
    # updates), the file --config names is in it, and it validates.
    assert "subPath" not in mounts["config"]
    config_dir = pathlib.PurePosixPath(mounts["config"]["mountPath"])
    config_path = pathlib.PurePosixPath(proxy["args"][proxy["args"].index("--config") + 1])
    assert config_path.parent == config_dir
    (configmap,) = [c for c in kinds["ConfigMap"] if c["metadata"]["name"] == volumes["config"]["configMap"]["name"]]
    config_text = configmap["data"][config_path.name]
    check_config(config_text, tmp_path, PLATFORM_KEY_SHA256=FAKE_SHA256, ADMIN_TOKEN_SHA256=FAKE_SHA256)
    # Every ${VAR} the config reads comes from the Secret the pod loads.
    assert {"secretRef": {"name": "bedrock-proxy"}} in proxy["envFrom"]
    settings = "\n".join(line.split("#")[0] for line in config_text.splitlines())
    assert set(re.findall(r"\$\{(\w+)\}", settings)) == {"PLATFORM_KEY_SHA256", "ADMIN_TOKEN_SHA256"}
    # The admin port serves beyond the pod's loopback (probes, scrapes).
    assert re.search(r'(?m)^\[admin\]\s*(#.*\n|\n)*\s*listen = "0\.0\.0\.0:9090"', config_text)

    labels = pod["metadata"]["labels"]
    services = {s["metadata"]["name"]: s for s in kinds["Service"]}
    for name in ("bedrock-proxy", "bedrock-proxy-admin"):
        assert selects(services[name]["spec"]["selector"], labels), name
    (monitor,) = kinds["ServiceMonitor"]
    scraped = [s for s in services.values() if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
    assert [s["metadata"]["name"] for s in scraped] == ["bedrock-proxy-admin"]
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in scraped[0]["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    (pdb,) = kinds["PodDisruptionBudget"]
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    (rule,) = kinds["PrometheusRule"]
    assert {g["name"] for g in rule["spec"]["groups"]} >= {"bedrock-proxy", "bedrock-proxy-objectives"}

    if overlay == "overlays/single":
        assert deployment["spec"]["replicas"] == 1 and "HorizontalPodAutoscaler" not in kinds
    else:
        assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
        (hpa,) = kinds["HorizontalPodAutoscaler"]
        assert hpa["spec"]["scaleTargetRef"]["name"] == "bedrock-proxy"
    if overlay == "overlays/replicated":
        assert kinds["HorizontalPodAutoscaler"][0]["spec"]["minReplicas"] >= 2
        url = re.search(r'\[cache\.redis\]\s*url = "redis://([\w.-]+):(\d+)/\d+"', config_text)
        assert url, "the replicated config shares a Redis"
        redis = services[url.group(1)]
        assert int(url.group(2)) in {p["port"] for p in redis["spec"]["ports"]}
        (redis_deployment,) = [d for d in kinds["Deployment"] if selects(
            redis["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        assert not selects(redis["spec"]["selector"], labels), "the Redis Service must not select proxy pods"
        assert redis_deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
    if overlay != "base":
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"bedrock-proxy"}


def test_a_configmap_update_reaches_the_running_proxy(tmp_path, sim):
    """The kubelet updates a ConfigMap volume by writing a new timestamped
    directory and swapping the `..data` symlink; `config.toml` itself is a
    symlink through `..data` that never changes. This replays that swap on a
    running proxy and checks whether the file watch reloads the config."""
    volume = tmp_path / "config"
    volume.mkdir()

    def publish(text, stamp):
        data = volume / f"..{stamp}"
        data.mkdir()
        (data / "config.toml").write_text(text)
        tmp_link = volume / "..data_tmp"
        tmp_link.symlink_to(data.name)
        os.replace(tmp_link, volume / "..data")

    config = textwrap.dedent(f"""
        [server]
        listen = "127.0.0.1:0"
        auth = "none"
        [admin]
        listen = "127.0.0.1:0"
        [upstreams.sim]
        kind = "simulator"
        endpoint = "{sim.url}"
        [[routes]]
        name = "haiku"
        aliases = ["haiku"]
        models = ["{HAIKU}"]
        upstream = "sim"
    """)
    publish(config, "2025_01_01_00_00_00.000000001")
    (volume / "config.toml").symlink_to("..data/config.toml")
    proxy = Server([str(BIN_DIR / "bedrock-proxy"), "--config", str(volume / "config.toml")])
    try:
        admin = proxy.urls["admin"]
        before = http_json("GET", f"{admin}/admin/config")[1]["hash"]
        publish(config.replace('aliases = ["haiku"]', 'aliases = ["haiku", "fast"]'), "2025_01_01_00_01_00.000000001")
        changed = wait_for("the proxy to reload the swapped ConfigMap", lambda: (
            http_json("GET", f"{admin}/admin/config")[1]["hash"] != before))
        assert changed
    finally:
        proxy.stop()


# ---------------------------------------------------------------- compose


def compose():
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_file_parses_under_the_compose_spec():
    from compose_spec import PyCompose

    PyCompose.from_yaml((DEPLOY / "compose.yaml").read_text())
    # The parser is strict: a misspelt key is refused (so the check above means something).
    with pytest.raises(ValueError):
        PyCompose.from_yaml((DEPLOY / "compose.yaml").read_text().replace("read_only:", "readonly:"))


def test_compose_wires_proxy_prometheus_and_grafana_together(tmp_path):
    c = compose()
    services = c["services"]
    assert set(services) >= {"proxy", "redis", "prometheus", "grafana", "loadgen"}

    # Every bind mount's source exists; the build context has the Dockerfile.
    for name, svc in services.items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, volume)
    proxy = services["proxy"]
    assert (DEPLOY / proxy["build"]["context"] / proxy["build"]["dockerfile"]).is_file()

    def mounted(svc, target):
        """The host path a container path of `svc` comes from."""
        for volume in services[svc]["volumes"]:
            source, dest = volume.split(":")[:2]
            if target == dest or target.startswith(dest.rstrip("/") + "/"):
                return DEPLOY / source / pathlib.PurePosixPath(target).relative_to(dest)
        raise AssertionError(f"{target} is not mounted in {svc}")

    # The proxy's default config is mounted, validates, and its admin port
    # listens beyond the container's loopback (the command says so too).
    command = proxy["command"]
    default_config = re.fullmatch(r"\$\{BEDROCK_PROXY_CONFIG:-(.+)\}", command[command.index("--config") + 1]).group(1)
    demo = mounted("proxy", default_config)
    check_config(demo.read_text(), tmp_path)
    assert command[command.index("--admin-listen") + 1] == "0.0.0.0:9090"
    assert "REDIS_URL=redis://redis:6379/0" in proxy["environment"]

    # Prometheus: its config (the shipped one) scrapes the proxy's admin port by service name.
    prom_args = services["prometheus"]["command"]
    prom_config = mounted("prometheus", next(a for a in prom_args if a.startswith("--config.file=")).split("=", 1)[1])
    assert prom_config == DEPLOY / "prometheus" / "prometheus.yml"
    targets = yaml.safe_load(prom_config.read_text())["scrape_configs"][0]["static_configs"][0]["targets"]
    assert targets == ["proxy:9090"]
    for rule_file in yaml.safe_load(prom_config.read_text())["rule_files"]:
        assert (prom_config.parent / rule_file).is_file()

    # Grafana: the datasource points at the prometheus service with the uid the
    # dashboard defaults to; the dashboard provider's folder holds the dashboard.
    env = dict(e.split("=", 1) for e in services["grafana"]["environment"])
    (datasource,) = yaml.safe_load(mounted("grafana", "/etc/grafana/provisioning/datasources/prometheus.yaml")
                                   .read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090" and datasource["type"] == "prometheus"
    (provider,) = yaml.safe_load(mounted("grafana", "/etc/grafana/provisioning/dashboards/bedrock-proxy.yaml")
                                 .read_text())["providers"]
    dashboards = mounted("grafana", provider["options"]["path"])
    assert dashboards == DASHBOARD.parent
    assert mounted("grafana", env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]) == DASHBOARD

    # The demo credentials the README gives are the ones the demo config accepts.
    text = demo.read_text()
    assert hashlib.sha256(b"demo").hexdigest() in text
    loadgen = dict(e.split("=", 1) for e in services["loadgen"]["environment"])
    assert hashlib.sha256(loadgen["ADMIN_TOKEN"].encode()).hexdigest() in text
    assert services["loadgen"]["profiles"] == ["demo"]


def test_the_compose_demo_config_and_load_generator_work_with_the_real_proxy(tmp_path):
    """The load generator (POSIX sh + curl) against the proxy running the compose
    demo config, with a real Redis as its shared tier."""
    need("curl")
    redis_port = free_port()
    redis = subprocess.Popen([need("redis-server"), "--port", str(redis_port), "--bind", "127.0.0.1",
                              "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    proxy = Server([str(BIN_DIR / "bedrock-proxy"), "--config", str(DEPLOY / "compose" / "proxy" / "demo.toml"),
                    "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
                   env={"REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"})
    try:
        out = subprocess.run(
            ["sh", str(DEPLOY / "compose" / "loadgen.sh")], capture_output=True, text=True, timeout=120,
            env={**os.environ, "PROXY_URL": proxy.url, "ADMIN_URL": proxy.urls["admin"],
                 "LOADGEN_ITERATIONS": "8", "LOADGEN_PAUSE": "0"})
        lines = [line.split() for line in out.stdout.splitlines() if re.match(r"\d+ ", line)]
        assert len(lines) == 8, out.stdout + out.stderr
        assert all(status == "200" for _, _, _, status in lines), lines
        assert {op for _, _, op, _ in lines} == {"converse", "converse-stream", "chat-completions", "prompt-cache"}
        metrics = urllib.request.urlopen(f"{proxy.urls['admin']}/metrics", timeout=10).read().decode()
        routes = set(re.findall(r'bedrock_proxy_requests_total\{route="([^"]+)"', metrics))
        assert routes == {"haiku", "sonnet", "llama-70b", "nova-pro"}
        assert "bedrock_proxy_cache_redis_errors_total" not in metrics, "the shared tier should be up"
    finally:
        proxy.stop()
        redis.terminate()
        redis.wait(timeout=15)
