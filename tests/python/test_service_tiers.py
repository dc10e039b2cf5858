"""Service tiers and prompt routers through the demo proxy with boto3: the
`background` route asks for flex and falls back to default when flex is
throttled, the `router` route is AWS's default Anthropic prompt router, and one
call is marked flex with the `x-proxy-service-tier` request header.
"""
import re
import urllib.request

import pytest

from conftest import BIN_DIR, Server, bedrock_client, http_json, user


@pytest.fixture(scope="module")
def demo():
    server = Server([str(BIN_DIR / "bedrock-proxy"), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
    yield server
    server.stop()


def metric(demo, name, **labels):
    """The value of the metric line with all of `labels`, or 0."""
    text = urllib.request.urlopen(f"{demo.urls['admin']}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        m = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return 0.0


def headers(resp):
    return resp["ResponseMetadata"]["HTTPHeaders"]


def test_flex_throttled_is_served_by_default_and_the_header_and_metric_say_so(demo):
    admin = demo.urls["admin"]
    brt = bedrock_client(demo.urls["bedrock-proxy"])
    before = metric(demo, "bedrock_proxy_service_tier_served_total", route="background", served="default",
                    requested="flex")
    assert http_json("POST", f"{admin}/_sim/faults",
                     {"service_tier": "flex", "fault": "throttle", "times": 1})[0] == 201
    try:
        resp = brt.converse(modelId="background", messages=user("Tidy last night's logs"),
                            inferenceConfig={"maxTokens": 20})
    finally:
        http_json("DELETE", f"{admin}/_sim/faults")
    assert resp["serviceTier"] == {"type": "default"}
    assert headers(resp)["x-proxy-service-tier"] == "default"
    assert headers(resp)["x-proxy-attempts"] == "2"
    assert metric(demo, "bedrock_proxy_service_tier_served_total", route="background", served="default",
                  requested="flex") == before + 1

    calm = brt.converse(modelId="background", messages=user("Tidy tonight's logs"), inferenceConfig={"maxTokens": 20})
    assert calm["serviceTier"] == {"type": "flex"}
    assert headers(calm)["x-proxy-service-tier"] == "flex"
    assert metric(demo, "bedrock_proxy_service_tier_served_total", route="background", served="flex",
                  requested="flex") >= 1


def test_the_prompt_routers_choice_is_in_the_header(demo):
    brt = bedrock_client(demo.urls["bedrock-proxy"])
    resp = brt.converse(modelId="router", messages=user("What is the capital of France?"),
                        inferenceConfig={"maxTokens": 20})
    invoked = resp["trace"]["promptRouter"]["invokedModelId"]
    assert invoked.endswith("/us.anthropic.claude-3-haiku-20240307-v1:0"), invoked
    assert headers(resp)["x-proxy-invoked-model"] == invoked
    assert metric(demo, "bedrock_proxy_prompt_router_invoked_total", route="router",
                  model="anthropic.claude-3-haiku-20240307-v1:0") >= 1

    hard = ("Explain step by step why this design is a trade-off, then compare it with two "
            "alternatives and analyze the architecture: " + "the cache sits between the app and the model. " * 5)
    deep = brt.converse(modelId="router", messages=user(hard), inferenceConfig={"maxTokens": 20})
    chosen = deep["trace"]["promptRouter"]["invokedModelId"]
    assert chosen.endswith("/us.anthropic.claude-3-5-sonnet-20240620-v1:0"), chosen
    assert headers(deep)["x-proxy-invoked-model"] == chosen


def test_the_request_header_marks_one_call_flex(demo):
    brt = bedrock_client(demo.urls["bedrock-proxy"])

    def mark(request, **_):
        request.headers["x-proxy-service-tier"] = "flex"

    brt.meta.events.register("before-sign.bedrock-runtime.Converse", mark)
    resp = brt.converse(modelId="nova-pro", messages=user("Background: file the receipts"),
                        inferenceConfig={"maxTokens": 20})
    assert resp["serviceTier"] == {"type": "flex"}
    assert headers(resp)["x-proxy-service-tier"] == "flex"

    plain = bedrock_client(demo.urls["bedrock-proxy"]).converse(
        modelId="nova-pro", messages=user("Interactive: answer now"), inferenceConfig={"maxTokens": 20})
    assert "serviceTier" not in plain, "a call nobody marked goes as sent"
    assert headers(plain)["x-proxy-service-tier"] == "default"
