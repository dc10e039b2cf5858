"""`POST /v1/embeddings` through bedrock-proxy in demo mode, driven by the openai
SDK as a retrieval app drives it (issue 15): one string, a batch in order,
`dimensions`, base64 vectors, usage, the response cache, similarity that means
something, errors with `param`; and boto3's InvokeModel on the same Titan model."""
import base64
import json
import math
import struct

import openai
import pytest

from conftest import BIN_DIR, Server, bedrock_client

# The demo's embeddings route (config/demo.toml): Amazon Titan Text Embeddings v2.
TITAN = "titan-embed-v2"
TITAN_ID = "amazon.titan-embed-text-v2:0"


@pytest.fixture(scope="module")
def demo():
    server = Server([str(BIN_DIR / "bedrock-proxy"), "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
    yield server
    server.stop()


@pytest.fixture
def oai(demo):
    return openai.OpenAI(base_url=demo.urls["bedrock-proxy"] + "/v1", api_key="demo", max_retries=0)


def cosine(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_one_string_is_a_normalized_vector_of_the_default_size(oai):
    r = oai.embeddings.create(model=TITAN, input="How do I bake sourdough bread?")
    assert r.object == "list" and r.model == TITAN
    assert len(r.data) == 1 and r.data[0].index == 0 and r.data[0].object == "embedding"
    vector = r.data[0].embedding
    assert len(vector) == 1024
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-3)
    assert r.usage.prompt_tokens > 0 and r.usage.total_tokens == r.usage.prompt_tokens


def test_a_batch_keeps_its_order_and_sums_usage(oai):
    texts = ["the cat sat on the mat", "stock markets closed higher", "a cat on a mat"]
    batch = oai.embeddings.create(model=TITAN, input=texts, dimensions=256)
    assert [d.index for d in batch.data] == [0, 1, 2]
    singles = [oai.embeddings.create(model=TITAN, input=t, dimensions=256) for t in texts]
    for got, single in zip(batch.data, singles):
        assert len(got.embedding) == 256
        assert got.embedding == single.data[0].embedding
    assert batch.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)


def test_base64_decodes_to_the_float_vector(oai):
    text = "vectors as base64 little-endian float32"
    # Asked for explicitly, base64 comes back as the string (the SDK decodes only
    # the base64 it chose itself when the caller named no format).
    encoded = oai.embeddings.create(model=TITAN, input=text, dimensions=512,
                                    encoding_format="base64").data[0].embedding
    assert isinstance(encoded, str)
    raw = base64.b64decode(encoded)
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    floats = oai.embeddings.create(model=TITAN, input=text, dimensions=512,
                                   encoding_format="float").data[0].embedding
    assert len(decoded) == len(floats) == 512
    assert all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) for a, b in zip(decoded, floats))


def test_a_repeated_call_is_a_cache_hit(oai):
    text = "a sentence embedded twice is answered from the cache"
    first = oai.embeddings.with_raw_response.create(model=TITAN, input=text)
    second = oai.embeddings.with_raw_response.create(model=TITAN, input=text)
    assert first.headers["x-cache"] == "miss"
    assert second.headers["x-cache"] == "hit"
    assert first.parse().data[0].embedding == second.parse().data[0].embedding


def test_a_paraphrase_sharing_words_scores_above_an_unrelated_sentence(oai):
    query, paraphrase, unrelated = [d.embedding for d in oai.embeddings.create(model=TITAN, input=[
        "How do I bake sourdough bread at home?",
        "Baking sourdough bread at home: how to do it",
        "The stock market closed higher on Friday.",
    ]).data]
    assert cosine(query, paraphrase) > cosine(query, unrelated) + 0.1


def test_bad_requests_name_the_field(oai):
    with pytest.raises(openai.BadRequestError) as e:
        oai.embeddings.create(model=TITAN, input="x", dimensions=300)
    assert e.value.body["param"] == "dimensions" and "256, 512, 1024" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        oai.embeddings.create(model=TITAN, input=[[1, 2, 3]])
    assert e.value.body["param"] == "input"
    with pytest.raises(openai.BadRequestError) as e:
        oai.embeddings.create(model="haiku", input="a chat model has no embeddings")
    assert e.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError) as e:
        oai.embeddings.create(model="text-embedding-3-small", input="x")
    assert e.value.body["code"] == "model_not_found"


def test_the_models_list_has_the_embedding_route(oai):
    assert TITAN in [m.id for m in oai.models.list()]


def test_boto3_invoke_model_on_titan_through_the_proxy(demo):
    client = bedrock_client(demo.urls["bedrock-proxy"], aws_access_key_id="demo", aws_secret_access_key="demo")
    r = client.invoke_model(modelId=TITAN_ID, contentType="application/json", accept="application/json",
                            body=json.dumps({"inputText": "hello embeddings", "dimensions": 256}))
    body = json.loads(r["body"].read())
    assert len(body["embedding"]) == 256 and body["inputTextTokenCount"] > 0
