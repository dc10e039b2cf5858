"""The two promises of issue 17, as a user checks them: a boto3 app written for
Bedrock runs unchanged with `config/china.toml` (a region without Bedrock: a
regional OpenAI-compatible service, then a SageMaker endpoint), here pointed at
bedrock-sim's faces standing in for both; and demo mode falls back from a
throttled Bedrock to a self-hosted model."""
import hashlib
import subprocess

import anthropic
import openai
import pytest

from conftest import BIN_DIR, ROOT, Server, bedrock_client, http_json, user

# bedrock-sim standing in for DashScope (its OpenAI face, serving `qwen-plus`
# behind an API key) and for a SageMaker endpoint of that name.
SIM_CONFIG = """
[openai]
api_key = "sk-dashscope-test"

[[self_hosted]]
id = "qwen-plus"
context_tokens = 131072
speed = { ttft_ms = 200, prefill_us_per_token = 50, tokens_per_s = 60 }

[[sagemaker.endpoints]]
name = "qwen2-5-72b-instruct"
model = "qwen-plus"
"""

APP_KEY = "bpk_china_app_key"
ACCESS_KEY, SECRET = "BPXKCHINAAPP0000001", "china-app-secret"


@pytest.fixture(scope="module")
def china(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("china")
    sim_config = tmp / "sim.toml"
    sim_config.write_text(SIM_CONFIG)
    sim = Server([str(BIN_DIR / "bedrock-sim"), "--listen", "127.0.0.1:0", "--time-scale", "0",
                  "--config", str(sim_config), "--region", "cn-northwest-1"])
    env = {
        "DASHSCOPE_API_KEY": "sk-dashscope-test",
        "APP_KEY_SHA256": hashlib.sha256(APP_KEY.encode()).hexdigest(),
        "APP_SECRET_ACCESS_KEY": SECRET,
        "CHINA_OPENAI_BASE_URL": f"{sim.url}/v1",
        "CHINA_SAGEMAKER_ENDPOINT": sim.url,
        # The proxy's own AWS credentials, which SageMaker requests are signed with.
        "AWS_ACCESS_KEY_ID": "AKIDPROXYCHINA",
        "AWS_SECRET_ACCESS_KEY": "proxy-china-secret",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    config = ROOT / "config" / "china.toml"
    check = subprocess.run([str(BIN_DIR / "bedrock-proxy"), "check-config", str(config)],
                           env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert ": OK: " in check.stdout and "note:" not in check.stdout, check.stdout
    proxy = Server([str(BIN_DIR / "bedrock-proxy"), "--config", str(config),
                    "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"], env=env)
    yield proxy, sim
    proxy.stop()
    sim.stop()


def test_an_unchanged_boto3_converse_app_runs_on_the_china_config(china):
    proxy, sim = china
    # The app as written for Bedrock: its own model id, SigV4 with its key pair.
    brt = bedrock_client(proxy.urls["bedrock-proxy"], region_name="cn-northwest-1",
                         aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET)
    model = "anthropic.claude-3-5-haiku-20241022-v1:0"
    resp = brt.converse(modelId=model, system=[{"text": "Answer briefly."}],
                        messages=user("What is the capital of France?"),
                        inferenceConfig={"maxTokens": 50, "temperature": 0})
    assert resp["output"]["message"]["content"][0]["text"]
    assert resp["stopReason"] in ("end_turn", "max_tokens") and resp["usage"]["outputTokens"] > 0
    h = resp["ResponseMetadata"]["HTTPHeaders"]
    assert (h["x-proxy-route"], h["x-proxy-upstream"], h["x-proxy-served-model"]) == ("chat", "dashscope", "qwen-plus")
    last = http_json("GET", f"{sim.url}/_sim/requests?limit=1")[1]["requests"][-1]
    assert (last["face"], last["model_id"]) == ("openai", "qwen-plus")

    text = ""
    for event in brt.converse_stream(modelId=model, messages=user("Count to three."),
                                     inferenceConfig={"maxTokens": 40})["stream"]:
        text += event.get("contentBlockDelta", {}).get("delta", {}).get("text", "")
    assert text

    # The regional service throttles: the SageMaker endpoint answers, the app notices nothing.
    assert http_json("POST", f"{sim.url}/_sim/faults", {"face": "openai", "fault": "throttle", "times": 100})[0] == 201
    try:
        resp = brt.converse(modelId=model, messages=user("Still there?"), inferenceConfig={"maxTokens": 30})
        h = resp["ResponseMetadata"]["HTTPHeaders"]
        assert (h["x-proxy-upstream"], h["x-proxy-served-model"]) == ("sagemaker", "qwen2-5-72b-instruct")
        assert h["x-proxy-attempts"] == "3", "two tries on the primary (retries = 1), then the fallback"
        assert resp["output"]["message"]["content"][0]["text"]
        last = http_json("GET", f"{sim.url}/_sim/requests?limit=1")[1]["requests"][-1]
        assert (last["face"], last["model_id"]) == ("sagemaker", "qwen2-5-72b-instruct")
    finally:
        http_json("DELETE", f"{sim.url}/_sim/faults")


def test_openai_and_anthropic_clients_on_the_china_config(china):
    proxy, _ = china
    url = proxy.urls["bedrock-proxy"]
    oai = openai.OpenAI(base_url=url + "/v1", api_key=APP_KEY, max_retries=0)
    r = oai.chat.completions.create(model="qwen", messages=[{"role": "user", "content": "Hi"}], max_tokens=30)
    assert r.choices[0].message.content
    claude = anthropic.Anthropic(base_url=url, api_key=APP_KEY, max_retries=0)
    m = claude.messages.create(model="claude-3-5-haiku-latest", max_tokens=30,
                               messages=[{"role": "user", "content": "Hi"}])
    assert m.content[0].text and m.usage.output_tokens > 0
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="qwen", messages=[{"role": "user", "content": "Hi"}])


def test_demo_mode_falls_back_from_a_throttled_bedrock_to_a_self_hosted_model():
    demo = Server([str(BIN_DIR / "bedrock-proxy"), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
    try:
        admin = demo.urls["admin"]
        brt = bedrock_client(demo.urls["bedrock-proxy"])
        assert http_json("POST", f"{admin}/_sim/faults",
                         {"model": "haiku", "fault": "throttle", "times": 1000})[0] == 201
        resp = brt.converse(modelId="haiku", messages=user("Hello"), inferenceConfig={"maxTokens": 20})
        h = resp["ResponseMetadata"]["HTTPHeaders"]
        assert (h["x-proxy-upstream"], h["x-proxy-served-model"]) == (
            "selfhosted", "meta-llama/Llama-3.1-8B-Instruct")
        assert resp["output"]["message"]["content"][0]["text"]
        assert http_json("DELETE", f"{admin}/_sim/faults")[0] in (200, 204)
        resp = brt.converse(modelId="haiku", messages=user("Hello"), inferenceConfig={"maxTokens": 20})
        h = resp["ResponseMetadata"]["HTTPHeaders"]
        assert (h["x-proxy-upstream"], h["x-proxy-served-model"]) == (
            "sim", "us.anthropic.claude-3-5-haiku-20241022-v1:0")
    finally:
        demo.stop()
